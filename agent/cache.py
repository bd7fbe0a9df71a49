"""The agent's read model: every peer's validated records, by kind, and the indexes the servers query.

Owns: the records (already decoded and validated by the peer's observer), per-peer counts, the lookups the
gRPC and DNS servers need (a service by namespace/name across peers, an IP, an identity number), and telling
listeners about every change. Does not own: etcd, decoding, validation, or what a change means for a
service's backends (services.py). Every mutation happens on the event loop thread; reads are plain dict
lookups, so servers never wait on etcd.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgspec

from clustermesh import keys, records

Kind = keys.Kind


class IPCacheEntry(msgspec.Struct, frozen=True, gc=False):
    """What the cache keeps of a peer's ipcache entry (records.IPIdentityPair): the fields the agent serves.

    Not the record itself: the pod UID, service account, metadata and named ports are never served, and IP and
    mask are kept as the one text they are served as (Go's PrefixString, also the entry's cache name). Six
    fields instead of eleven: 64 bytes instead of 112, for each of the hundreds of thousands of entries.
    """

    prefix: str
    """The IP, or `ip/prefixlen` for a CIDR entry."""
    id: int
    host_ip: str = ""
    key: int = 0
    k8s_namespace: str = ""
    k8s_pod_name: str = ""


Record = records.Node | records.ClusterService | records.ServiceExport | records.Identity | IPCacheEntry


class Change(NamedTuple):
    """One change in the cache; record is None for a delete."""

    kind: Kind
    cluster: str
    name: str
    record: Record | None


Listener = Callable[[Change], None]


@dataclasses.dataclass
class PeerEntries:
    """One peer's records, by kind, keyed by name (node name, `ns/name`, identity number as text, IP)."""

    by_kind: dict[Kind, dict[str, Record]] = dataclasses.field(
        default_factory=lambda: {kind: {} for kind in Kind}
    )

    def count(self, kind: Kind) -> int:
        """How many records of kind the peer has."""
        return len(self.by_kind[kind])


class MeshCache:
    """Records of every peer. Listeners are called synchronously after each change and must not block."""

    def __init__(self) -> None:
        self._peers: dict[str, PeerEntries] = {}
        # (namespace, name) -> cluster -> service: DNS and ResolveService look services up by name.
        self._services: dict[tuple[str, str], dict[str, records.ClusterService]] = {}
        self._listeners: list[Listener] = []

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{cluster}: " + "/".join(str(entries.count(kind)) for kind in Kind)
            for cluster, entries in self._peers.items()
        )
        return f"<MeshCache peers={len(self._peers)} {{{counts}}}>"

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call listener on every change from now on; returns a function that unsubscribes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def peers(self) -> list[str]:
        """Names of the peers that have (or had) entries."""
        return list(self._peers)

    def entries(self, cluster: str) -> PeerEntries:
        """The entries of one peer (empty if unknown)."""
        return self._peers.get(cluster) or PeerEntries()

    def count(self, cluster: str, kind: Kind) -> int:
        """How many records of kind the peer has."""
        entries = self._peers.get(cluster)
        return entries.count(kind) if entries else 0

    def upsert(self, kind: Kind, cluster: str, name: str, record: Record) -> None:
        """Store record as the peer's `name` of kind and notify listeners."""
        entries = self._peers.get(cluster)
        if entries is None:
            entries = self._peers[cluster] = PeerEntries()
        entries.by_kind[kind][name] = record
        if kind is Kind.SERVICES:
            assert isinstance(record, records.ClusterService)
            self._services.setdefault((record.namespace, record.name), {})[cluster] = record
        if self._listeners:
            self._notify(Change(kind, cluster, name, record))

    def delete(self, kind: Kind, cluster: str, name: str) -> None:
        """Remove the peer's `name` of kind (if present) and notify listeners."""
        entries = self._peers.get(cluster)
        if entries is None:
            return
        record = entries.by_kind[kind].pop(name, None)
        if record is None:
            return
        if kind is Kind.SERVICES:
            assert isinstance(record, records.ClusterService)
            by_cluster = self._services.get((record.namespace, record.name), {})
            by_cluster.pop(cluster, None)
            if not by_cluster:
                self._services.pop((record.namespace, record.name), None)
        if self._listeners:
            self._notify(Change(kind, cluster, name, None))

    def drain(self, cluster: str, kinds: tuple[Kind, ...] = tuple(Kind)) -> int:
        """Delete every record of the given kinds of a peer (with notifications); returns how many."""
        entries = self._peers.get(cluster)
        if entries is None:
            return 0
        drained = 0
        for kind in kinds:
            for name in list(entries.by_kind[kind]):
                self.delete(kind, cluster, name)
                drained += 1
        if all(not entries.by_kind[kind] for kind in Kind):
            del self._peers[cluster]
        return drained

    def get(self, kind: Kind, cluster: str, name: str) -> Record | None:
        """One record, or None."""
        entries = self._peers.get(cluster)
        return entries.by_kind[kind].get(name) if entries else None

    def items(self, kind: Kind, cluster: str | None = None) -> Iterator[tuple[str, str, Record]]:
        """(cluster, name, record) of kind, for one peer or all."""
        clusters = [cluster] if cluster is not None else list(self._peers)
        for name_of_cluster in clusters:
            entries = self._peers.get(name_of_cluster)
            if entries is None:
                continue
            for name, record in entries.by_kind[kind].items():
                yield name_of_cluster, name, record

    def services_named(self, namespace: str, name: str) -> dict[str, records.ClusterService]:
        """Every peer's ClusterService of namespace/name, by cluster (a copy)."""
        return dict(self._services.get((namespace, name), {}))

    def global_service_names(self) -> list[tuple[str, str]]:
        """(namespace, name) of every service some peer exports."""
        return list(self._services)

    def lookup_ip(self, ip: str) -> tuple[str, IPCacheEntry] | None:
        """The peer and ipcache entry for an IP (or prefix) text, or None."""
        for cluster, entries in self._peers.items():
            record = entries.by_kind[Kind.IPCACHE].get(ip)
            if record is not None:
                assert isinstance(record, IPCacheEntry)
                return cluster, record
        return None

    def lookup_identity(self, numeric_id: int) -> tuple[str, records.Identity] | None:
        """The peer and identity for a number, or None."""
        name = str(numeric_id)
        for cluster, entries in self._peers.items():
            record = entries.by_kind[Kind.IDENTITIES].get(name)
            if record is not None:
                assert isinstance(record, records.Identity)
                return cluster, record
        return None

    def _notify(self, change: Change) -> None:
        for listener in list(self._listeners):
            listener(change)
