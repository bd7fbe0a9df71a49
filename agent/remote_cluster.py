"""The connection to one peer cluster: dial its etcd, establish who it is, follow its data, survive its faults.

Owns, for one peer (Cilium's remoteCluster and RemoteCluster.Run, reference §5): the connection loop (mutual
TLS, gRPC keepalive, jittered backoff, failure counts), reading and validating `cilium/cluster-config/<peer>`
and refusing what conflicts, one restartable WatchStore per kind (started on the peer's sync canary when it
publishes canaries), liveness (heartbeat.py), the cache TTL, and the peer's status. What a record means is
peer_observer.py; which IDs and CIDRs are taken is cluster_ids.py; the set of peers is mesh.py.

Each connection ("session"):
  1. Dial. The first response pins the etcd cluster ID; a response from another etcd cluster later raises
     ClusterIDChanged, which ends the session.
  2. Read the cluster config (retrying until config_timeout) and validate it: ID in range, not the local ID,
     not another peer's, maxConnectedClusters equal to ours. A peer whose ID changed is drained first.
  3. Follow: the heartbeat, and each kind's WatchStore once that kind's canary exists (all at once for a peer
     without canaries). Every (re)start marks, relists and sweeps, so deletes missed while disconnected are
     delivered after the relist, and never before the canary says the peer's export is complete. When the
     etcd is not the one read before (another cluster ID, or its revision went backwards: a rebuilt etcd),
     the stores are replaced and the new ones sweep what their first lists do not deliver. Every node's pod
     CIDRs are checked against the local cluster's and the other peers' as it arrives.
  The session ends at the first failure: a watch stream broken by keepalive or by etcd going away, a Status
  probe unanswered within the keepalive timeout (so a hung peer is detected within keepalive interval +
  timeout), a silent heartbeat, a conflict found in the data, a cluster-ID change. Then: backoff, and a new
  session.

A conflict refuses the peer: its entries are drained, its ID and CIDRs released, the reason shown in status,
and it is retried with backoff (its configuration may be fixed). While disconnected the peer's entries are
kept; after cache_ttl of continuous disconnection its services — only its services, as Cilium's RevokeCache
does — are withdrawn: nodes, identities and ipcache entries stay, because deleting them would break
established connections and tunnels, while a service backend in a dead cluster only attracts new
connections that would fail. The relist of the next session brings the services back.

Stop is not remove: cancelling run() keeps every entry (an agent restart must not break the datapath);
remove() drains them. Fields are mutated only by the run() task and its children; status() only reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import socket
import time
from collections.abc import Callable, Iterator

from agent import cache as mesh_cache
from agent import cluster_ids, heartbeat, peer_observer
from agent.peer_status import PeerStatus, SyncState
from clustermesh import codec, errors, keys, records
from clustermesh.aio import backoff
from clustermesh.errors import DecodeError
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch_store
from clustermesh.keys import Kind
from clustermesh.mesh_config import PeerConfig

log = logging.getLogger(__name__)

# Cilium's names for the kinds in status output ("endpoints" are ipcache entries).
_KIND_LABELS = {
    Kind.NODES: "nodes",
    Kind.SERVICES: "services",
    Kind.IDENTITIES: "identities",
    Kind.IPCACHE: "endpoints",
    Kind.SERVICE_EXPORTS: "service-exports",
}
_ALWAYS_WATCHED = (Kind.NODES, Kind.SERVICES, Kind.IDENTITIES, Kind.IPCACHE)
_DEFAULT_MAX_CLUSTERS = 255


@dataclasses.dataclass(frozen=True)
class LocalCluster:
    """The cluster this agent runs in: what peers are checked against."""

    name: str
    cluster_id: int
    max_connected_clusters: int = _DEFAULT_MAX_CLUSTERS
    pod_cidrs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PeerOptions:
    """How peers are watched. Seconds throughout.

    keepalive_*: gRPC keepalive of each peer connection; a hung peer is detected within their sum.
    heartbeat_timeout: None derives it from the peer's observed heartbeat interval (heartbeat.py).
    cache_ttl: after this long disconnected, a peer's services are revoked; 0 keeps them forever.
    config_timeout: how long to wait for a peer's cluster config before the attempt fails (Cilium: 3 min).
    backoff_*: the jittered exponential delay between connection attempts.
    sync_timeout: how long Mesh readiness waits for a peer that neither syncs nor fails (Cilium's
    clustermesh-sync-timeout); the peer keeps trying after it.
    """

    keepalive_interval: float = 5.0
    keepalive_timeout: float = 5.0
    heartbeat_timeout: float | None = None
    cache_ttl: float = 0.0
    config_timeout: float = 180.0
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    sync_timeout: float = 60.0

    def __post_init__(self) -> None:
        positive = ("keepalive_interval", "keepalive_timeout", "config_timeout", "backoff_initial", "sync_timeout")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")
        if self.cache_ttl < 0 or (self.heartbeat_timeout is not None and self.heartbeat_timeout <= 0):
            raise ValueError("cache_ttl must be >= 0 and heartbeat_timeout positive (or None)")


class Phase(enum.Enum):
    """Where a peer's connection loop is."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    WAITING_CONFIG = "waiting for cluster config"
    SYNCING = "synchronizing"
    READY = "ready"
    REFUSED = "refused"
    BACKOFF = "disconnected"


class Refused(errors.ConfigError):
    """Raised when a peer's cluster config or data conflicts with the mesh; the peer is drained and retried."""


class ClusterConfigMissing(errors.ClusterMeshError):
    """Raised when a peer does not publish its cluster config within config_timeout; the attempt is retried."""


class _CanaryGate:
    """Cilium's canary-gated watch start (watchstoremgr.go): a kind's watch waits for the peer's canary.

    The Observer of a WatchStore on `cilium/synced/<peer>/`. A canary's deletion is ignored, as in Cilium:
    a watch, once started, stays started for the session.
    """

    def __init__(self, cluster: str, kinds: tuple[Kind, ...], *, cached: bool) -> None:
        self._events = {kind: asyncio.Event() for kind in kinds}
        prefix = keys.synced_prefix(cluster)
        self._by_name = {
            keys.synced_canary_key(cluster, kind, cached=cached).removeprefix(prefix): kind for kind in kinds
        }

    def on_upsert(self, name: str, value: bytes) -> None:
        kind = self._by_name.get(name)
        if kind is not None:
            self._events[kind].set()

    def on_delete(self, name: str) -> None:
        pass

    def on_list_done(self) -> None:
        pass

    def missing(self) -> list[Kind]:
        """Kinds whose canary has not appeared yet."""
        return [kind for kind, event in self._events.items() if not event.is_set()]

    async def wait(self, kind: Kind) -> None:
        """Return once the canary of kind exists."""
        await self._events[kind].wait()


class _NodeClaims:
    """peer_observer.NodeClaims for one peer: a node is cached only if its pod CIDRs overlap no other cluster's."""

    def __init__(
        self, cluster: str, pod_cidrs: cluster_ids.PodCIDRs, on_conflict: Callable[[str], None]
    ) -> None:
        self._cluster = cluster
        self._pod_cidrs = pod_cidrs
        self._on_conflict = on_conflict

    def claim(self, name: str, node: records.Node) -> bool:
        reason = self._pod_cidrs.claim(self._cluster, name, _pod_prefixes(node))
        if reason is None:
            return True
        self._on_conflict(reason)
        return False

    def release(self, name: str) -> None:
        self._pod_cidrs.release(self._cluster, name)


def _pod_prefixes(node: records.Node) -> tuple[cluster_ids.Prefix, ...]:
    """The pod CIDRs a node allocates from (IPv4/IPv6, primary and secondary); the codec validated them."""
    cidrs = (
        node.ipv4_alloc_cidr,
        node.ipv6_alloc_cidr,
        *(node.ipv4_secondary_alloc_cidrs or ()),
        *(node.ipv6_secondary_alloc_cidrs or ()),
    )
    return tuple(_prefix(cidr) for cidr in cidrs if cidr is not None)


_FAMILIES = {4: (socket.AF_INET, 4), 16: (socket.AF_INET6, 6)}


def _prefix(cidr: records.CIDR) -> cluster_ids.Prefix:
    # What CIDR.network() denotes, without ipaddress: parsing the IP text with it takes 6 us (a third of a
    # node's ingest), inet_pton well under one. The codec checked the mask is contiguous (so its bit count is
    # the prefix length) and of the IP's family; an IP inet_pton does not parse (a zone) takes the reference path.
    mask = cidr.mask or b""
    family, version = _FAMILIES.get(len(mask), (None, 0))
    if family is None:
        return cluster_ids.Prefix.of(cidr.network())
    try:
        packed = socket.inet_pton(family, cidr.ip)
    except (OSError, ValueError):
        return cluster_ids.Prefix.of(cidr.network())
    bits = int.from_bytes(mask)
    return cluster_ids.Prefix(version, int.from_bytes(packed) & bits, bits.bit_count())


class RemoteCluster:
    """One peer: its connection loop, its watches, its validation state and its status.

    Run it with run(); remove() after run() ended drains it. reconfigure() swaps the peer file (between runs)
    without dropping entries: the next session's relist reconciles them. on_synced is called (on the event
    loop, must not block) each time a session has listed every kind, i.e. after every initial sync and relist.
    `channels`: dial through this pool, sharing a connection with peers reached at the same etcd.
    """

    def __init__(
        self,
        config: PeerConfig,
        *,
        local: LocalCluster,
        cache: mesh_cache.MeshCache,
        ids: cluster_ids.ClusterIDs,
        pod_cidrs: cluster_ids.PodCIDRs,
        options: PeerOptions,
        clock: Callable[[], float] = time.monotonic,
        on_synced: Callable[[], None] = lambda: None,
        channels: etcd_client.ChannelPool | None = None,
    ) -> None:
        if config.name == local.name:
            raise ValueError(f"{config.name} is the local cluster, not a peer")
        self.name = config.name
        self.config = config
        self.failures = 0
        self.last_failure_unix = 0.0
        self.last_error = ""
        self.reconnections = 0
        self.refused_reason = ""
        self.revoked = False
        self._local = local
        self._cache = cache
        self._ids = ids
        self._pod_cidrs = pod_cidrs
        self._options = options
        self._clock = clock
        self._on_synced = on_synced
        self._channels = channels
        # Timers (heartbeat expiry, cache TTL) poll the injected clock at this period, so a test clock that
        # jumps ahead takes effect within one tick.
        self._tick = min(1.0, max(0.05, options.keepalive_interval / 4))
        self._invalid = peer_observer.InvalidRecords()
        claims = _NodeClaims(self.name, pod_cidrs, self._on_conflict)
        shared = peer_observer.Shared()
        self._observers = {
            kind: peer_observer.PeerObserver(
                kind,
                cluster=self.name,
                cache=cache,
                invalid=self._invalid,
                clock=clock,
                on_listed=self._on_listed,
                node_claims=claims if kind is Kind.NODES else None,
                shared=shared,
            )
            for kind in Kind
        }
        self._stores: dict[Kind, watch_store.WatchStore] = {}
        self._heartbeat = heartbeat.Heartbeat(
            cluster=self.name,
            clock=clock,
            timeout=options.heartbeat_timeout,
            floor=options.keepalive_interval + options.keepalive_timeout,
            tick=self._tick,
        )
        self._backoff = self._new_backoff()
        self._phase = Phase.STOPPED
        self._running = False
        self._ready: asyncio.Event | None = None
        self._settled = False
        self._synced_once = False
        # The current session (None / empty between sessions).
        self._client: etcd_client.EtcdClient | None = None
        self._config_retrieved = False
        self._kinds: tuple[Kind, ...] = ()
        self._listed: set[Kind] = set()
        self._gate: _CanaryGate | None = None
        self._synced: asyncio.Event | None = None
        self._conflicted: asyncio.Event | None = None
        self._conflict = ""
        # Across sessions.
        self._endpoint = ""
        self._etcd_cluster_id = 0
        self._cluster_config: records.ClusterConfig | None = None
        self._cluster_id = 0  # reserved in ClusterIDs while non-zero
        self._disconnected_since: float | None = None
        # Set when a node's pod CIDRs overlapped another cluster's; cleared once a check finds none.
        self._cidr_conflict = False

    def __repr__(self) -> str:
        counts = "/".join(str(self._cache.count(self.name, kind)) for kind in _ALWAYS_WATCHED)
        return (
            f"<RemoteCluster {self.name} phase={self._phase.value} cluster_id={self._cluster_id} "
            f"entries={counts} failures={self.failures} revoked={self.revoked}>"
        )

    @property
    def settled(self) -> bool:
        """True once the first attempt had an outcome (ready, refused, failed) or sync_timeout passed."""
        return self._settled

    @property
    def synced_once(self) -> bool:
        """True once every watched kind completed an initial list; stays true across reconnects."""
        return self._synced_once

    # --- lifecycle --------------------------------------------------------------------------------------

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Connect, follow, reconnect, until cancelled; never returns otherwise.

        Sets `ready` once settled (see `settled`), so a caller never waits forever on a dead peer. Failures
        are retried here, with backoff; only a bug escapes. Cancellation stops every watch and closes the
        connection but keeps the cached entries. RuntimeError if already running.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        self._ready = ready
        self._settled = False
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._connection_loop(), name=f"connect {self.name}")
                group.create_task(self._expire_services(), name=f"cache ttl {self.name}")
                group.create_task(self._settle_after_timeout(), name=f"sync timeout {self.name}")
        finally:
            self._running = False
            self._ready = None
            self._phase = Phase.STOPPED

    def reconfigure(self, config: PeerConfig) -> None:
        """Use a new peer file from the next run() on; entries are kept. Only while not running.

        The next run() re-dials, so it counts as a reconnection (status and metrics), as a drop would.
        """
        if self._running:
            raise RuntimeError(f"cannot reconfigure {self!r} while it runs; cancel run() first")
        if config.name != self.name:
            raise ValueError(f"config of {config.name} given to peer {self.name}")
        self.config = config
        self.reconnections += 1

    def remove(self) -> int:
        """Drain every entry of the peer and release its cluster ID and pod CIDRs; only while not running.

        Returns how many cache entries were deleted. Idempotent.
        """
        if self._running:
            raise RuntimeError(f"cannot remove {self!r} while it runs; cancel run() first")
        drained = self._drain_all()
        self._release_id()
        log.info("event=peer.removed cluster=%s drained=%d", self.name, drained)
        return drained

    # --- the connection loop ------------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        while True:
            try:
                await self._session()
            except Refused as exc:
                self._refuse(str(exc))
            except errors.ClusterMeshError as exc:
                self._fail(exc)
            self._settle()
            delay = self._backoff.next_delay()
            log.debug("event=peer.reconnect.scheduled cluster=%s delay=%.2f", self.name, delay)
            await asyncio.sleep(delay)
            self.reconnections += 1

    async def _session(self) -> None:
        """One connection, from dial to its first failure (raised)."""
        self._phase = Phase.CONNECTING
        options = self._options
        config = dataclasses.replace(
            self.config.etcd,
            keepalive_time=options.keepalive_interval,
            keepalive_timeout=options.keepalive_timeout,
            initial_reconnect_backoff=options.backoff_initial,
            max_reconnect_backoff=options.backoff_max,
        )
        # Until the Status probe runs (in _follow), every call is bounded like it: a peer that hangs while we
        # dial or wait for its config is noticed as fast as one that hangs later.
        bound = options.keepalive_interval + options.keepalive_timeout
        client = await etcd_client.EtcdClient.connect(config, timeout=bound, channels=self._channels)
        self._client = client
        self._endpoint = client.endpoint
        try:
            status = await client.status(timeout=bound)
            log.info(
                "event=peer.connected cluster=%s endpoint=%s etcd_cluster_id=%x version=%s",
                self.name, client.endpoint, client.cluster_id, status.version,
            )
            cluster_config = await self._read_cluster_config(client)
            self._accept(cluster_config, client, status.revision)
            if self._cidr_conflict:
                await self._check_pod_cidrs(client)
            await self._follow(client, cluster_config)
        finally:
            self._client = None
            self._config_retrieved = False
            self._listed = set()
            self._gate = None
            await _close(client)

    async def _read_cluster_config(self, client: etcd_client.EtcdClient) -> records.ClusterConfig:
        # Polled with its own backoff rather than failing the connection: a peer's apiserver (or KVStoreMesh)
        # writes the config shortly after its etcd starts, and a re-dial would only add load (Cilium does the
        # same in getClusterConfig).
        self._phase = Phase.WAITING_CONFIG
        key = keys.cluster_config_key(self.name)
        retry = self._new_backoff()
        name_checked = False
        try:
            async with asyncio.timeout(self._options.config_timeout):
                bound = self._options.keepalive_interval + self._options.keepalive_timeout
                while (kv := await client.get(key.encode(), timeout=bound)) is None:
                    if not name_checked:
                        name_checked = True
                        await self._check_name(client)
                    await retry.wait()
        except TimeoutError:
            raise ClusterConfigMissing(
                f"{key} not found within {self._options.config_timeout:g}s (hint: if KVStoreMesh is enabled, "
                "check that it is connected to this peer; check that the file name is the peer's cluster name)"
            ) from None
        try:
            cluster_config = codec.decode_cluster_config(key, kv.value, cluster=self.name)
        except DecodeError as exc:
            raise Refused(f"invalid cluster config: {exc.reason}") from None
        self._cluster_config = cluster_config
        self._config_retrieved = True
        return cluster_config

    async def _check_name(self, client: etcd_client.EtcdClient) -> None:
        """Refuse early when the etcd plainly belongs to another cluster (the peer file is misnamed).

        Best effort: a least-privilege reader may list only its own key, and a KVStoreMesh cache (configs
        marked `cached`) may simply not have this peer yet; either way the caller keeps waiting.
        """
        try:
            listed = await client.list_prefix(keys.subtree_prefix(keys.CLUSTER_CONFIG_PREFIX).encode())
        except errors.PermissionDenied:
            return
        others = []
        for kv in listed.kvs:
            parsed = keys.parse_key(kv.key.decode(errors="replace"))
            if parsed is None or parsed.cluster is None or parsed.cluster in (self.name, self._local.name):
                continue
            try:
                other = codec.decode_cluster_config(kv.key.decode(), kv.value, cluster=parsed.cluster)
            except DecodeError:
                continue
            if other.capabilities.cached:
                return
            others.append(parsed.cluster)
        if others:
            raise Refused(
                f"cluster name mismatch: the etcd at {client.endpoint} publishes the cluster config of "
                f"{', '.join(sorted(others))}, not of {self.name}; name the mesh-config file after the peer's "
                "cluster"
            )

    def _accept(self, cluster_config: records.ClusterConfig, client: etcd_client.EtcdClient, revision: int) -> None:
        """Validate the peer's config against the mesh, reserve its ID, and prepare the stores; or Refused."""
        local_max = self._local.max_connected_clusters
        peer_max = cluster_config.capabilities.max_connected_clusters
        # Cilium only compares in extended mode (a peer predating the field implies 255); a peer advertising
        # another value numbers its identities differently, so it is refused in either mode.
        if (peer_max or _DEFAULT_MAX_CLUSTERS) != local_max:
            raise Refused(f"mismatched MaxConnectedClusters; local={local_max}, remote={peer_max}")
        if self._cluster_id and cluster_config.id != self._cluster_id:
            drained = self._drain_all()
            log.warning(
                "event=peer.cluster_id.changed cluster=%s old=%d new=%d drained=%d",
                self.name, self._cluster_id, cluster_config.id, drained,
            )
            self._release_id()
        try:
            self._ids.reserve(self.name, cluster_config.id)
        except cluster_ids.Conflict as exc:
            raise Refused(str(exc)) from None
        self._cluster_id = cluster_config.id
        self.refused_reason = ""
        self._prepare_stores(cluster_config, client, revision)

    def _prepare_stores(
        self, cluster_config: records.ClusterConfig, client: etcd_client.EtcdClient, revision: int
    ) -> None:
        capabilities = cluster_config.capabilities
        kinds: tuple[Kind, ...] = _ALWAYS_WATCHED
        # A peer predating MCS-API support (serviceExportsEnabled absent) publishes no exports nor canary.
        if capabilities.service_exports_enabled is not None:
            kinds = (*kinds, Kind.SERVICE_EXPORTS)
        known_revision = max((store.revision for store in self._stores.values()), default=0)
        new_history = bool(self._etcd_cluster_id) and (
            client.cluster_id != self._etcd_cluster_id or revision < known_revision
        )
        if new_history:
            log.info(
                "event=peer.resync cluster=%s reason=%r", self.name,
                f"etcd cluster {self._etcd_cluster_id:x} rev {known_revision} is now "
                f"{client.cluster_id:x} rev {revision}",
            )
        self._etcd_cluster_id = client.cluster_id
        for kind in Kind:
            observer = self._observers[kind]
            store = self._stores.get(kind)
            if kind not in kinds:
                if store is not None:
                    store.drain()
                    del self._stores[kind]
                continue
            prefix = keys.watch_prefix(kind, self.name, cached=capabilities.cached).encode()
            observer.bind(prefix=prefix, cluster_id=cluster_config.id, max_clusters=self._local.max_connected_clusters)
            if store is None or store.prefix != prefix or new_history:
                # The old store's revisions mean nothing in the new history (or prefix): a new store, at
                # revision 0, delivers every key of its first list again and sweeps the cached names it does
                # not return (they are its names too: the observer lends them).
                self._stores[kind] = watch_store.WatchStore(
                    client, prefix, observer, name=f"{self.name}:{kind.value}", retry=self._new_backoff(),
                    names=observer.names,
                )
            else:
                # The store keeps what it delivered, so its relist sends only the differences.
                store.client = client
        self._kinds = kinds

    async def _check_pod_cidrs(self, client: etcd_client.EtcdClient) -> None:
        # Only on a retry after an overlap: the node observer checks every node as it arrives and refuses the
        # peer on the first overlap, but by then other entries may be cached (and are drained). Checking the
        # listed nodes before any watch starts keeps a peer that still overlaps from flapping in and out of
        # the cache at every retry, without decoding every node twice on ordinary connections.
        listed = await client.list_prefix(self._stores[Kind.NODES].prefix)
        for kv in listed.kvs:
            try:
                node = codec.decode_node(kv.key.decode(), kv.value, cluster=self.name, cluster_id=self._cluster_id)
            except (DecodeError, UnicodeDecodeError):
                continue  # counted and logged by the observer when the watch delivers it
            reason = self._pod_cidrs.conflict(self.name, _pod_prefixes(node))
            if reason is not None:
                raise Refused(f"{reason} (node {node.name})")
        self._cidr_conflict = False

    async def _follow(self, client: etcd_client.EtcdClient, cluster_config: records.ClusterConfig) -> None:
        capabilities = cluster_config.capabilities
        self._listed = set()
        self._conflict = ""
        self._synced = asyncio.Event()
        self._conflicted = asyncio.Event()
        gate = _CanaryGate(self.name, self._kinds, cached=capabilities.cached) if capabilities.synced_canaries else None
        self._gate = gate
        self._phase = Phase.SYNCING
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._heartbeat.run(client), name=f"heartbeat {self.name}")
                group.create_task(self._probe(client), name=f"probe {self.name}")
                if gate is not None:
                    canaries = watch_store.WatchStore(
                        client, keys.synced_prefix(self.name).encode(), gate,
                        name=f"{self.name}:canaries", retry=self._new_backoff(),
                    )
                    group.create_task(canaries.run(), name=f"watch {self.name}:canaries")
                for kind in self._kinds:
                    group.create_task(self._watch(kind, gate), name=f"watch {self.name}:{kind.value}")
                group.create_task(self._until_conflict(self._conflicted), name=f"conflicts {self.name}")
                group.create_task(self._until_synced(self._synced), name=f"synced {self.name}")
        except BaseExceptionGroup as group_error:
            primary = _primary(group_error)
            if primary is None:
                raise
            raise primary from None

    async def _probe(self, client: etcd_client.EtcdClient) -> None:
        # gRPC keepalive breaks the streams of a dead transport, but it checks only the hop it talks to: a
        # proxy terminating HTTP/2 in front of etcd answers its pings while etcd hangs. A Status call every
        # keepalive interval, with the keepalive timeout as deadline, bounds detection end to end.
        while True:
            await asyncio.sleep(self._options.keepalive_interval)
            await client.status(timeout=self._options.keepalive_timeout)

    async def _watch(self, kind: Kind, gate: _CanaryGate | None) -> None:
        if gate is not None:
            await gate.wait(kind)
        await self._stores[kind].run()

    async def _until_conflict(self, conflicted: asyncio.Event) -> None:
        await conflicted.wait()
        raise Refused(self._conflict)

    async def _until_synced(self, synced: asyncio.Event) -> None:
        await synced.wait()
        self._phase = Phase.READY
        self._synced_once = True
        self._backoff.reset()
        log.info(
            "event=peer.ready cluster=%s cluster_id=%d %s", self.name, self._cluster_id,
            " ".join(f"{_KIND_LABELS[kind]}={self._cache.count(self.name, kind)}" for kind in self._kinds),
        )
        self._settle()
        self._on_synced()

    # --- callbacks from the observers (event loop, inside a session) ---------------------------------------

    def _on_listed(self, kind: Kind) -> None:
        self._listed.add(kind)
        if kind is Kind.SERVICES:
            self._disconnected_since = None
            if self.revoked:
                self.revoked = False
                log.info("event=peer.restored cluster=%s kind=services", self.name)
        if self._synced is not None and self._listed.issuperset(self._kinds):
            self._synced.set()

    def _on_conflict(self, reason: str) -> None:
        self._cidr_conflict = True
        if self._conflicted is not None and not self._conflict:
            self._conflict = reason
            self._conflicted.set()

    # --- outcomes ---------------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        self._count_failure(f"refused: {reason}")
        drained = self._drain_all()
        self._release_id()
        self._phase = Phase.REFUSED
        if reason != self.refused_reason:
            log.warning("event=peer.refused cluster=%s reason=%r drained=%d", self.name, reason, drained)
        self.refused_reason = reason

    def _fail(self, exc: errors.ClusterMeshError) -> None:
        self._count_failure(str(exc))
        self._phase = Phase.BACKOFF
        if self._disconnected_since is None:
            self._disconnected_since = self._clock()
        log.warning(
            "event=peer.disconnected cluster=%s error=%s reason=%r failures=%d",
            self.name, type(exc).__name__, str(exc), self.failures,
        )

    def _count_failure(self, error: str) -> None:
        self.failures += 1
        self.last_failure_unix = time.time()
        self.last_error = error

    def _settle(self) -> None:
        if not self._settled:
            self._settled = True
            if self._ready is not None:
                self._ready.set()

    async def _settle_after_timeout(self) -> None:
        await asyncio.sleep(self._options.sync_timeout)
        if not self._settled:
            log.warning(
                "event=peer.sync_timeout cluster=%s timeout=%g status=%r",
                self.name, self._options.sync_timeout, self._status_text(),
            )
            self._settle()

    async def _expire_services(self) -> None:
        ttl = self._options.cache_ttl
        if ttl <= 0:
            return
        delay = self._tick
        while True:
            await asyncio.sleep(delay)
            delay = self._tick
            since = self._disconnected_since
            if since is None or self.revoked:
                continue
            remaining = since + ttl - self._clock()
            if remaining > 0:
                # Wake at the TTL itself rather than up to a tick after it (a jumping test clock is still seen
                # within a tick).
                delay = min(self._tick, remaining)
                continue
            store = self._stores.get(Kind.SERVICES)
            # A running store is relisting right now: its list, not the TTL, decides what stays.
            if store is None or store.state not in (watch_store.State.IDLE, watch_store.State.STOPPED):
                continue
            before = self._cache.count(self.name, Kind.SERVICES)
            store.drain()
            self.revoked = True
            log.warning(
                "event=peer.revoked cluster=%s kind=services entries=%d disconnected_for=%.1f ttl=%g",
                self.name, before, self._clock() - since, ttl,
            )

    def _drain_all(self) -> int:
        before = sum(self._cache.count(self.name, kind) for kind in Kind)
        # The stores hold every cached name (their observers lend them), so draining them deletes everything.
        for store in self._stores.values():
            store.drain()
        # This drops the peer's (now empty) slot from the cache.
        self._cache.drain(self.name)
        self._pod_cidrs.release_cluster(self.name)
        return before

    def _release_id(self) -> None:
        self._ids.release(self.name)
        self._cluster_id = 0

    def _new_backoff(self) -> backoff.Backoff:
        return backoff.Backoff(initial=self._options.backoff_initial, maximum=self._options.backoff_max)

    # --- status -----------------------------------------------------------------------------------------

    def status(self) -> PeerStatus:
        """A snapshot of the peer's connection, sync state, counts and failures."""
        now = self._clock()
        cluster_config = self._cluster_config
        capabilities = cluster_config.capabilities if cluster_config else records.Capabilities()
        listed = self._listed
        seen = [observer.last_event_at for observer in self._observers.values()]
        seen.append(self._heartbeat.last_change)
        last_event = max((moment for moment in seen if moment is not None), default=None)
        count = self._cache.count
        return PeerStatus(
            name=self.name,
            connected=self._client is not None,
            ready=self._phase is Phase.READY,
            cluster_id=cluster_config.id if cluster_config else 0,
            config_retrieved=self._config_retrieved,
            kvstoremesh=capabilities.cached,
            sync_canaries=capabilities.synced_canaries,
            synced=SyncState(
                nodes=Kind.NODES in listed,
                services=Kind.SERVICES in listed,
                identities=Kind.IDENTITIES in listed,
                endpoints=Kind.IPCACHE in listed,
                service_exports=Kind.SERVICE_EXPORTS in listed,
            ),
            num_nodes=count(self.name, Kind.NODES),
            num_endpoints=count(self.name, Kind.IPCACHE),
            num_identities=count(self.name, Kind.IDENTITIES),
            num_services=count(self.name, Kind.SERVICES),
            num_service_exports=count(self.name, Kind.SERVICE_EXPORTS),
            failures=self.failures,
            last_failure_unix=self.last_failure_unix,
            last_error=self.last_error,
            last_event_age_seconds=-1.0 if last_event is None else max(0.0, now - last_event),
            status=self._status_text(),
            etcd_endpoint=self._endpoint or ",".join(self.config.etcd.endpoints),
            etcd_cluster_id=f"{self._etcd_cluster_id:x}" if self._etcd_cluster_id else "",
            revoked=self.revoked,
            invalid_records=self._invalid.total,
            reconnections=self.reconnections,
            refused_reason=self.refused_reason,
            heartbeat_age_seconds=self._heartbeat.age(),
            invalid_by_reason=self._invalid.by_reason(),
        )

    def _status_text(self) -> str:
        phase = self._phase
        if phase is Phase.SYNCING:
            waiting = self._gate.missing() if self._gate is not None else []
            if waiting:
                text = "waiting for sync canaries: " + ", ".join(_KIND_LABELS[kind] for kind in waiting)
            else:
                pending = [_KIND_LABELS[kind] for kind in self._kinds if kind not in self._listed]
                text = "synchronizing: " + ", ".join(pending)
        elif phase is Phase.WAITING_CONFIG:
            text = f"waiting for cluster config {keys.cluster_config_key(self.name)}"
        elif phase is Phase.CONNECTING:
            text = f"connecting to {', '.join(self.config.etcd.endpoints)}"
        elif phase is Phase.REFUSED:
            text = f"refused: {self.refused_reason}"
        elif phase is Phase.BACKOFF:
            text = f"disconnected: {self.last_error}; reconnecting"
        else:
            text = phase.value
        if self.revoked:
            text += "; services revoked (cache TTL expired)"
        return text


_PRIORITY: tuple[type[errors.ClusterMeshError], ...] = (
    Refused, errors.ClusterIDChanged, heartbeat.HeartbeatLost,
)


def _primary(group: BaseExceptionGroup[BaseException]) -> errors.ClusterMeshError | None:
    """The failure that ended a session, most telling first; None if the group holds anything unexpected."""
    leaves = list(_leaves(group))
    failures = [exc for exc in leaves if isinstance(exc, errors.ClusterMeshError)]
    if len(failures) != len(leaves):
        return None
    for kind in _PRIORITY:
        for exc in failures:
            if isinstance(exc, kind):
                return exc
    return failures[0]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _close(client: etcd_client.EtcdClient) -> None:
    """Close the client and wait for it, even if cancelled again meanwhile (the channel must not leak)."""
    closing = asyncio.ensure_future(client.close())
    cancelled = False
    while not closing.done():
        try:
            await asyncio.wait({closing})
        except asyncio.CancelledError:
            cancelled = True
    closing.result()
    if cancelled:
        raise asyncio.CancelledError

