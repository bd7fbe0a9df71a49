"""What counts as the same cache entry: one comparable form for a peer's record in etcd and in an agent's cache.

An entry is named as the agent's cache names it — (kind, peer cluster, name) with the name being the node name,
`<namespace>/<name>`, the identity number, or the IP (`ip/len` for a CIDR) — and compared by a fingerprint of
the fields the agent serves (its gRPC List answers): equal fingerprints mean the agent serves what etcd holds.
Built from a decoded record (the truth side, clustermesh.drill.truth) or from an agent's API message (the cache
side, clustermesh.drill.verdict). The fields left out are those the agent's API does not carry.
"""

from __future__ import annotations

from typing import NamedTuple

from clustermesh import records
from clustermesh.api.v1 import agent_pb2
from clustermesh.keys import Kind

KINDS = (Kind.NODES, Kind.SERVICES, Kind.IDENTITIES, Kind.IPCACHE)
"""The kinds a verdict compares: those an agent lists over its API."""

Fingerprint = tuple[object, ...]


class EntryKey(NamedTuple):
    """One entry of one peer, named as the agent's cache names it."""

    kind: Kind
    cluster: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value} {self.cluster}/{self.name}"


Entries = dict[EntryKey, Fingerprint]


def _cidr_text(cidr: records.CIDR | None) -> str:
    # The codec validated the CIDR, so network() parses; the agent prints it the same way.
    return str(cidr.network()) if cidr is not None else ""


# ----------------------------------------------------------------------------------------------------
# From records (etcd, decoded by the codec)


def node(cluster: str, record: records.Node) -> tuple[EntryKey, Fingerprint]:
    """A node as etcd holds it."""
    addresses = tuple(sorted((a.type, a.ip) for a in record.ip_addresses or ()))
    return EntryKey(Kind.NODES, cluster, record.name), (
        record.cluster_id, addresses, _cidr_text(record.ipv4_alloc_cidr), _cidr_text(record.ipv6_alloc_cidr),
        record.ipv4_health_ip, record.ipv6_health_ip, record.wireguard_pub_key,
    )


def service(cluster: str, record: records.ClusterService) -> tuple[EntryKey, Fingerprint]:
    """A global service as etcd holds it: frontend IPs, and one backend per IP and port name."""
    backends = tuple(sorted(
        (ip, l4.port, l4.protocol, port_name)
        for ip, ports in (record.backends or {}).items() for port_name, l4 in ports.items()
    ))
    return EntryKey(Kind.SERVICES, cluster, f"{record.namespace}/{record.name}"), (
        record.cluster_id, tuple(sorted(record.frontends or ())), backends, record.shared, record.include_external,
    )


def identity(cluster: str, record: records.Identity) -> tuple[EntryKey, Fingerprint]:
    """An identity as etcd holds it."""
    return EntryKey(Kind.IDENTITIES, cluster, str(record.id)), (record.labels,)


def ipcache(cluster: str, record: records.IPIdentityPair) -> tuple[EntryKey, Fingerprint]:
    """An ipcache entry as a peer reads it (the codec turned a host identity into remote-node)."""
    return EntryKey(Kind.IPCACHE, cluster, record.prefix_string), (
        record.id, record.host_ip, record.key, record.k8s_namespace, record.k8s_pod_name,
    )


# ----------------------------------------------------------------------------------------------------
# From the agent's API messages


def node_message(message: agent_pb2.Node) -> tuple[EntryKey, Fingerprint]:
    """A node as an agent serves it."""
    addresses = tuple(sorted((a.type, a.ip) for a in message.addresses))
    return EntryKey(Kind.NODES, message.cluster, message.name), (
        message.cluster_id, addresses, message.ipv4_alloc_cidr, message.ipv6_alloc_cidr,
        message.ipv4_health_ip, message.ipv6_health_ip, message.wireguard_pub_key,
    )


def service_message(message: agent_pb2.Service) -> tuple[EntryKey, Fingerprint]:
    """A peer's global service as an agent serves it."""
    backends = tuple(sorted((b.ip, b.port, b.protocol, b.port_name) for b in message.backends))
    return EntryKey(Kind.SERVICES, message.cluster, f"{message.namespace}/{message.name}"), (
        message.cluster_id, tuple(sorted(message.frontends)), backends, message.shared, message.include_external,
    )


def identity_message(message: agent_pb2.Identity) -> tuple[EntryKey, Fingerprint]:
    """An identity as an agent serves it."""
    return EntryKey(Kind.IDENTITIES, message.cluster, str(message.id)), (message.labels,)


def ipcache_message(message: agent_pb2.IPCacheEntry) -> tuple[EntryKey, Fingerprint]:
    """An ipcache entry as an agent serves it."""
    return EntryKey(Kind.IPCACHE, message.cluster, message.prefix), (
        message.identity, message.host_ip, message.encrypt_key, message.namespace, message.pod_name,
    )


# ----------------------------------------------------------------------------------------------------
# Reading fingerprints


def backend_ips(fingerprint: Fingerprint) -> frozenset[str]:
    """The backend IPs of a service's fingerprint."""
    backends = fingerprint[2]
    assert isinstance(backends, tuple)
    return frozenset(backend[0] for backend in backends)


def ipcache_namespace(fingerprint: Fingerprint) -> str:
    """The pod namespace of an ipcache entry's fingerprint."""
    return str(fingerprint[3])
