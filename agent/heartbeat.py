"""A peer's liveness as its writer reports it: follow `cilium/.heartbeat`, notice when it is no longer written.

The peer's apiserver rewrites the heartbeat key periodically (Cilium: every minute, reference §2.2). An etcd
that answers but whose writer is gone (apiserver crashed or hung) passes every transport check; only the
heartbeat tells. Its watch stream also fails when etcd goes away or gRPC keepalive declares the transport
dead, which ends the connection too; bounding the detection of a hung etcd is the connection's Status probe
(remote_cluster.py).

Timeout: an explicit one applies from the start of each connection (every peer must then publish a
heartbeat). Without one, the timeout is derived once the interval between two writes has been observed:
three intervals, but never less than the keepalive bound; before that, the heartbeat only reports its age.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from clustermesh import errors, keys
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch as etcd_watch

log = logging.getLogger(__name__)

_KEY = keys.HEARTBEAT_KEY.encode()
# Three missed beats: one late write or one slow watch delivery is not a dead writer.
_MISSED_BEATS = 3


class HeartbeatLost(errors.ClusterMeshError):
    """Raised when a peer's heartbeat has not been written for longer than the heartbeat timeout."""


class Heartbeat:
    """The heartbeat of one peer, across its connections. Mutated only by the task running run()."""

    def __init__(
        self,
        *,
        cluster: str,
        clock: Callable[[], float],
        timeout: float | None,
        floor: float,
        tick: float,
    ) -> None:
        self.cluster = cluster
        self.last_change: float | None = None
        self.interval: float | None = None
        self._clock = clock
        self._timeout = timeout
        self._floor = floor
        self._tick = tick
        self._revision = 0
        # When the current watch last saw a change: the start of an interval measured on one watch.
        self._watched_change: float | None = None

    def __repr__(self) -> str:
        return f"<Heartbeat {self.cluster} age={self.age():.1f} interval={self.interval} timeout={self.timeout}>"

    @property
    def timeout(self) -> float | None:
        """The timeout in force: the explicit one, the derived one, or None while nothing can be derived."""
        if self._timeout is not None:
            return self._timeout
        if self.interval is None:
            return None
        return max(_MISSED_BEATS * self.interval, self._floor)

    def age(self) -> float:
        """Seconds since we last saw the heartbeat written; -1 when never seen."""
        return -1.0 if self.last_change is None else max(0.0, self._clock() - self.last_change)

    async def run(self, client: etcd_client.EtcdClient) -> None:
        """Follow the heartbeat through client until cancelled.

        Raises HeartbeatLost when it is not written for the timeout (measured from this call at the
        earliest), and the StoreError of a failed watch stream: either way the connection is lost.
        """
        started = self._clock()
        self._watched_change = None
        listed = await client.list_prefix(_KEY)
        for kv in listed.kvs:
            if kv.key == _KEY:
                self._observe(kv.mod_revision, live=False)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow(client, listed.revision), name=f"heartbeat watch {self.cluster}")
            group.create_task(self._expire(started), name=f"heartbeat expiry {self.cluster}")

    async def _follow(self, client: etcd_client.EtcdClient, revision: int) -> None:
        async for batch in etcd_watch.Watch(client, _KEY, start_revision=revision + 1):
            for event in batch.events:
                if event.type is etcd_watch.EventType.PUT:
                    self._observe(event.mod_revision, live=True)

    async def _expire(self, started: float) -> None:
        while True:
            await asyncio.sleep(self._tick)
            timeout = self.timeout
            if timeout is None:
                continue
            since = max(started, self.last_change or started)
            silent = self._clock() - since
            if silent > timeout:
                raise HeartbeatLost(f"heartbeat not written for {silent:.1f}s (timeout {timeout:.1f}s)")

    def _observe(self, revision: int, *, live: bool) -> None:
        # Every write is a beat, even one repeating the value (RFC 3339 timestamps have whole seconds): it is
        # the writer being alive that counts, not what it wrote.
        if revision == self._revision:
            return
        now = self._clock()
        # Only two writes seen on one watch measure the writer's interval: the value read at connect may have
        # been written just before, and a gap across a reconnect says nothing about the writer.
        if live:
            if self._watched_change is not None:
                # Keep the largest gap seen: a restarted writer beats at once, and a short gap across its
                # restart must not shrink the timeout below the writer's real interval (false losses forever).
                gap = now - self._watched_change
                self.interval = gap if self.interval is None else max(self.interval, gap)
            self._watched_change = now
        self._revision = revision
        self.last_change = now
        log.debug("event=peer.heartbeat cluster=%s interval=%s", self.cluster, self.interval)
