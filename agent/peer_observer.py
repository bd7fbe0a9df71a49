"""A peer's records as they arrive from its etcd: decode, validate, count the bad ones, cache the good ones.

One PeerObserver per (peer, kind) is the watch_store.Observer of that kind's WatchStore. It decodes each value
with the core codec against what the connection knows about the peer (its name, its cluster ID, its
max-connected-clusters), so a record naming another cluster, carrying another ID, an identity outside the
peer's range, or an unparsable IP is rejected. For state (non-cached) identities and ipcache entries the etcd
prefix is shared by every cluster that writes to that etcd; the range check is what keeps only the peer's own.

A rejected record is skipped, counted per peer and per reason (InvalidRecords), and logged once with the
cluster and the key. It never evicts what the cache holds under that name (the last good value stays) and never
stops the watch: peer data is untrusted, and one bad record must not cost the others.

Cache names are the key minus the watch prefix: the node name, `<namespace>/<name>`, the identity number, the
IP (or `ip/len`). Deletes need no decoding, which keeps them correct even for keys whose value was rejected.
The name is handed to the codec, which then need not parse the key again (the prefix says whose record of
which kind it is).

Memory: an agent holds every record of every peer, so values that repeat across a peer's records are kept once
(Shared): the identity numbers of ipcache entries, named-port lists, CIDR masks, and strings from small
vocabularies (the cluster name, node address types and sources, label keys, namespaces). That halves an
ipcache entry.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec

from agent import cache as mesh_cache
from clustermesh import codec, records
from clustermesh.errors import DecodeError
from clustermesh.keys import Kind

log = logging.getLogger(__name__)

_KEY_LOG_MAX = 200
# Reasons carry peer data (names, numbers, quoted values); counting by the raw text would let a peer grow the
# table without bound. The part before the first ':' with numbers and quoted text masked is the category.
_REASON_DETAIL = re.compile(r"'[^']*'|\"[^\"]*\"|[0-9]+")
_OTHER_REASON = "other"

Decoder = Callable[[str, bytes, str], mesh_cache.Record]
"""Decodes (key, value, name under the watch prefix) into a validated record; DecodeError if invalid."""

_T = TypeVar("_T")


class InvalidRecords:
    """Records of one peer that failed decoding or validation: a total and counts per kind and reason.

    At most `max_reasons` distinct reasons are kept; later new ones are counted under "other".
    """

    def __init__(self, *, max_reasons: int = 32) -> None:
        self.total = 0
        self.max_reasons = max_reasons
        self._by_reason: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<InvalidRecords total={self.total} reasons={len(self._by_reason)}>"

    def add(self, kind: Kind, reason: str) -> None:
        """Count one rejected record of kind."""
        self.total += 1
        category = f"{kind.value}: {_REASON_DETAIL.sub('N', reason.split(':', 1)[0]).strip()}"
        if category not in self._by_reason and len(self._by_reason) >= self.max_reasons:
            category = _OTHER_REASON
        self._by_reason[category] = self._by_reason.get(category, 0) + 1

    def by_reason(self) -> tuple[tuple[str, int], ...]:
        """(reason, count) pairs, most frequent first."""
        return tuple(sorted(self._by_reason.items(), key=lambda item: (-item[1], item[0])))


class Shared:
    """One object per distinct value among the records of one peer: equal immutable values are kept once.

    Bounded: past `limit` distinct values the table starts over (values already shared stay shared).
    """

    def __init__(self, *, limit: int = 65_536) -> None:
        self.limit = limit
        self._values: dict[object, object] = {}

    def __repr__(self) -> str:
        return f"<Shared values={len(self._values)} limit={self.limit}>"

    def __call__(self, value: _T) -> _T:
        """The kept object equal to value (value itself, the first time)."""
        values = self._values
        kept = values.get(value)
        if kept is None:
            if len(values) >= self.limit:
                values.clear()
            values[value] = kept = value
        return kept  # type: ignore[return-value]


class NodeClaims(Protocol):
    """Decides whether a peer's node may be cached (its pod CIDRs must not overlap other clusters')."""

    def claim(self, name: str, node: records.Node) -> bool:
        """True to cache the node; False refuses it (the implementation reports the conflict)."""
        ...

    def release(self, name: str) -> None:
        """The node is gone from the cache."""
        ...


class PeerObserver:
    """Feeds one kind of one peer into the cache. Called from the WatchStore's task; never blocks.

    bind() must be called before the store runs and again whenever the peer's identity is re-read. Fields
    are mutated only from the event loop, by the store's callbacks and the owning connection. `shared` is the
    peer's table of repeated values (one per peer, given to each of its observers; by default its own).
    """

    def __init__(
        self,
        kind: Kind,
        *,
        cluster: str,
        cache: mesh_cache.MeshCache,
        invalid: InvalidRecords,
        clock: Callable[[], float],
        on_listed: Callable[[Kind], None],
        node_claims: NodeClaims | None = None,
        shared: Shared | None = None,
    ) -> None:
        self.kind = kind
        self.cluster = cluster
        self.last_event_at: float | None = None
        self._cache = cache
        self._invalid = invalid
        self._clock = clock
        self._on_listed = on_listed
        self._claims = node_claims
        self._shared = shared or Shared()
        self._prefix_len = 0
        self._decode: Decoder | None = None
        # Cache names to delete at the next list-done unless the list delivers them: set when the store
        # feeding this observer was replaced (another etcd, another prefix) and so cannot sweep them itself.
        self._stale: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"<PeerObserver {self.cluster}:{self.kind.value} cached={self._cache.count(self.cluster, self.kind)} "
            f"stale={len(self._stale)}>"
        )

    def bind(self, *, prefix: bytes, cluster_id: int, max_clusters: int) -> None:
        """Decode keys under prefix as records of a peer with this cluster ID and max-connected-clusters."""
        self._prefix_len = len(prefix)
        self._decode = _decoder(self.kind, self.cluster, cluster_id, max_clusters, self._shared)

    def begin_full_resync(self) -> None:
        """Treat every cached entry of this kind as stale until the next list delivers it again.

        For a new WatchStore that replaces one whose keys it cannot know (a different etcd, a different
        prefix): at its first list-done, names it did not deliver are deleted.
        """
        self._stale.update(name for _, name, _ in self._cache.items(self.kind, self.cluster))

    def on_upsert(self, key: bytes, value: bytes) -> None:
        self.last_event_at = self._clock()
        assert self._decode is not None, "bind() before the store runs"
        try:
            text = key.decode()
            name = text[self._prefix_len :]
            if self._stale:
                # Seen is enough to not be stale: an invalid value keeps the last good one, as on any update.
                self._stale.discard(name)
            record = self._decode(text, value, name)
        except DecodeError as exc:
            self._reject(exc.key, exc.reason)
            return
        except UnicodeDecodeError:
            self._reject(repr(key), "key is not valid UTF-8")
            return
        if self._claims is not None:
            assert isinstance(record, records.Node)
            if not self._claims.claim(name, record):
                return
            name = _same_text(record.name, name)
        elif isinstance(record, records.IPIdentityPair):
            name = _same_text(record.ip, name)
        self._cache.upsert(self.kind, self.cluster, name, record)

    def on_delete(self, key: bytes) -> None:
        self.last_event_at = self._clock()
        try:
            name = key.decode()[self._prefix_len :]
        except UnicodeDecodeError:
            return  # never cached
        self._remove(name)

    def on_list_done(self) -> None:
        for name in self._stale:
            self._remove(name)
        self._stale.clear()
        self._on_listed(self.kind)

    def drain_rest(self) -> int:
        """Delete every cached entry of this kind of the peer; call after the store's drain(). Returns how many."""
        self._stale.clear()
        names = [name for _, name, _ in self._cache.items(self.kind, self.cluster)]
        for name in names:
            self._remove(name)
        return len(names)

    def _remove(self, name: str) -> None:
        if self._claims is not None:
            self._claims.release(name)
        self._cache.delete(self.kind, self.cluster, name)

    def _reject(self, key: str, reason: str) -> None:
        self._invalid.add(self.kind, reason)
        log.warning(
            "event=peer.record.invalid cluster=%s kind=%s key=%s reason=%r",
            self.cluster, self.kind.value, key[:_KEY_LOG_MAX], reason,
        )


def _same_text(held: str, name: str) -> str:
    # The record already holds the name (a node's name, an ipcache entry's IP): key the cache with that
    # string rather than a second copy. Across 100k+ entries that is ~60 bytes each.
    return held if held == name else name


def _decoder(kind: Kind, cluster: str, cluster_id: int, max_clusters: int, shared: Shared) -> Decoder:
    # Closures rather than functools.partial: a partial with keywords builds a dict on every call.
    intern = sys.intern
    replace = msgspec.structs.replace
    if kind is Kind.NODES:

        def node(key: str, value: bytes, name: str) -> records.Node:
            record = codec.decode_node(key, value, cluster=cluster, cluster_id=cluster_id, name=name)
            return replace(
                record,
                cluster=cluster,
                source=intern(record.source),
                ip_addresses=record.ip_addresses and tuple(
                    records.NodeAddress(intern(address.type), address.ip) for address in record.ip_addresses
                ),
                ipv4_alloc_cidr=_shared_cidr(record.ipv4_alloc_cidr, shared),
                ipv6_alloc_cidr=_shared_cidr(record.ipv6_alloc_cidr, shared),
                labels=_interned_keys(record.labels),
                annotations=_interned_keys(record.annotations),
            )

        return node
    if kind is Kind.SERVICES:

        def service(key: str, value: bytes, name: str) -> records.ClusterService:
            record = codec.decode_service(key, value, cluster=cluster, cluster_id=cluster_id, name=name)
            return replace(record, cluster=cluster, namespace=intern(record.namespace))

        return service
    if kind is Kind.SERVICE_EXPORTS:

        def service_export(key: str, value: bytes, name: str) -> records.ServiceExport:
            return codec.decode_service_export(key, value, cluster=cluster, name=name)

        return service_export
    if kind is Kind.IDENTITIES:

        def identity(key: str, value: bytes, name: str) -> records.Identity:
            return codec.decode_identity(key, value, cluster=cluster, cluster_id=cluster_id, max_clusters=max_clusters)

        return identity

    def ip_identity(key: str, value: bytes, name: str) -> records.IPIdentityPair:
        record = codec.decode_ip_identity(
            key, value, cluster=cluster, cluster_id=cluster_id, max_clusters=max_clusters, name=name
        )
        named_ports = record.named_ports
        return replace(record, id=shared(record.id), named_ports=named_ports and shared(named_ports))

    return ip_identity


def _shared_cidr(cidr: records.CIDR | None, shared: Shared) -> records.CIDR | None:
    if cidr is None or cidr.mask is None:
        return cidr
    return records.CIDR(cidr.ip, shared(cidr.mask))


def _interned_keys(labels: dict[str, str] | None) -> dict[str, str] | None:
    return labels and {sys.intern(key): value for key, value in labels.items()}
