"""The publisher: Kubernetes source events → wire records → one SyncStore per kind in the cluster's etcd.

Start-up order (reference §2.3, §7; DESIGN.md "Publishing semantics"):

1. List what etcd already holds under each of our prefixes, plus our cluster config and canaries. Leases
   still alive are adopted (LeasePool.adopt), keys on them primed into their store (SyncStore.prime), and
   identities seeded into the allocator: a restart rewrites nothing that did not change, and keeps every
   identity number. (The lease id is thus kept in etcd: it is each key's lease.)
2. Write the cluster config (ClusterConfigEnforcer), before any data.
3. Run the source. While its initial state arrives, what no object still to come changes is converted and
   written at once (Inventory.take_settled: nodes, and pods whose Namespace and Node have been seen), so
   that etcd writes while the source is still being read; at SYNCED the rest is converted and written,
   primed keys that are no longer wanted are deleted, and every store is marked synced: each writes its
   canary once its keys have landed. The publisher is ready when every canary is written.

   Identity numbers are thus handed out as label sets appear (sorted within each round of events), as
   Cilium's own allocator does, not in sorted order over the whole initial state: a fresh cluster's numbers
   depend on the order its objects arrive in. Nothing relies on that order: a restart seeds every number
   from etcd (step 1) and so rewrites nothing, whatever the order, and peers read numbers, not label order.
   Numbering only at SYNCED kept every ipcache write (each names its identity's number) until the whole
   source had been read and parsed, with etcd idle meanwhile.
4. After that, each batch of events is converted and written incrementally; unchanged records cause no
   write (the stores skip values etcd already holds). Unused identities are released after their grace
   period, checked on the identity GC tick.

Heartbeat and the periodic cluster-config check run alongside. All state is mutated by the one task that
runs _publish (events, ticks); the stores and the lease pool do the I/O in their own tasks. Stopping never
revokes a lease: keys stay until their lease runs out, so a restart within the TTL finds them in place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import logging
import time
from typing import NamedTuple

from apiserver import clock as clock_module
from apiserver import cluster_config, endpoints, heartbeat, identities, inventory, nodes, service_exports, services
from clustermesh import codec, errors, identity, keys, kube
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease
from clustermesh.etcd import sync_store
from clustermesh.keys import Kind

log = logging.getLogger(__name__)

KINDS = (Kind.NODES, Kind.SERVICES, Kind.SERVICE_EXPORTS, Kind.IDENTITIES, Kind.IPCACHE)
"""The kinds a cluster exports, each with its own prefix, store and canary."""

KIND_NAMES = {
    Kind.NODES: "nodes",
    Kind.SERVICES: "services",
    Kind.SERVICE_EXPORTS: "serviceexports",
    Kind.IDENTITIES: "identities",
    Kind.IPCACHE: "ipcache",
}
"""How status, metrics and logs name each exported kind."""

SOURCE_KINDS = tuple(kube.Kind)
"""The Kubernetes kinds the publisher reads."""

# How many queued source items one publishing round takes at most: large enough to amortise a round's
# fixed cost, small enough that a burst does not delay the first writes for long.
_BATCH = 4096
# Pods converted between two yields to the event loop during a large round (the initial sync). A yield is one
# turn of the loop, and a store's transaction needs several (start, send, reap), so yielding rarely leaves etcd
# idle until the conversion ends: at 50,000 pods, yielding every 1,024 left 94% of the ipcache queued then,
# every 64 (~0.5 ms of conversion) 45%, while etcd wrote the rest as we computed. An idle turn costs ~2 us.
_YIELD_EVERY = 64


@dataclasses.dataclass(frozen=True)
class Options:
    """What the publisher publishes and how; user-facing validation happens in apiserver.config."""

    cluster: str
    cluster_id: int
    max_clusters: int = identity.ClusterIDMode.DEFAULT
    lease_ttl: int = 900
    """Seconds; Cilium's default (--kvstore-lease-ttl 15m). A crash longer than this re-publishes everything."""
    heartbeat_interval: float = heartbeat.DEFAULT_INTERVAL
    cluster_config_interval: float = cluster_config.DEFAULT_INTERVAL
    identity_grace: float = 900.0
    """Seconds an identity is kept after its last pod went away."""
    identity_gc_interval: float = 60.0
    default_global_namespace: bool = True
    queue_size: int = 1024


class KindStatus(NamedTuple):
    """How far the export of one kind has got."""

    kind: Kind
    name: str
    synced: bool
    keys: int
    pending: int
    puts: int
    deletes: int
    failures: int
    last_error: str


class _Tick(enum.Enum):
    IDENTITY_GC = "identity-gc"


class _Flush(NamedTuple):
    done: asyncio.Future[None]


def _now_timestamp() -> bytes:
    return codec.encode_timestamp(datetime.datetime.now(datetime.UTC))


class Publisher:
    """Publishes one cluster's objects from `source` into etcd; see the module docstring. One run() at a time."""

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        source: kube.Source,
        options: Options,
        *,
        clock: clock_module.Clock | None = None,
    ) -> None:
        self.client = client
        self.source = source
        self.options = options
        self.clock = clock or clock_module.SystemClock()
        self.leases = etcd_lease.LeasePool(client, ttl=options.lease_ttl)
        self.stores = {
            kind: sync_store.SyncStore(
                client,
                self.leases,
                prefix=keys.watch_prefix(kind, options.cluster, cached=False).encode(),
                canary=(keys.synced_canary_key(options.cluster, kind).encode(), _now_timestamp),
                name=KIND_NAMES[kind],
            )
            for kind in KINDS
        }
        self.allocator = identities.IdentityAllocator(
            client,
            self.leases,
            cluster_id=options.cluster_id,
            max_clusters=options.max_clusters,
            clock=self.clock,
            grace=options.identity_grace,
        )
        self.inventory = inventory.Inventory(
            cluster=options.cluster,
            cluster_id=options.cluster_id,
            default_global_namespace=options.default_global_namespace,
        )
        self.cluster_config = cluster_config.ClusterConfigEnforcer(
            client,
            self.leases,
            cluster=options.cluster,
            config=cluster_config.record(cluster_id=options.cluster_id, max_clusters=options.max_clusters),
            interval=options.cluster_config_interval,
        )
        self.heartbeat = heartbeat.Heartbeat(client, self.leases, interval=options.heartbeat_interval)
        self.ready = asyncio.Event()
        """Set once every kind's canary is written (the initial sync is complete)."""
        self.source_synced = False
        self.bootstrap_seconds = 0.0
        self._queue: asyncio.Queue[kube.SourceItem | _Tick | _Flush] = asyncio.Queue(options.queue_size)
        # What we want in etcd, by kind (keys only: the stores hold the values).
        self._published: dict[Kind, set[bytes]] = {kind: set() for kind in KINDS}
        # Keys found in etcd at start and primed, until the initial sync decides which stay.
        self._primed: dict[Kind, set[bytes]] = {kind: set() for kind in KINDS}
        # Per pod: the label string whose identity it holds, and its encoded ipcache entries by IP (the
        # stores hold the same bytes objects for the entries written).
        self._pod_labels: dict[inventory.Ref, str] = {}
        self._pod_entries: dict[inventory.Ref, dict[str, bytes]] = {}
        # Pods claiming each IP, in arrival order: the first one's entry is published (Cilium keeps the
        # primary entry until it is deleted).
        self._ip_owners: dict[str, list[inventory.Ref]] = {}
        self._running = False

    def __repr__(self) -> str:
        counts = " ".join(f"{KIND_NAMES[kind]}={len(names)}" for kind, names in self._published.items())
        return f"<Publisher {self.options.cluster} ready={self.ready.is_set()} {counts}>"

    # --- status ---------------------------------------------------------------------------------------

    def kind_status(self) -> list[KindStatus]:
        """One entry per exported kind, in KINDS order."""
        return [
            KindStatus(
                kind=kind,
                name=KIND_NAMES[kind],
                synced=store.synced.is_set(),
                keys=len(self._published[kind]),
                pending=store.pending,
                # Identities are created by the allocator's own transactions, then kept up by the store.
                puts=store.puts + (self.allocator.created if kind is Kind.IDENTITIES else 0),
                deletes=store.deletes,
                failures=store.failures,
                last_error=store.last_error,
            )
            for kind, store in self.stores.items()
        ]

    @property
    def invalid_objects(self) -> int:
        """Source objects skipped because they could not be converted."""
        return sum(self.inventory.invalid.values())

    def pod_cidrs(self) -> list[str]:
        """The cluster's pod CIDRs: those of its nodes, sorted."""
        return sorted({cidr for node in self.inventory.nodes.values() for cidr in nodes.pod_cidrs(node)})

    # --- lifecycle ------------------------------------------------------------------------------------

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Publish until cancelled; sets `ready` (and self.ready) once every canary is written.

        etcd errors are retried (with backoff) and never raised; a source that fails (e.g. its manifest
        directory is gone) ends run() with its error. Cancellation stops every task and waits for them;
        leases are not revoked. RuntimeError if already running.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        started = time.monotonic()
        try:
            await self._start()
            async with asyncio.TaskGroup() as group:
                group.create_task(self.leases.run(), name="lease keepalive")
                for kind, store in self.stores.items():
                    group.create_task(store.run(), name=f"sync {KIND_NAMES[kind]}")
                group.create_task(self.cluster_config.run(), name="cluster-config enforce")
                group.create_task(self.heartbeat.run(), name="heartbeat")
                group.create_task(self.source.run(self._queue.put), name=f"source {self.source!r}")
                group.create_task(self._tick(), name="identity gc tick")
                group.create_task(self._publish(started, ready), name="publish")
        finally:
            self._running = False

    async def _start(self) -> None:
        """Steps 1 and 2 of the module docstring, retried until etcd answers."""
        retry = backoff.Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                await self._load_existing()
                await self.cluster_config.enforce()
                return
            except errors.StoreError as exc:
                log.warning("event=publisher.start.failed reason=%s", exc)
                await retry.wait()

    async def _load_existing(self) -> None:
        # All reads first: if one fails, the retry starts from a clean slate.
        listed = {kind: (await self.client.list_prefix(store.prefix or b"")).kvs for kind, store in self.stores.items()}
        ours = [kv for kvs in listed.values() for kv in kvs]
        ours.extend((await self.client.list_prefix(keys.synced_prefix(self.options.cluster).encode())).kvs)
        config = await self.client.get(self.cluster_config.key)
        if config is not None:
            ours.append(config)
        by_lease: dict[int, list[bytes]] = {}
        for kv in ours:
            if kv.lease:
                by_lease.setdefault(kv.lease, []).append(kv.key)
        alive = {lease for lease in by_lease if await self.client.lease_ttl(lease) > 0}

        for lease in sorted(alive):
            self.leases.adopt(lease, by_lease[lease])
        for kind, kvs in listed.items():
            leased = [kv for kv in kvs if kv.lease in alive]
            self.stores[kind].prime(leased)
            self._primed[kind] = {kv.key for kv in leased}
        for kv in listed[Kind.IDENTITIES]:
            try:
                found = codec.decode_identity(
                    kv.key.decode(),
                    kv.value,
                    cluster=self.options.cluster,
                    cluster_id=self.options.cluster_id,
                    max_clusters=self.options.max_clusters,
                )
            except errors.DecodeError as exc:
                log.warning("event=identity.ignored key=%s reason=%s", kv.key.decode(errors="replace"), exc.reason)
                continue
            if not self.allocator.seed(found):
                log.warning("event=identity.ignored key=%s reason=duplicate", kv.key.decode())
        log.info(
            "event=publisher.listed %s leases_adopted=%d leases_expired=%d seeded=%d",
            " ".join(f"{KIND_NAMES[kind]}={len(kvs)}" for kind, kvs in listed.items()),
            len(alive),
            len(by_lease) - len(alive),
            len(self.allocator),
        )

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(self.options.identity_gc_interval)
            await self._queue.put(_Tick.IDENTITY_GC)

    async def flush(self) -> None:
        """Wait until the events delivered so far are converted and their writes have landed in etcd.

        Only while run() runs. Before the source's initial sync only what can be published early is (see the
        module docstring, step 3): the rest waits for SYNCED, and this does not wait for it.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Flush(done))
        await done
        await asyncio.gather(*(store.flush() for store in self.stores.values()))

    async def _publish(self, started: float, ready: asyncio.Event | None) -> None:
        while True:
            gc_due = False
            flushes: list[asyncio.Future[None]] = []
            debug = log.isEnabledFor(logging.DEBUG)
            for item in await self._take_batch():
                if item is kube.SYNCED:
                    self.source_synced = True
                    log.info("event=source.synced objects=%d", sum(self.inventory.events.values()))
                elif isinstance(item, _Tick):
                    gc_due = True
                elif isinstance(item, _Flush):
                    flushes.append(item.done)
                else:
                    if debug:
                        log.debug("event=source.%s object=%s", item.type.value, item.key)
                    self.inventory.apply(item)
            if not self.source_synced:
                await self._publish_settled()
            else:
                await self._reconcile()
                if not self.ready.is_set():
                    await self._complete_initial_sync(started)
                    if ready is not None:
                        ready.set()
                elif gc_due:
                    self._expire_identities()
            for done in flushes:
                if not done.done():
                    done.set_result(None)

    async def _take_batch(self) -> list[kube.SourceItem | _Tick | _Flush]:
        batch = [await self._queue.get()]
        while len(batch) < _BATCH and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _complete_initial_sync(self, started: float) -> None:
        for found in self.allocator.identities():
            # Seeded identities not on a live lease are re-put with one; the rest are skipped as unchanged.
            self._put(Kind.IDENTITIES, keys.identity_key(found.id).encode(), codec.encode(found))
        for kind, primed in self._primed.items():
            for key in primed - self._published[kind]:
                self.stores[kind].delete(key)
        self._primed = {}
        for store in self.stores.values():
            store.mark_synced()
        # Later events wait: an identity created while a store sweeps could be swept as a leftover.
        await asyncio.gather(*(store.synced.wait() for store in self.stores.values()))
        self.bootstrap_seconds = time.monotonic() - started
        self.ready.set()
        log.info(
            "event=publisher.ready bootstrap_seconds=%.3f %s",
            self.bootstrap_seconds,
            " ".join(f"{KIND_NAMES[kind]}={len(names)}" for kind, names in self._published.items()),
        )

    # --- conversion -----------------------------------------------------------------------------------

    async def _publish_settled(self) -> None:
        """Before SYNCED: write what the rest of the initial state will not change (module docstring, step 3)."""
        await self._publish_nodes_and_pods(self.inventory.take_settled())

    async def _reconcile(self) -> None:
        dirty = self.inventory.take_dirty()
        await self._publish_nodes_and_pods(dirty)
        for ref in sorted(dirty.services):
            self._publish_service(ref)
        for ref in sorted(dirty.exports):
            self._publish_export(ref)

    def _put(self, kind: Kind, key: bytes, value: bytes) -> None:
        self._published[kind].add(key)
        self.stores[kind].upsert(key, value)

    def _remove(self, kind: Kind, key: bytes) -> None:
        if key in self._published[kind]:
            self._published[kind].discard(key)
            self.stores[kind].delete(key)

    def _publish_node(self, name: str) -> None:
        key = keys.node_key(self.options.cluster, name).encode()
        node = self.inventory.nodes.get(name)
        if node is None:
            self._remove(Kind.NODES, key)
        else:
            self._put(Kind.NODES, key, codec.encode(node))

    def _publish_service(self, ref: inventory.Ref) -> None:
        key = keys.service_key(self.options.cluster, ref.namespace, ref.name).encode()
        svc = self.inventory.services.get(ref)
        if svc is None or not svc.exported or not self.inventory.is_global(ref.namespace):
            self._remove(Kind.SERVICES, key)
            return
        record = services.cluster_service(
            svc, self.inventory.slices_of(ref), cluster=self.options.cluster, cluster_id=self.options.cluster_id
        )
        self._put(Kind.SERVICES, key, codec.encode(record))

    def _publish_export(self, ref: inventory.Ref) -> None:
        key = keys.service_export_key(self.options.cluster, ref.namespace, ref.name).encode()
        export = self.inventory.exports.get(ref)
        exported = self.inventory.exported_services.get(ref)
        if export is None or exported is None:
            self._remove(Kind.SERVICE_EXPORTS, key)
            return
        record = service_exports.service_export(export, exported, cluster=self.options.cluster)
        self._put(Kind.SERVICE_EXPORTS, key, codec.encode(record))

    async def _publish_nodes_and_pods(self, dirty: inventory.Dirty) -> None:
        for name in sorted(dirty.nodes):
            self._publish_node(name)
        if dirty.pods:
            await self._publish_pods(sorted(dirty.pods))

    async def _publish_pods(self, refs: list[inventory.Ref]) -> None:
        wanted: dict[inventory.Ref, endpoints.Endpoint | None] = {}
        for ref in refs:
            pod = self.inventory.pods.get(ref)
            wanted[ref] = pod if pod is not None and self.inventory.is_global(pod.namespace) else None
        # Sorted, so that the numbers of one round do not depend on the order of its events.
        missing = sorted({pod.labels for pod in wanted.values() if pod and self.allocator.lookup(pod.labels) is None})
        if missing:
            for created in await self.allocator.allocate(missing):
                key = keys.identity_key(created.id).encode()
                # Created by the allocator's create-only transaction: already in etcd, on our lease.
                self.stores[Kind.IDENTITIES].prime([etcd_client.KeyValue(key, codec.encode(created), 0)])
                self._published[Kind.IDENTITIES].add(key)
                log.info("event=identity.created id=%d labels=%s", created.id, created.labels)
        for count, (ref, pod) in enumerate(wanted.items(), 1):
            self._publish_pod(ref, pod)
            if count % _YIELD_EVERY == 0:
                # Let the stores start writing while the rest is converted: etcd works while we compute.
                await asyncio.sleep(0)

    def _publish_pod(self, ref: inventory.Ref, pod: endpoints.Endpoint | None) -> None:
        # Once per pod at the initial sync, so each lookup is done once and work for empty cases skipped.
        numeric_id = self.allocator.lookup(pod.labels) if pod is not None else None
        labels = pod.labels if pod is not None and numeric_id is not None else None
        if pod is not None and labels is None:
            log.warning("event=pod.skipped pod=%s/%s reason=no-identity-left", ref.namespace, ref.name)
        previous = self._pod_labels.get(ref)
        if labels != previous:
            if labels is not None:
                self.allocator.acquire(labels)
                self._pod_labels[ref] = labels
            else:
                del self._pod_labels[ref]
            if previous is not None:
                self.allocator.release(previous)
        entries: dict[str, bytes] = {}
        if pod is not None and numeric_id is not None:
            entries = endpoints.ip_entries(pod, identity=numeric_id, host_ip=self._host_ip(pod))
        old_entries = self._pod_entries.pop(ref, {})
        if entries:
            self._pod_entries[ref] = entries
        if old_entries:
            for ip in old_entries.keys() - entries.keys():
                claimants = self._ip_owners[ip]
                claimants.remove(ref)
                if not claimants:
                    del self._ip_owners[ip]
                self._publish_ip(ip)
        for ip, entry in entries.items():
            owners = self._ip_owners.get(ip)
            if owners is None:
                owners = self._ip_owners[ip] = [ref]
            elif ref not in owners:
                owners.append(ref)
            elif old_entries.get(ip) == entry:
                continue
            if owners[0] == ref:
                self._publish_ip(ip)

    def _host_ip(self, pod: endpoints.Endpoint) -> str:
        return self.inventory.node_ips.get(pod.node) or pod.host_ip

    def _publish_ip(self, ip: str) -> None:
        key = keys.ip_key(ip).encode()
        owners = self._ip_owners.get(ip)
        if not owners:
            self._remove(Kind.IPCACHE, key)
        else:
            self._put(Kind.IPCACHE, key, self._pod_entries[owners[0]][ip])

    def _expire_identities(self) -> None:
        for gone in self.allocator.expire():
            self._remove(Kind.IDENTITIES, keys.identity_key(gone.id).encode())
            log.info("event=identity.released id=%d labels=%s", gone.id, gone.labels)

