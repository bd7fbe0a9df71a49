"""Cilium's etcd values, byte for byte: the only module that turns records into values and back.

Encoding reproduces Go's `encoding/json.Marshal` of Cilium's structs: compact separators, struct fields in
declaration order, map keys sorted, `omitempty` members left out when empty, and Go's escaping of `<`, `>`,
`&`, U+2028 and U+2029 (as `\\u003c` etc.). Identity values are label strings and canary and heartbeat values
are RFC 3339 timestamps, not JSON.

Decoding reads what any Cilium version writes: unknown members are ignored, missing ones take Go's zero values
(older nodes without `Annotations`/`BootID`, older ipcache entries with `"Mask": null`). Each decoder then
validates the record against what the reader knows about the source cluster (reference §2.4-§2.7, §5.5): the
names inside match the key, the cluster name and ID match the peer's, IPs parse (no IPv6 zone), identities
fall in the peer's range. Every failure, whatever its cause, raises DecodeError(key, reason): callers skip
the record and log the reason; nothing else escapes.

Decoders take the full etcd key. Records are strings in their wire form, so decoding costs one msgspec pass
into typed structs plus the checks; the decoders are module-level and reused.

Reading under a watch prefix: a reader that lists and watches `keys.watch_prefix(kind, cluster, ...)` may pass
the rest of each key as `name=` (a node name, `namespace/name`, an IP). The prefix already says whose record
of which kind the key holds, so the key is not parsed again (a third of an ipcache entry's decode); the name
is still checked against the record, and any record the fast path cannot accept takes the full path, so the
outcome and the reason are the same either way.

Deliberate differences from Go's decoder, all stricter: invalid UTF-8 and unpaired UTF-16 surrogate escapes
are rejected (Go substitutes U+FFFD), member names match case-sensitively (Go also accepts other casings),
and JSON `null` is not accepted where a record or a port is expected.
"""

# STABLE WIRE FORMAT: the encodings here are Cilium's; golden tests pin them to Cilium's own fixtures.

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import msgspec

from clustermesh import identity, keys, records
from clustermesh.errors import ConfigError, DecodeError
from clustermesh.keys import KeyType, Kind, ParsedKey

_R = TypeVar("_R")

# Sorting map keys is what Go does; struct fields keep their declaration order either way.
_ENCODER = msgspec.json.Encoder(order="deterministic")
# Encodes a tree already in wire order (see _wire_tree) without reordering it.
_TREE_ENCODER = msgspec.json.Encoder()

_NODE = msgspec.json.Decoder(records.Node)
_SERVICE = msgspec.json.Decoder(records.ClusterService)
_SERVICE_EXPORT = msgspec.json.Decoder(records.ServiceExport)
_IP_IDENTITY = msgspec.json.Decoder(records.IPIdentityPair)
_CLUSTER_CONFIG = msgspec.json.Decoder(records.ClusterConfig)

_REASON_VALUE_MAX = 80

# ----------------------------------------------------------------------------------------------------
# Encoding

# Go's HTMLEscape set plus the two line separators that break JavaScript. They only ever occur inside JSON
# strings, so the escaped forms can be substituted on the encoded bytes.
_GO_ESCAPES = {
    b"<": b"\\u003c",
    b">": b"\\u003e",
    b"&": b"\\u0026",
    "\u2028".encode(): b"\\u2028",
    "\u2029".encode(): b"\\u2029",
}
_GO_ESCAPED = re.compile(b"|".join(re.escape(raw) for raw in _GO_ESCAPES))
# The first byte of each escaped sequence. Deleting them and comparing lengths is the cheapest test for "none
# present" (a third of a regex search; most values have none).
_GO_ESCAPE_STARTS = bytes({raw[0] for raw in _GO_ESCAPES})


def _go_escape(data: bytes) -> bytes:
    if len(data.translate(None, _GO_ESCAPE_STARTS)) == len(data):
        return data
    return _GO_ESCAPED.sub(lambda match: _GO_ESCAPES[match.group()], data)


# Go applies `omitempty` per field; msgspec's omit_defaults is per struct (and compares by identity), so it
# cannot express a struct mixing omitted and always-present members directly. Two ways around it:
#
# - The records encoded on the hot path (an ipcache entry per pod IP, a service per global service) have a
#   private wire twin: the same members in the same order, always-present members required (so always
#   encoded) and `omitempty` members defaulting to None, passed as None when empty (so omit_defaults leaves
#   them out, comparing None by identity). That costs one struct construction (~1 us an ipcache entry).
# - The others (service exports, the cluster config: a few per cluster, with `omitempty` inside nested
#   structs) are encoded from their builtins tree, with those members pruned as Go would (~3x slower).
#
# _wire_tree also gives `to_jsonable` its display form of every record.


class _IPIdentityPairWire(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """records.IPIdentityPair as Go encodes it."""

    ip: str = msgspec.field(name="IP")
    mask: bytes | None = msgspec.field(default=None, name="Mask")
    host_ip: str = msgspec.field(name="HostIP")
    id: int = msgspec.field(name="ID")
    key: int = msgspec.field(name="Key")
    metadata: str = msgspec.field(name="Metadata")
    k8s_namespace: str | None = msgspec.field(default=None, name="K8sNamespace")
    k8s_pod_name: str | None = msgspec.field(default=None, name="K8sPodName")
    k8s_pod_uid: str | None = msgspec.field(default=None, name="K8sPodUID")
    k8s_service_account: str | None = msgspec.field(default=None, name="K8sServiceAccount")
    named_ports: tuple[records.NamedPort, ...] | None = msgspec.field(default=None, name="NamedPorts")


def _encode_ip_identity(pair: records.IPIdentityPair) -> bytes:
    return _ENCODER.encode(
        _IPIdentityPairWire(
            ip=pair.ip,
            mask=pair.mask or None,
            host_ip=pair.host_ip,
            id=pair.id,
            key=pair.key,
            metadata=pair.metadata,
            k8s_namespace=pair.k8s_namespace or None,
            k8s_pod_name=pair.k8s_pod_name or None,
            k8s_pod_uid=pair.k8s_pod_uid or None,
            k8s_service_account=pair.k8s_service_account or None,
            named_ports=pair.named_ports or None,
        )
    )


def encode_pod_ip_identity(
    ip: str,
    host_ip: str,
    id: int,
    k8s_namespace: str,
    k8s_pod_name: str,
    k8s_pod_uid: str,
    k8s_service_account: str,
    named_ports: tuple[records.NamedPort, ...] | None,
) -> bytes:
    """encode(IPIdentityPair(...)) of a pod's entry (no mask, key or metadata), without building the record.

    For the apiserver, which encodes an entry per pod IP (50,000 in a large cluster's initial sync) and keeps
    only the bytes: building the record and dispatching on its type is half the cost (1.3 -> 0.7 us).
    Positional, like the record's members, because keyword arguments cost more to pass.
    """
    return _go_escape(
        _ENCODER.encode(
            _IPIdentityPairWire(
                ip=ip,
                host_ip=host_ip,
                id=id,
                key=0,
                metadata="",
                k8s_namespace=k8s_namespace or None,
                k8s_pod_name=k8s_pod_name or None,
                k8s_pod_uid=k8s_pod_uid or None,
                k8s_service_account=k8s_service_account or None,
                named_ports=named_ports or None,
            )
        )
    )


class _ClusterServiceWire(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """records.ClusterService as Go encodes it."""

    cluster: str
    namespace: str
    name: str
    frontends: dict[str, records.PortConfiguration] | None
    backends: dict[str, records.PortConfiguration] | None
    hostnames: dict[str, str] | None = None
    zones: dict[str, records.BackendZone] | None = None
    labels: dict[str, str] | None
    selector: dict[str, str] | None
    include_external: bool = msgspec.field(name="includeExternal")
    shared: bool
    cluster_id: int = msgspec.field(name="clusterID")


def _encode_service(service: records.ClusterService) -> bytes:
    return _ENCODER.encode(
        _ClusterServiceWire(
            cluster=service.cluster,
            namespace=service.namespace,
            name=service.name,
            frontends=service.frontends,
            backends=service.backends,
            hostnames=service.hostnames or None,
            zones=service.zones or None,
            labels=service.labels,
            selector=service.selector,
            include_external=service.include_external,
            shared=service.shared,
            cluster_id=service.cluster_id,
        )
    )


def _check_wire_twin(record: type[msgspec.Struct], wire: type[msgspec.Struct]) -> None:
    # A member added to a record but not to its twin would silently vanish from the wire: refuse to import.
    names = [[(f.name, f.encode_name) for f in msgspec.structs.fields(t)] for t in (record, wire)]
    if names[0] != names[1]:
        raise TypeError(f"{wire.__name__} does not mirror the members of {record.__name__}")


_check_wire_twin(records.IPIdentityPair, _IPIdentityPairWire)
_check_wire_twin(records.ClusterService, _ClusterServiceWire)


def _drop_empty(tree: dict[str, Any], *names: str) -> None:
    # omitempty on a string, number, bool, slice or map: left out when zero or empty.
    for name in names:
        if not tree[name]:
            del tree[name]


def _drop_nil(tree: dict[str, Any], *names: str) -> None:
    # omitempty on a pointer: left out only when nil (a pointer to false or to an empty struct stays).
    for name in names:
        if tree[name] is None:
            del tree[name]


def _prune_service(tree: dict[str, Any]) -> None:
    _drop_empty(tree, "hostnames", "zones")


def _prune_service_export(tree: dict[str, Any]) -> None:
    _drop_empty(tree, "annotations", "labels", "ipFamilies")
    _drop_nil(tree, "sessionAffinityConfig", "internalTrafficPolicy", "trafficDistribution")
    for port in tree["ports"] or ():
        _drop_empty(port, "name", "protocol")
        _drop_nil(port, "appProtocol")
    affinity = tree.get("sessionAffinityConfig")
    if affinity is not None:
        _drop_nil(affinity, "clientIP")
        if "clientIP" in affinity:
            _drop_nil(affinity["clientIP"], "timeoutSeconds")


def _prune_ip_identity(tree: dict[str, Any]) -> None:
    _drop_empty(tree, "Mask", "K8sNamespace", "K8sPodName", "K8sPodUID", "K8sServiceAccount", "NamedPorts")


def _prune_cluster_config(tree: dict[str, Any]) -> None:
    # `capabilities` is a struct, which Go never omits.
    _drop_empty(tree, "id")
    _drop_empty(tree["capabilities"], "syncedCanaries", "cached", "maxConnectedClusters")
    _drop_nil(tree["capabilities"], "serviceExportsEnabled")


_JSON_RECORDS: dict[type, Callable[[dict[str, Any]], None] | None] = {
    records.Node: None,
    records.ClusterService: _prune_service,
    records.ServiceExport: _prune_service_export,
    records.IPIdentityPair: _prune_ip_identity,
    records.ClusterConfig: _prune_cluster_config,
}


def _wire_tree(record: object) -> dict[str, Any]:
    # Builtins in wire order: struct members as declared, map keys sorted, omitempty members pruned.
    prune = _JSON_RECORDS[type(record)]
    tree = cast(dict[str, Any], msgspec.to_builtins(record, order="deterministic"))
    if prune is not None:
        prune(tree)
    return tree


def _encode_tree(record: object) -> bytes:
    return _TREE_ENCODER.encode(_wire_tree(record))


# How each JSON record becomes its value, before Go's escaping.
_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    records.Node: _ENCODER.encode,
    records.ClusterService: _encode_service,
    records.ServiceExport: _encode_tree,
    records.IPIdentityPair: _encode_ip_identity,
    records.ClusterConfig: _encode_tree,
}


def encode(record: records.Record) -> bytes:
    """The etcd value of a record, byte-identical to what Cilium writes for the same data.

    Identities encode to their label string. Raises TypeError for a non-record and ValueError (a
    UnicodeEncodeError) for a string that is not valid Unicode (a lone surrogate).
    """
    if isinstance(record, records.Identity):
        return record.labels.encode()
    try:
        encoder = _ENCODERS[type(record)]
    except KeyError:
        raise TypeError(f"cannot encode {type(record).__name__}: not a wire record") from None
    return _go_escape(encoder(record))


def encode_timestamp(moment: datetime.datetime) -> bytes:
    """A canary or heartbeat value: Go's `time.RFC3339` format (whole seconds, `Z` for UTC).

    Raises ValueError for a naive datetime: the offset is part of the value.
    """
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError("timestamp must be timezone-aware")
    # Go prints the offset's hours and minutes only; seconds of an offset are dropped, as are fractions.
    seconds = int(offset.total_seconds())
    if seconds == 0:
        zone = "Z"
    else:
        sign = "-" if seconds < 0 else "+"
        seconds = abs(seconds)
        zone = f"{sign}{seconds // 3600:02d}:{seconds // 60 % 60:02d}"
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{zone}"
    ).encode()


def to_jsonable(value: object) -> object:
    """A decoded value as JSON-compatible builtins shaped like its wire form, for display.

    Records become their wire JSON tree, identities their label string, timestamps their RFC 3339 text.
    """
    if isinstance(value, datetime.datetime):
        return encode_timestamp(value).decode()
    if isinstance(value, records.Identity):
        return value.labels
    if type(value) not in _JSON_RECORDS:
        raise TypeError(f"cannot convert {type(value).__name__}: not a wire record")
    return _wire_tree(value)


# ----------------------------------------------------------------------------------------------------
# Decoding helpers


def _show(value: object) -> str:
    # Peer data ends up in logs: bound its size.
    text = repr(value)
    return text if len(text) <= _REASON_VALUE_MAX else text[: _REASON_VALUE_MAX - 3] + "..."


def _decode_json(key: str, data: bytes, decoder: msgspec.json.Decoder[_R]) -> _R:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(key, f"invalid value: {exc}") from exc
    except RecursionError:
        raise DecodeError(key, "invalid value: nested too deeply") from None


def _record_key(key: str, kind: Kind) -> ParsedKey:
    parsed = keys.parse_key(key)
    if parsed is None or parsed.type is not KeyType.RECORD or parsed.kind is not kind:
        raise DecodeError(key, f"not a key of {kind.value}")
    return parsed


def _check_key_cluster(key: str, parsed: ParsedKey, cluster: str) -> None:
    if parsed.cluster is not None and parsed.cluster != cluster:
        raise DecodeError(key, _mismatch("key belongs to another cluster", parsed.cluster, cluster))


def _check_cluster(key: str, got_cluster: str, got_id: int, cluster: str, cluster_id: int | None) -> None:
    if got_cluster != cluster:
        raise DecodeError(key, _mismatch("unexpected cluster name", got_cluster, cluster))
    if cluster_id is not None and got_id != cluster_id:
        raise DecodeError(key, f"unexpected cluster ID: got {got_id}, expected {cluster_id}")


def _mismatch(what: str, got: object, expected: object) -> str:
    return f"{what}: got {_show(got)}, expected {_show(expected)}"


def _out_of_range(numeric_id: int, cluster_id: int) -> str:
    return f"ID {numeric_id} does not belong to the allocation range of cluster ID {cluster_id}"


def _ip_valid(text: str) -> bool:
    # inet_pton is ~10x faster than ipaddress and agrees with Go's netip.ParseAddr on what an IP is: dotted
    # quads without leading zeros, RFC 4291 IPv6, and no zone (`%eth0` fails). It runs once per backend of a
    # service, so its cost bounds how fast a 10k-backend service is ingested.
    try:
        socket.inet_pton(socket.AF_INET, text)
        return True
    except (OSError, ValueError):
        pass
    try:
        socket.inet_pton(socket.AF_INET6, text)
        return True
    except (OSError, ValueError):
        return False


def _check_ips(key: str, what: str, addresses: Iterable[str], *, allow_empty: bool = False) -> None:
    for address in addresses:
        if not (_ip_valid(address) or (allow_empty and address == "")):
            raise DecodeError(key, f"{what}: invalid IP address {_show(address)}")


_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _parse_rfc3339(text: str) -> datetime.datetime | None:
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    date, time, fraction, zone = match.groups()
    # Go allows nanoseconds; Python keeps microseconds.
    micros = (fraction or "").ljust(6, "0")[:6]
    try:
        return datetime.datetime.fromisoformat(f"{date}T{time}.{micros}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------------
# Decoders, one per kind


def decode_node(
    key: str, data: bytes, *, cluster: str, cluster_id: int | None, name: str | None = None
) -> records.Node:
    """The node stored at key by `cluster`; checks name, cluster name, cluster ID (unless None) and IPs.

    `name`: see "Reading under a watch prefix" above.
    """
    if name is None or not _is_segment(name):
        parsed = _record_key(key, Kind.NODES)
        _check_key_cluster(key, parsed, cluster)
        name = cast(str, parsed.name)
    node = _decode_json(key, data, _NODE)
    if node.name != name:
        raise DecodeError(key, _mismatch("name does not match key", node.name, name))
    _check_cluster(key, node.cluster, node.cluster_id, cluster, cluster_id)
    _check_ips(key, "IPAddresses", (address.ip for address in node.ip_addresses or () if address.ip))
    _check_ips(
        key,
        "health/ingress IPs",
        (ip for ip in (node.ipv4_health_ip, node.ipv6_health_ip, node.ipv4_ingress_ip, node.ipv6_ingress_ip) if ip),
    )
    cidrs = (node.ipv4_alloc_cidr, node.ipv6_alloc_cidr)
    for cidr in (*cidrs, *(node.ipv4_secondary_alloc_cidrs or ()), *(node.ipv6_secondary_alloc_cidrs or ())):
        if cidr is not None and not _cidr_valid(cidr):
            try:
                cidr.network()  # the reference, for what the fast check does not accept (and the reason)
            except ValueError as exc:
                raise DecodeError(key, f"invalid allocation CIDR: {exc}") from None
    return node


_FAMILY_BY_MASK_BYTES = {4: socket.AF_INET, 16: socket.AF_INET6}


def _cidr_valid(cidr: records.CIDR) -> bool:
    # CIDR.network() builds ipaddress objects (~6 us a node); this accepts a subset of what it accepts (an IP
    # inet_pton parses in the family the mask's length says, and a contiguous mask) in under 1 us.
    mask = cidr.mask or b""
    family = _FAMILY_BY_MASK_BYTES.get(len(mask))
    if family is None:
        return False
    try:
        socket.inet_pton(family, cidr.ip)
    except (OSError, ValueError):
        return False
    host_bits = ~int.from_bytes(mask) & ((1 << 8 * len(mask)) - 1)
    return host_bits & (host_bits + 1) == 0


def _is_segment(name: str) -> bool:
    return bool(name) and "/" not in name


def decode_service(
    key: str, data: bytes, *, cluster: str, cluster_id: int | None, name: str | None = None
) -> records.ClusterService:
    """The global service stored at key by `cluster`; checks names, cluster name and ID, and IPs.

    Backends with equal ports share one port map. `name`: see "Reading under a watch prefix" above.
    """
    expected = _namespaced_name(key, Kind.SERVICES, cluster, name)
    service = _decode_json(key, data, _SERVICE)
    _check_namespaced(key, expected, service.cluster, service.namespace, service.name)
    _check_cluster(key, service.cluster, service.cluster_id, cluster, cluster_id)
    _check_ips(key, "frontends", service.frontends or ())
    if service.backends:
        _check_ips(key, "backends", service.backends)
        service = msgspec.structs.replace(service, backends=_shared_ports(service.backends))
    return service


def _shared_ports(backends: dict[str, records.PortConfiguration]) -> dict[str, records.PortConfiguration]:
    # Backends of a service nearly always expose the same ports, and a port map is ~400 bytes: sharing equal
    # maps makes a cached service 3-4x smaller. Comparing in C (count, fromkeys) costs 0.08 us a backend.
    ports = list(backends.values())
    if ports.count(ports[0]) == len(ports):
        return dict.fromkeys(backends, ports[0])
    shared: dict[str, records.PortConfiguration] = {}
    previous = None
    for ip, these in backends.items():
        if these != previous:
            previous = these
        shared[ip] = previous
    return shared


def _namespaced_name(key: str, kind: Kind, cluster: str, name: str | None) -> tuple[str, str]:
    # (namespace, name) the key names: from `name` when the caller read key under the kind's watch prefix.
    if name is not None:
        namespace, slash, local = name.partition("/")
        if slash and _is_segment(namespace) and _is_segment(local):
            return namespace, local
    parsed = _record_key(key, kind)
    _check_key_cluster(key, parsed, cluster)
    return cast(str, parsed.namespace), cast(str, parsed.name)


def _check_namespaced(key: str, expected: tuple[str, str], cluster: str, namespace: str, name: str) -> None:
    for what, value in (("cluster", cluster), ("namespace", namespace), ("name", name)):
        if not value:
            raise DecodeError(key, f"{what} is unset")
    if (namespace, name) != expected:
        raise DecodeError(
            key,
            f"namespaced name does not match key: got {_show(f'{namespace}/{name}')}, "
            f"expected {_show(f'{expected[0]}/{expected[1]}')}",
        )


_EXPORT_TYPES = frozenset({"ClusterSetIP", "Headless"})
# Older Cilium writes "" for headless services; newer ones write None.
_SESSION_AFFINITIES = frozenset({"", "None", "ClientIP"})
_INTERNAL_TRAFFIC_POLICIES = frozenset({"Cluster", "Local"})
_TRAFFIC_DISTRIBUTIONS = frozenset({"PreferClose", "PreferSameZone", "PreferSameNode"})


def decode_service_export(
    key: str, data: bytes, *, cluster: str, name: str | None = None
) -> records.ServiceExport:
    """The MCS-API service export stored at key by `cluster`; checks names, cluster, timestamp and enums.

    `name`: see "Reading under a watch prefix" above.
    """
    expected = _namespaced_name(key, Kind.SERVICE_EXPORTS, cluster, name)
    export = _decode_json(key, data, _SERVICE_EXPORT)
    _check_namespaced(key, expected, export.cluster, export.namespace, export.name)
    if export.cluster != cluster:
        raise DecodeError(key, _mismatch("unexpected cluster name", export.cluster, cluster))
    created = export.export_creation_timestamp
    if created is None:
        raise DecodeError(key, "exportCreationTimestamp is unset")
    if _parse_rfc3339(created) is None:
        raise DecodeError(key, f"exportCreationTimestamp {_show(created)} is not RFC 3339")
    for what, value, allowed in (
        ("type", export.type, _EXPORT_TYPES),
        ("session affinity", export.session_affinity, _SESSION_AFFINITIES),
        ("internal traffic policy", export.internal_traffic_policy, _INTERNAL_TRAFFIC_POLICIES),
        ("traffic distribution", export.traffic_distribution, _TRAFFIC_DISTRIBUTIONS),
    ):
        if value is not None and value not in allowed:
            raise DecodeError(key, f"{what} is unknown: {_show(value)}")
    return export


def decode_identity(
    key: str,
    data: bytes,
    *,
    cluster: str | None,
    cluster_id: int | None,
    max_clusters: int = identity.ClusterIDMode.DEFAULT,
) -> records.Identity:
    """The identity at key; checks the label string, and what is known of the source cluster.

    With cluster_id, the number must lie in that cluster's range (reserved identities are not published by
    clusters). With cluster, a cached key must be that cluster's and the labels must carry
    `k8s:io.cilium.k8s.policy.cluster=<cluster>`. max_clusters is the mesh's mode (a ConfigError if invalid).
    """
    parsed = _record_key(key, Kind.IDENTITIES)
    numeric_id = cast(int, parsed.identity)  # parse_key always sets it for identity keys
    if cluster is not None:
        _check_key_cluster(key, parsed, cluster)
    if cluster_id is not None and not (
        identity.min_identity(cluster_id, max_clusters) <= numeric_id <= identity.max_identity(cluster_id, max_clusters)
    ):
        raise DecodeError(key, _out_of_range(numeric_id, cluster_id))
    try:
        text = data.decode()
        labels = records.parse_labels(text)
    except UnicodeDecodeError:
        raise DecodeError(key, "label string is not valid UTF-8") from None
    except ValueError as exc:
        raise DecodeError(key, f"invalid label string: {exc}") from None
    if cluster is not None:
        _check_cluster_label(key, labels, cluster)
    return records.Identity(id=numeric_id, labels=text)


def _check_cluster_label(key: str, labels: tuple[records.Label, ...], cluster: str) -> None:
    # Cilium's clusterNameValidator: an identity must name the cluster that allocated it, as a k8s label.
    for label in labels:
        if label.key != records.POLICY_LABEL_CLUSTER:
            continue
        if label.source != "k8s":
            raise DecodeError(key, _mismatch("unexpected source for cluster label", label.source, "k8s"))
        if label.value != cluster:
            raise DecodeError(key, _mismatch("unexpected cluster name", label.value, cluster))
        return
    raise DecodeError(key, f"could not find expected label {records.POLICY_LABEL_CLUSTER}")


def decode_ip_identity(
    key: str,
    data: bytes,
    *,
    cluster: str | None,
    cluster_id: int | None,
    max_clusters: int = identity.ClusterIDMode.DEFAULT,
    name: str | None = None,
) -> records.IPIdentityPair:
    """The ipcache entry at key as a peer's entry: validated, the host identity read as remote-node.

    Checks that the IP parses and names the key, that HostIP parses, that a cached key belongs to cluster
    (if given), and with cluster_id that the identity is the cluster's or reserved (< 256).
    `name`: see "Reading under a watch prefix" above.
    """
    pair = None if name is None else _read_ip_identity_named(key, data, name, cluster_id, max_clusters)
    if pair is None:
        pair = _read_ip_identity(key, data, cluster, cluster_id, max_clusters)
    return msgspec.structs.replace(
        pair,
        # As Cilium's IPIdentityWatcher does: a peer's "host" is its own node, which to us is a remote node.
        id=identity.REMOTE_NODE_IDENTITY if pair.id == identity.HOST_IDENTITY else pair.id,
        # Readers cache every entry, and these values repeat across thousands of them: one shared string per
        # distinct value saves about a third of an entry's memory for well under a microsecond.
        host_ip=sys.intern(pair.host_ip),
        k8s_namespace=sys.intern(pair.k8s_namespace),
        k8s_service_account=sys.intern(pair.k8s_service_account),
    )


def _read_ip_identity(
    key: str, data: bytes, cluster: str | None, cluster_id: int | None, max_clusters: int
) -> records.IPIdentityPair:
    parsed = _record_key(key, Kind.IPCACHE)
    if cluster is not None:
        _check_key_cluster(key, parsed, cluster)
    pair = _decode_json(key, data, _IP_IDENTITY)
    _check_ips(key, "IP", (pair.ip,))
    _check_ips(key, "HostIP", (pair.host_ip,), allow_empty=True)
    if pair.mask is not None and len(pair.mask) not in (4, 16):
        raise DecodeError(key, f"Mask of {len(pair.mask)} bytes is not an IPv4 or IPv6 mask")
    name = pair.prefix_string
    if name != parsed.name and _canonical_prefix(name) != _canonical_prefix(cast(str, parsed.name)):
        raise DecodeError(key, _mismatch("IP does not match key", name, parsed.name))
    if cluster_id is not None and not identity.in_cluster_range(pair.id, cluster_id, max_clusters):
        raise DecodeError(key, _out_of_range(pair.id, cluster_id))
    return pair


def _read_ip_identity_named(
    key: str, data: bytes, name: str, cluster_id: int | None, max_clusters: int
) -> records.IPIdentityPair | None:
    # _read_ip_identity for a key known to be a watch prefix plus `name`, without parsing the key. An entry
    # whose prefix string is the name has a key the full path accepts, so from there on both agree; anything
    # else returns None, for the full path to decide and word the reason (it checks the key first).
    try:
        pair = _IP_IDENTITY.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if (
        not _ip_valid(pair.ip)
        or (pair.host_ip and not _ip_valid(pair.host_ip))
        or (pair.mask is not None and len(pair.mask) not in (4, 16))
        or pair.prefix_string != name
    ):
        return None
    if cluster_id is not None and not identity.in_cluster_range(pair.id, cluster_id, max_clusters):
        raise DecodeError(key, _out_of_range(pair.id, cluster_id))
    return pair


def _canonical_prefix(text: str) -> str | None:
    # Slow path, for writers whose IP text is not canonical (Go prints IPv4-mapped IPv6 as dotted IPv4).
    address, slash, length = text.partition("/")
    try:
        parsed: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return f"{parsed}{slash}{length}"


def decode_cluster_config(key: str, data: bytes, *, cluster: str) -> records.ClusterConfig:
    """The configuration `cluster` publishes; checks its max-connected-clusters and that its ID fits it.

    Whether the ID clashes with the reader's own or another peer's is for the reader to decide.
    """
    parsed = keys.parse_key(key)
    if parsed is None or parsed.type is not KeyType.CLUSTER_CONFIG:
        raise DecodeError(key, "not a cluster-config key")
    _check_key_cluster(key, parsed, cluster)
    config = _decode_json(key, data, _CLUSTER_CONFIG)
    try:
        if config.capabilities.max_connected_clusters:
            identity.validate_max_connected_clusters(config.capabilities.max_connected_clusters)
        identity.validate_cluster_id(config.id, config.max_clusters)
    except ConfigError as exc:
        raise DecodeError(key, str(exc)) from None
    return config


def decode_timestamp(key: str, data: bytes) -> datetime.datetime:
    """The RFC 3339 timestamp of a canary or the heartbeat, timezone-aware."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError(key, "timestamp is not ASCII") from None
    moment = _parse_rfc3339(text)
    if moment is None:
        raise DecodeError(key, f"not an RFC 3339 timestamp: {_show(text)}")
    return moment


def decode_any(key: str, value: bytes) -> tuple[ParsedKey, object]:
    """Decode and validate any mesh key using only what the key itself says, for display.

    The cluster comes from the key; cluster IDs are not known, so identity ranges and record cluster IDs are
    not checked, and ipcache entries are returned as stored (no host → remote-node conversion).
    DecodeError also for keys that parse_key does not know.
    """
    parsed = keys.parse_key(key)
    if parsed is None:
        raise DecodeError(key, "not a key of Cluster Mesh")
    if parsed.type is KeyType.HEARTBEAT or parsed.type is KeyType.SYNCED_CANARY:
        return parsed, decode_timestamp(key, value)
    # Every key but the heartbeat and state identity/ipcache keys names its cluster.
    cluster = parsed.cluster
    if parsed.type is KeyType.CLUSTER_CONFIG:
        return parsed, decode_cluster_config(key, value, cluster=cast(str, cluster))
    record: object
    if parsed.kind is Kind.NODES:
        record = decode_node(key, value, cluster=cast(str, cluster), cluster_id=None)
    elif parsed.kind is Kind.SERVICES:
        record = decode_service(key, value, cluster=cast(str, cluster), cluster_id=None)
    elif parsed.kind is Kind.SERVICE_EXPORTS:
        record = decode_service_export(key, value, cluster=cast(str, cluster))
    elif parsed.kind is Kind.IDENTITIES:
        record = decode_identity(key, value, cluster=cluster, cluster_id=None)
    else:
        record = _read_ip_identity(key, value, cluster, None, identity.ClusterIDMode.DEFAULT)
    return parsed, record
