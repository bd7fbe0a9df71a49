"""The wire records of Cluster Mesh: typed, immutable mirrors of the Go structs Cilium stores in etcd.

Each record is a frozen msgspec Struct whose fields carry Cilium's JSON names, in Cilium's field order, with
Go's zero values as defaults (reference §2). The shapes follow Go's encodings so that a record round-trips
byte for byte: a nil slice or map is None (JSON `null`) and differs from an empty one; a nil net.IP is `""`;
a net.IPMask is bytes (base64 on the wire); a pointer field is `X | None`. IPs stay strings (their wire form).

This module has no I/O and builds no keys. clustermesh.codec turns records into bytes and back (including
Go's `omitempty` rules, which are an encoding concern) and validates what peers send; clustermesh.keys names
the keys records are stored under.

Records are values: never mutate one, including its dict fields (build a new one with
msgspec.structs.replace). That is also what makes `gc=False` safe: a record holds only strings, numbers,
bytes, tuples and dicts of other records, so unless mutated it cannot close a reference cycle, and the agent,
which holds hundreds of thousands of them, saves the GC header and the collector's traversal of each.
"""

# STABLE WIRE FORMAT: field names (the `name=` of each field) and field order are Cilium's JSON.

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, NamedTuple

import msgspec
from msgspec import field

from clustermesh.identity import ClusterIDMode

Uint8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
Uint16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
Uint32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF_FFFF)]
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]

POLICY_LABEL_CLUSTER = "io.cilium.k8s.policy.cluster"
"""The label every pod identity carries, naming the cluster that allocated it."""


# ----------------------------------------------------------------------------------------------------
# Nodes: `node.Node` has no JSON tags, so the Go field names are the wire names (reference §2.4).


class CIDR(msgspec.Struct, frozen=True, gc=False):
    """A Go `net.IPNet` (Cilium's `cidr.CIDR`): network address and mask bytes."""

    ip: str = field(default="", name="IP")
    mask: bytes | None = field(default=None, name="Mask")

    @classmethod
    def parse(cls, text: str) -> CIDR:
        """The CIDR of `a.b.c.d/n` or `x::/n`, host bits cleared (Go's ParseCIDR); ValueError if invalid."""
        network = ipaddress.ip_network(text, strict=False)
        return cls(ip=str(network.network_address), mask=network.netmask.packed)

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The network this CIDR denotes; ValueError unless IP and mask are valid and of the same family."""
        address = ipaddress.ip_address(self.ip)
        mask = self.mask or b""
        if len(mask) != address.max_prefixlen // 8:
            raise ValueError(f"a mask of {len(mask)} bytes does not fit IP {self.ip}")
        network = ipaddress.ip_network((address, _prefix_length(mask)), strict=False)
        if network.netmask.packed != mask:
            raise ValueError(f"mask {mask.hex()} is not contiguous")
        return network


class NodeAddress(msgspec.Struct, frozen=True, gc=False):
    """One address of a node; Type is InternalIP, ExternalIP or CiliumInternalIP."""

    type: str = field(default="", name="Type")
    ip: str = field(default="", name="IP")


class Node(msgspec.Struct, frozen=True, gc=False):
    """A node of a cluster (`cilium/state/nodes/v1/<cluster>/<name>`)."""

    name: str = field(default="", name="Name")
    cluster: str = field(default="", name="Cluster")
    ip_addresses: tuple[NodeAddress, ...] | None = field(default=None, name="IPAddresses")
    ipv4_alloc_cidr: CIDR | None = field(default=None, name="IPv4AllocCIDR")
    ipv4_secondary_alloc_cidrs: tuple[CIDR, ...] | None = field(default=None, name="IPv4SecondaryAllocCIDRs")
    ipv6_alloc_cidr: CIDR | None = field(default=None, name="IPv6AllocCIDR")
    ipv6_secondary_alloc_cidrs: tuple[CIDR, ...] | None = field(default=None, name="IPv6SecondaryAllocCIDRs")
    ipv4_health_ip: str = field(default="", name="IPv4HealthIP")
    ipv6_health_ip: str = field(default="", name="IPv6HealthIP")
    ipv4_ingress_ip: str = field(default="", name="IPv4IngressIP")
    ipv6_ingress_ip: str = field(default="", name="IPv6IngressIP")
    cluster_id: Uint32 = field(default=0, name="ClusterID")
    source: str = field(default="", name="Source")
    encryption_key: Uint8 = field(default=0, name="EncryptionKey")
    labels: dict[str, str] | None = field(default=None, name="Labels")
    annotations: dict[str, str] | None = field(default=None, name="Annotations")
    wireguard_pub_key: str = field(default="", name="WireguardPubKey")
    boot_id: str = field(default="", name="BootID")


# ----------------------------------------------------------------------------------------------------
# Global services: lower-camel JSON tags, except L4Addr which has none (reference §2.7).


class L4Addr(msgspec.Struct, frozen=True, gc=False):
    """A port and its protocol (TCP, UDP, SCTP)."""

    protocol: str = field(default="", name="Protocol")
    port: Uint16 = field(default=0, name="Port")


PortConfiguration = dict[str, L4Addr]
"""Ports of one frontend or backend, keyed by port name."""


class ForZone(msgspec.Struct, frozen=True, gc=False):
    """A zone a backend should serve (topology-aware routing)."""

    name: str = ""


class BackendZone(msgspec.Struct, frozen=True, gc=False):
    """The zone of a backend and the zones it should serve."""

    zone: str = ""
    for_zones: tuple[ForZone, ...] | None = field(default=None, name="forZones")


class ClusterService(msgspec.Struct, frozen=True, gc=False):
    """A global service of a cluster (`cilium/state/services/v1/<cluster>/<namespace>/<name>`).

    Frontends and backends are keyed by IP. `hostnames` and `zones` are keyed by backend IP and are left out
    of the encoding when empty.
    """

    cluster: str = ""
    namespace: str = ""
    name: str = ""
    frontends: dict[str, PortConfiguration] | None = None
    backends: dict[str, PortConfiguration] | None = None
    hostnames: dict[str, str] | None = None
    zones: dict[str, BackendZone] | None = None
    labels: dict[str, str] | None = None
    selector: dict[str, str] | None = None
    include_external: bool = field(default=False, name="includeExternal")
    shared: bool = False
    cluster_id: Uint32 = field(default=0, name="clusterID")


# ----------------------------------------------------------------------------------------------------
# MCS-API service exports (reference §2.8).


class ServicePort(msgspec.Struct, frozen=True, gc=False):
    """A port of an exported service; name, protocol and app protocol are left out when unset."""

    name: str = ""
    protocol: str = ""
    app_protocol: str | None = field(default=None, name="appProtocol")
    port: Int32 = 0


class ClientIPConfig(msgspec.Struct, frozen=True, gc=False):
    """ClientIP session affinity settings."""

    timeout_seconds: Int32 | None = field(default=None, name="timeoutSeconds")


class SessionAffinityConfig(msgspec.Struct, frozen=True, gc=False):
    """Session affinity settings of an exported service."""

    client_ip: ClientIPConfig | None = field(default=None, name="clientIP")


class ServiceExport(msgspec.Struct, frozen=True, gc=False):
    """An MCS-API service export (`cilium/state/serviceexports/v1/<cluster>/<namespace>/<name>`).

    `export_creation_timestamp` is the RFC 3339 string Kubernetes wrote (None when unset). The fields from
    `ip_families` on exist only in the newest Cilium and are left out of the encoding when unset.
    """

    cluster: str = ""
    name: str = ""
    namespace: str = ""
    annotations: dict[str, str] | None = None
    labels: dict[str, str] | None = None
    export_creation_timestamp: str | None = field(default=None, name="exportCreationTimestamp")
    ports: tuple[ServicePort, ...] | None = None
    type: str = ""
    session_affinity: str = field(default="", name="sessionAffinity")
    session_affinity_config: SessionAffinityConfig | None = field(default=None, name="sessionAffinityConfig")
    ip_families: tuple[str, ...] | None = field(default=None, name="ipFamilies")
    internal_traffic_policy: str | None = field(default=None, name="internalTrafficPolicy")
    traffic_distribution: str | None = field(default=None, name="trafficDistribution")


# ----------------------------------------------------------------------------------------------------
# IPCache entries (reference §2.6).


class NamedPort(msgspec.Struct, frozen=True, gc=False):
    """A named container port of an endpoint."""

    name: str = field(default="", name="Name")
    port: Uint16 = field(default=0, name="Port")
    protocol: str = field(default="", name="Protocol")


class IPIdentityPair(msgspec.Struct, frozen=True, gc=False):
    """The security identity of one IP (`cilium/state/ip/v1/default/<ip>`).

    `mask` is set only for CIDR entries, which are keyed `ip/prefixlen`. The Kubernetes fields and the named
    ports are left out of the encoding when empty.
    """

    ip: str = field(default="", name="IP")
    mask: bytes | None = field(default=None, name="Mask")
    host_ip: str = field(default="", name="HostIP")
    id: Uint32 = field(default=0, name="ID")
    key: Uint8 = field(default=0, name="Key")
    metadata: str = field(default="", name="Metadata")
    k8s_namespace: str = field(default="", name="K8sNamespace")
    k8s_pod_name: str = field(default="", name="K8sPodName")
    k8s_pod_uid: str = field(default="", name="K8sPodUID")
    k8s_service_account: str = field(default="", name="K8sServiceAccount")
    named_ports: tuple[NamedPort, ...] | None = field(default=None, name="NamedPorts")

    @property
    def prefix_string(self) -> str:
        """The name of this entry's key: the IP, or `ip/prefixlen` when a mask is set (Go's PrefixString)."""
        if self.mask is None:
            return self.ip
        return f"{self.ip}/{_prefix_length(self.mask)}"


# ----------------------------------------------------------------------------------------------------
# Identities: the value of `cilium/state/identities/v1/id/<n>` is a label string, not JSON (reference §2.5).


class Label(NamedTuple):
    """One security label: `source:key=value`."""

    source: str
    key: str
    value: str


class Identity(msgspec.Struct, frozen=True, gc=False):
    """A security identity: its number and its sorted label string (`k8s:a=b;k8s:c=d;`)."""

    id: Uint32 = 0
    labels: str = ""

    @classmethod
    def from_labels(cls, numeric_id: int, labels: Mapping[str, str], *, source: str = "k8s") -> Identity:
        """The identity numeric_id with these labels, formatted as format_labels does."""
        return cls(id=numeric_id, labels=format_labels(labels, source=source))

    def label_map(self) -> dict[str, str]:
        """The labels keyed `source:key`; ValueError if the label string is malformed."""
        return {f"{label.source}:{label.key}": label.value for label in parse_labels(self.labels)}


def format_labels(labels: Mapping[str, str], *, source: str = "k8s") -> str:
    """Cilium's label string: `source:key=value;` per label, sorted by key (Go's Labels.SortedList).

    A key may name its own source (`k8s:app`, as CiliumIdentity security labels do); bare keys get `source`.
    ValueError for labels that could not be parsed back (empty key, `;` anywhere, `=` in a key, two labels
    with the same key).
    """
    by_key: dict[str, Label] = {}
    for qualified, value in labels.items():
        label_source, sep, key = qualified.partition(":")
        if not sep:
            label_source, key = source, qualified
        label = Label(label_source, key, value)
        _check_label(label)
        if key in by_key:
            raise ValueError(f"labels {qualified!r} and {by_key[key].source}:{key} have the same key")
        by_key[key] = label
    return "".join(f"{by_key[key].source}:{key}={by_key[key].value};" for key in sorted(by_key))


def parse_labels(text: str) -> tuple[Label, ...]:
    """The labels of a label string, in order; ValueError naming the problem if it is malformed.

    Well-formed means: at least one label, every label `source:key=value` terminated by `;`, source and key
    non-empty, no key twice.
    """
    if not text:
        raise ValueError("empty label string")
    if not text.endswith(";"):
        raise ValueError("label string must end with ';'")
    labels = []
    seen: set[str] = set()
    for item in text[:-1].split(";"):
        label_source, colon, rest = item.partition(":")
        key, equals, value = rest.partition("=")
        if not colon or not equals or not label_source or "=" in label_source or not key:
            raise ValueError(f"label {item[:64]!r} is not of the form source:key=value")
        if key in seen:
            raise ValueError(f"label key {key[:64]!r} appears twice")
        seen.add(key)
        labels.append(Label(label_source, key, value))
    return tuple(labels)


def _check_label(label: Label) -> None:
    if not label.source or ":" in label.source or "=" in label.source:
        raise ValueError(f"invalid label source {label.source!r}")
    if not label.key or "=" in label.key:
        raise ValueError(f"invalid label key {label.key!r}")
    if ";" in label.source or ";" in label.key or ";" in label.value:
        raise ValueError(f"label {label.source}:{label.key} contains ';'")


# ----------------------------------------------------------------------------------------------------
# Cluster configuration (reference §2.1).


class Capabilities(msgspec.Struct, frozen=True, gc=False):
    """What a cluster's exporter does; `service_exports_enabled` None: it predates MCS-API support."""

    synced_canaries: bool = field(default=False, name="syncedCanaries")
    cached: bool = False
    max_connected_clusters: Uint32 = field(default=0, name="maxConnectedClusters")
    service_exports_enabled: bool | None = field(default=None, name="serviceExportsEnabled")


class ClusterConfig(msgspec.Struct, frozen=True, gc=False):
    """A cluster's ID and capabilities (`cilium/cluster-config/<cluster>`)."""

    id: Uint32 = 0
    capabilities: Capabilities = field(default_factory=Capabilities)

    @property
    def max_clusters(self) -> int:
        """The cluster's max-connected-clusters; 255 when it does not say (it predates extended mode)."""
        return self.capabilities.max_connected_clusters or int(ClusterIDMode.DEFAULT)


Record = Node | ClusterService | ServiceExport | IPIdentityPair | Identity | ClusterConfig
"""Every record stored under its own key."""


def _prefix_length(mask: bytes) -> int:
    """Leading one bits of a mask; 0 for a non-contiguous mask, as Go's IPMask.Size reports it."""
    bits = len(mask) * 8
    value = int.from_bytes(mask, "big")
    ones = bits - (~value & ((1 << bits) - 1)).bit_length()
    return ones if value == ((1 << ones) - 1) << (bits - ones) else 0
