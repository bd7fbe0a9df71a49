"""The set of peer clusters this agent follows: reconcile the desired peers with the running connections.

Owns one RemoteCluster and one task per configured peer, keyed by cluster name, plus what the peers share: the
cluster-ID reservations and the pod-CIDR claims (cluster_ids.py). set_peers() says what is wanted (from the
mesh-config watcher or the ClusterMesh resource) and which declared peers have no usable configuration, and
why (a missing Secret: shown by statuses(), nothing else happens). run() reconciles in one place (kopf's
adjust_tasks): stop the redundant first — a removed peer is drained and its ID released, a changed one is
stopped to reconnect with its new configuration, keeping its entries — then start the missing. A peer removed
and re-added before the reconciler ran is simply kept. Cancelling run() stops every peer without draining (stop
is not remove). Cilium: pkg/clustermesh/common/clustermesh.go.

Memory: peers reached at one etcd with the same credentials (KVStoreMesh) share one connection (the mesh's
etcd ChannelPool). A sync leaves the heap full of holes where its list pages were (heap.py): once every peer
is settled, and again after any later (re)sync of a peer, run() trims the heap, once per wakeup. A bootstrap
trims once, at readiness; peers relisting together after an outage trim about once between them.

Serving code reads the cache (agent/cache.py), statuses() and peer_synced(); it never touches a peer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from agent import cache as mesh_cache
from agent import cluster_ids, heap, remote_cluster
from agent.peer_status import PeerStatus
from clustermesh import identity
from clustermesh.aio import tasks
from clustermesh.etcd import client as etcd_client
from clustermesh.mesh_config import PeerConfig

__all__ = ["LocalCluster", "Mesh", "PeerOptions"]

log = logging.getLogger(__name__)

LocalCluster = remote_cluster.LocalCluster
PeerOptions = remote_cluster.PeerOptions

_DEFAULT_OPTIONS = PeerOptions()


class Mesh:
    """Every peer of the local cluster. set_peers() and the readers are safe before, during and after run().

    `trim_heap` gives freed memory back to the OS (heap.trim; injectable for tests).
    """

    def __init__(
        self,
        local: LocalCluster,
        cache: mesh_cache.MeshCache,
        *,
        options: PeerOptions = _DEFAULT_OPTIONS,
        clock: Callable[[], float] = time.monotonic,
        trim_heap: Callable[[], object] = heap.trim,
    ) -> None:
        identity.validate_cluster_name(local.name)
        identity.validate_cluster_id(local.cluster_id, local.max_connected_clusters)
        self.local = local
        self.cache = cache
        self.options = options
        self._clock = clock
        self._ids = cluster_ids.ClusterIDs(
            local_cluster=local.name, local_id=local.cluster_id, max_clusters=local.max_connected_clusters
        )
        self._pod_cidrs = cluster_ids.PodCIDRs(local_cluster=local.name, local_cidrs=local.pod_cidrs)
        self._channels = etcd_client.ChannelPool()
        self._desired: dict[str, PeerConfig] = {}
        self._problems: dict[str, str] = {}
        self._peers: dict[str, remote_cluster.RemoteCluster] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._running = False
        self._trim_heap = trim_heap
        # Set when a peer completed a sync since the last trim.
        self._synced_since_trim = False

    def __repr__(self) -> str:
        return (
            f"<Mesh local={self.local.name}:{self.local.cluster_id} desired={sorted(self._desired)} "
            f"running={sorted(self._tasks)}>"
        )

    def set_peers(self, desired: Mapping[str, PeerConfig], problems: Mapping[str, str] | None = None) -> None:
        """Make `desired` the peer set; run() reconciles it soon (or at start). Never blocks.

        `problems` maps declared peers to why their configuration is unusable; statuses() shows them (a peer
        not in `desired` as not started, a running one keeps running with its status annotated), until the next
        call. A config or problem for the local cluster's own name is ignored, as Cilium does.
        """
        if self.local.name in desired:
            log.info("event=mesh.peer.ignored cluster=%s reason=%r", self.local.name, "the local cluster")
        self._desired = {name: config for name, config in desired.items() if name != self.local.name}
        self._problems = {name: problem for name, problem in (problems or {}).items() if name != self.local.name}
        self._wake.set()

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Own every peer's task until cancelled; RuntimeError if already running.

        `ready` is set once every configured peer is synced, refused, failed its first attempt, or exceeded
        its sync timeout. A peer task that dies of a bug ends run() with its exception. Cancellation stops
        every peer and waits for them; entries stay cached.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        self._wake.set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._raise_if_crashed()
                await self._reconcile()
                settled = self._all_settled()
                if ready is not None and not ready.is_set() and settled:
                    log.info("event=mesh.ready peers=%d", len(self._peers))
                    ready.set()
                if self._synced_since_trim and settled:
                    self._synced_since_trim = False
                    self._trim_heap()
        finally:
            running = list(self._tasks.values())
            self._tasks.clear()
            await _stop(running)
            self._running = False

    def statuses(self) -> list[PeerStatus]:
        """A snapshot of every configured, running or unusably configured peer, sorted by name."""
        names = self._desired.keys() | self._peers.keys() | self._problems.keys()
        return [self._status(name) for name in sorted(names)]

    def _status(self, name: str) -> PeerStatus:
        problem = self._problems.get(name)
        if name not in self._peers:
            if problem is None:
                return PeerStatus(name=name, status="not started")
            return PeerStatus(name=name, status=f"not started: {problem}", last_error=problem)
        status = self._peers[name].status()
        if problem is None:
            return status
        return dataclasses.replace(status, status=f"{status.status}; configuration: {problem}")

    def peer_synced(self, name: str) -> bool:
        """True once the peer completed the initial list of every kind it exports (sticky across reconnects).

        False for an unknown peer. A removed peer is unknown.
        """
        peer = self._peers.get(name)
        return peer is not None and peer.synced_once

    async def _reconcile(self) -> None:
        desired = self._desired
        redundant = [
            name for name in self._tasks
            if name not in desired or desired[name].digest != self._peers[name].config.digest
        ]
        if redundant:
            await _stop([self._tasks.pop(name) for name in redundant])
        for name in redundant:
            peer = self._peers[name]
            if name in desired:
                log.info("event=mesh.peer.reconfigured cluster=%s", name)
                peer.reconfigure(desired[name])
            else:
                peer.remove()
                del self._peers[name]
        for name, config in desired.items():
            if name in self._tasks:
                continue
            if name not in self._peers:
                log.info("event=mesh.peer.added cluster=%s endpoints=%s", name, ",".join(config.etcd.endpoints))
                self._peers[name] = remote_cluster.RemoteCluster(
                    config, local=self.local, cache=self.cache, ids=self._ids, pod_cidrs=self._pod_cidrs,
                    options=self.options, clock=self._clock, on_synced=self._peer_synced, channels=self._channels,
                )
            task = asyncio.create_task(self._run_peer(self._peers[name]), name=f"peer {name}")
            task.add_done_callback(lambda _: self._wake.set())
            self._tasks[name] = task

    async def _run_peer(self, peer: remote_cluster.RemoteCluster) -> None:
        settled = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            group.create_task(peer.run(ready=settled), name=f"run {peer.name}")
            await settled.wait()
            self._wake.set()

    def _peer_synced(self) -> None:
        self._synced_since_trim = True
        self._wake.set()

    def _all_settled(self) -> bool:
        return all(name in self._peers and self._peers[name].settled for name in self._desired)

    def _raise_if_crashed(self) -> None:
        for name, task in self._tasks.items():
            if task.done():
                exc = None if task.cancelled() else task.exception()
                raise RuntimeError(f"the task of peer {name} ended unexpectedly") from exc


async def _stop(peer_tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the peers' tasks and wait until all have ended (clustermesh.aio.tasks.stop); log any that crashed."""
    try:
        await tasks.stop(peer_tasks)
    finally:
        for task in peer_tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("event=mesh.peer.crashed task=%s", task.get_name(), exc_info=task.exception())
