"""A peer's records as they arrive from its etcd: decode, validate, count the bad ones, cache the good ones.

One PeerObserver per (peer, kind) is the watch_store.Observer of that kind's WatchStore. It decodes each value
with the core codec against what the connection knows about the peer (its name, its cluster ID, its
max-connected-clusters), so a record naming another cluster, carrying another ID, an identity outside the
peer's range, or an unparsable IP is rejected. For state (non-cached) identities and ipcache entries the etcd
prefix is shared by every cluster that writes to that etcd; the range check is what keeps only the peer's own.

A rejected record is skipped, counted per peer and per reason (InvalidRecords), and logged once with the
cluster and the key. It never evicts what the cache holds under that name (the last good value stays) and never
stops the watch: peer data is untrusted, and one bad record must not cost the others. Its name is remembered
until its delete (HeldNames), so that a relist does not deliver, and count, an unchanged bad record again.

Cache names are the key minus the watch prefix, as the WatchStore hands them over: the node name,
`<namespace>/<name>`, the identity number, the IP (or `ip/len`). Deletes need no decoding, which keeps them
correct even for keys whose value was rejected. The name is handed to the codec, which then need not parse the
key again (the prefix says whose record of which kind it is).

Memory: an agent holds every record of every peer, so values that repeat across a peer's records are kept once
(Shared): identity numbers (of identities and of the ipcache entries naming them), CIDR masks, and strings from
small vocabularies (the cluster name, node address types and sources, label keys, namespaces). Of an ipcache
entry only what is served is kept (cache.IPCacheEntry). A name is one string, kept once: it is the cache's key,
the store's (HeldNames lends the cache's keys to the store, which keeps no set of its own) and the record's own
name field where it has one (a node's name, an ipcache entry's prefix).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import msgspec

from agent import cache as mesh_cache
from clustermesh import codec, records
from clustermesh.errors import DecodeError
from clustermesh.etcd import watch_store
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


class HeldNames:
    """The names a PeerObserver was handed and not yet told to delete: its kind's cache names for the peer, and
    the names whose record it rejected with nothing cached under them.

    watch_store.Names for the observer's store, which then keeps no set of its own (~30 bytes per entry). The
    observer records names in on_upsert and on_delete, so add and discard do nothing.
    """

    def __init__(self, cache: mesh_cache.MeshCache, kind: Kind, cluster: str) -> None:
        self._cache = cache
        self._kind = kind
        self._cluster = cluster
        self.rejected: set[str] = set()

    def __repr__(self) -> str:
        return f"<HeldNames {self._cluster}:{self._kind.value} held={len(self)} rejected={len(self.rejected)}>"

    def __contains__(self, name: object, /) -> bool:
        if name in self.rejected:
            return True
        return isinstance(name, str) and self._cache.get(self._kind, self._cluster, name) is not None

    def __iter__(self) -> Iterator[str]:
        for _, name, _ in self._cache.items(self._kind, self._cluster):
            yield name
        yield from self.rejected

    def __len__(self) -> int:
        return self._cache.count(self._cluster, self._kind) + len(self.rejected)

    def add(self, name: str, /) -> None:
        pass

    def discard(self, name: str, /) -> None:
        pass


class PeerObserver:
    """Feeds one kind of one peer into the cache. Called from the WatchStore's task; never blocks.

    bind() must be called before the store runs and again whenever the peer's identity is re-read. Fields
    are mutated only from the event loop, by the store's callbacks and the owning connection. `shared` is the
    peer's table of repeated values (one per peer, given to each of its observers; by default its own).
    `names` are the names it holds, to be lent to every store that feeds it.
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
        self._prefix = b""
        self._prefix_text = ""
        self._decode: Decoder | None = None
        self.names = HeldNames(cache, kind, cluster)

    def __repr__(self) -> str:
        return (
            f"<PeerObserver {self.cluster}:{self.kind.value} cached={self._cache.count(self.cluster, self.kind)} "
            f"rejected={len(self.names.rejected)}>"
        )

    def bind(self, *, prefix: bytes, cluster_id: int, max_clusters: int) -> None:
        """Decode keys under prefix as records of a peer with this cluster ID and max-connected-clusters."""
        self._prefix = prefix
        self._prefix_text = prefix.decode()
        self._decode = _decoder(self.kind, self.cluster, cluster_id, max_clusters, self._shared)

    def on_upsert(self, name: str, value: bytes) -> None:
        self.last_event_at = self._clock()
        assert self._decode is not None, "bind() before the store runs"
        if not name.isascii() and not _is_utf8(name):
            self._reject(name, repr(watch_store.key_of(self._prefix, name)), "key is not valid UTF-8")
            return
        try:
            record = self._decode(self._prefix_text + name, value, name)
        except DecodeError as exc:
            self._reject(name, exc.key, exc.reason)
            return
        if self._claims is not None:
            assert isinstance(record, records.Node)
            if not self._claims.claim(name, record):
                self._hold_rejected(name)
                return
        self._cache.upsert(self.kind, self.cluster, name, record)
        rejected = self.names.rejected
        if rejected:
            rejected.discard(name)

    def on_delete(self, name: str) -> None:
        self.last_event_at = self._clock()
        if self._claims is not None:
            self._claims.release(name)
        self._cache.delete(self.kind, self.cluster, name)  # a name never cached (not UTF-8, rejected): nothing
        self.names.rejected.discard(name)

    def on_list_done(self) -> None:
        self._on_listed(self.kind)

    def _reject(self, name: str, key: str, reason: str) -> None:
        self._hold_rejected(name)
        self._invalid.add(self.kind, reason)
        log.warning(
            "event=peer.record.invalid cluster=%s kind=%s key=%s reason=%r",
            self.cluster, self.kind.value, key[:_KEY_LOG_MAX], reason,
        )

    def _hold_rejected(self, name: str) -> None:
        # A name whose last good record is cached is held already (the last good value stays).
        if self._cache.get(self.kind, self.cluster, name) is None:
            self.names.rejected.add(name)


def _is_utf8(name: str) -> bool:
    # The store decodes names with surrogateescape: a key that was not UTF-8 carries lone surrogates.
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _decoder(kind: Kind, cluster: str, cluster_id: int, max_clusters: int, shared: Shared) -> Decoder:
    # Closures rather than functools.partial: a partial with keywords builds a dict on every call.
    intern = sys.intern
    replace = msgspec.structs.replace
    if kind is Kind.NODES:

        def node(key: str, value: bytes, name: str) -> records.Node:
            record = codec.decode_node(key, value, cluster=cluster, cluster_id=cluster_id, name=name)
            return replace(
                record,
                # The name the store and the cache hold: one string rather than a copy per holder.
                name=name if record.name == name else record.name,
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
            record = codec.decode_identity(
                key, value, cluster=cluster, cluster_id=cluster_id, max_clusters=max_clusters
            )
            return replace(record, id=shared(record.id))  # the number its ipcache entries hold

        return identity

    def ip_identity(key: str, value: bytes, name: str) -> mesh_cache.IPCacheEntry:
        record = codec.decode_ip_identity(
            key, value, cluster=cluster, cluster_id=cluster_id, max_clusters=max_clusters, name=name
        )
        prefix = record.prefix_string
        return mesh_cache.IPCacheEntry(
            name if prefix == name else prefix, shared(record.id), record.host_ip, record.key,
            record.k8s_namespace, record.k8s_pod_name,
        )

    return ip_identity


def _shared_cidr(cidr: records.CIDR | None, shared: Shared) -> records.CIDR | None:
    if cidr is None or cidr.mask is None:
        return cidr
    return records.CIDR(cidr.ip, shared(cidr.mask))


def _interned_keys(labels: dict[str, str] | None) -> dict[str, str] | None:
    return labels and {sys.intern(key): value for key, value in labels.items()}
