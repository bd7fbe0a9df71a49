"""Leases for a writer's keys: granting, attaching at most 1000 keys per lease, keeping them alive.

Owns: which lease each key is attached to, the keep-alive stream (a refresh every TTL/3), and noticing that a
lease is gone (a keep-alive reply with TTL <= 0, or NOT_FOUND) so that the writer re-publishes the keys that
were attached to it. Why at most 1000 keys per lease: etcd's put latency grows with the number of keys on one
lease (etcd-io/etcd#15993); Cilium uses the same cap.

Granting is a round trip through etcd's raft log, and every writer that needs a new key's lease would wait for
it: at 58,000 keys, 58 stalls of every store's writes. So run() grants the next lease ahead, once the current one
is half full, and lease_for() moves on to it without waiting; it grants inline only when that spare is not
there yet (or was lost). The spare is kept alive like the leases in use and revoked with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import grpc

from clustermesh import errors
from clustermesh.aio import backoff
from clustermesh.api.etcd import rpc_pb2 as pb
from clustermesh.etcd import client as etcd_client

log = logging.getLogger(__name__)

MAX_KEYS_PER_LEASE = 1000


class LeasePool:
    """Hands out lease ids for keys and keeps every granted lease alive while run() runs.

    Listeners added with on_lost() are called with the keys of a lease that expired; those keys are detached,
    and the next lease_for() of each grants a fresh lease. Mutated only from the event loop thread.
    """

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        *,
        ttl: int,
        max_keys_per_lease: int = MAX_KEYS_PER_LEASE,
    ) -> None:
        if ttl < 2:
            raise ValueError("lease ttl must be at least 2 seconds")
        self.client = client
        self.ttl = ttl
        self.max_keys_per_lease = max_keys_per_lease
        self._lost_listeners: list[Callable[[set[bytes]], None]] = []
        self._keys: dict[int, set[bytes]] = {}
        self._lease_of: dict[bytes, int] = {}
        self._current = 0
        self._grant_lock = asyncio.Lock()
        # Granted by run() ahead of need, no key attached yet; 0 if none. _spare_wanted asks run() for one.
        self._spare = 0
        self._spare_wanted = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"<LeasePool leases={len(self._keys)} keys={len(self._lease_of)} ttl={self.ttl} "
            f"spare={self._spare:x}>"
        )

    def on_lost(self, listener: Callable[[set[bytes]], None]) -> None:
        """Call listener(keys) whenever a lease is found expired; each listener picks the keys it owns."""
        self._lost_listeners.append(listener)

    @property
    def leases(self) -> list[int]:
        """Ids of the leases in use (not the spare)."""
        return list(self._keys)

    @property
    def spare(self) -> int:
        """The lease granted ahead for the next keys, 0 if none."""
        return self._spare

    def try_lease_for(self, key: bytes) -> int:
        """lease_for() without waiting: the lease key is (or now gets) attached to, 0 if it needs a grant first.

        For a writer attaching thousands of keys in a row (sync_store): a plain call, where awaiting lease_for()
        builds and runs a coroutine per key. On 0, await lease_for(key), which grants.
        """
        lease = self._lease_of.get(key)
        if lease is not None:
            return lease
        # The common case needs no lock: the current lease has room, or the spare is there to take over.
        current = self._current
        if not current or len(self._keys[current]) >= self.max_keys_per_lease:
            current = self._take_spare()
            if not current:
                return 0
        return self._attach(key, current)

    async def lease_for(self, key: bytes) -> int:
        """The lease key is (or now gets) attached to; moves on to a new lease when the current one is full."""
        lease = self.try_lease_for(key)
        if lease:
            return lease
        # Only granting inline (no spare yet) must be serialised.
        async with self._grant_lock:
            current = self._current
            if not current or len(self._keys[current]) >= self.max_keys_per_lease:
                current = self._take_spare() or self._use(await self.client.lease_grant(self.ttl))
        return self._attach(key, current)

    def _attach(self, key: bytes, lease: int) -> int:
        attached = self._keys[lease]
        attached.add(key)
        self._lease_of[key] = lease
        if len(attached) == self.max_keys_per_lease // 2 and not self._spare:
            self._spare_wanted.set()
        return lease

    def _take_spare(self) -> int:
        """Make the spare the current lease and return it; 0 if there is none."""
        spare, self._spare = self._spare, 0
        return self._use(spare) if spare else 0

    def _use(self, lease: int) -> int:
        self._current = lease
        self._keys[lease] = set()
        return lease

    def adopt(self, lease: int, keys: Iterable[bytes]) -> None:
        """Take over a lease granted by an earlier run of this writer, with the keys attached to it in etcd.

        For a restart that must not rewrite its keys: call before run() with a lease that etcd still reports
        alive (client.lease_ttl > 0). run() then keeps it alive, the keys stay attached to it, and new keys join
        the adopted lease with the most room until it is full. If the lease expired meanwhile, the first
        keep-alive reports it lost and on_lost listeners re-publish its keys, as for any lost lease.
        """
        attached = self._keys.setdefault(lease, set())
        for key in keys:
            previous = self._lease_of.get(key)
            if previous is not None and previous != lease:
                self._keys[previous].discard(key)
            attached.add(key)
            self._lease_of[key] = lease
        if not self._current or len(attached) < len(self._keys[self._current]):
            self._current = lease

    def release(self, key: bytes) -> None:
        """Forget key (it was deleted). Empty leases are kept and reused; they expire only if lost."""
        lease = self._lease_of.pop(key, None)
        if lease is not None:
            self._keys[lease].discard(key)

    def _lost(self, lease: int) -> None:
        if lease == self._spare:
            self._spare = 0
            log.info("event=lease.lost lease=%x keys=0 spare=true", lease)
            return
        keys = self._keys.pop(lease, set())
        for key in keys:
            self._lease_of.pop(key, None)
        if lease == self._current:
            self._current = 0
        log.warning("event=lease.lost lease=%x keys=%d", lease, len(keys))
        if keys:
            for listener in self._lost_listeners:
                listener(keys)

    async def revoke_all(self) -> None:
        """Revoke every lease (deleting its keys in etcd) and forget them."""
        for lease in self._all_leases():
            await self.client.lease_revoke(lease)
        self._keys.clear()
        self._lease_of.clear()
        self._current = 0
        self._spare = 0

    def _all_leases(self) -> list[int]:
        """The leases in use and the spare: the leases to keep alive."""
        return [*self._keys, self._spare] if self._spare else list(self._keys)

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Keep every lease alive and grant spares until cancelled; reconnect the keep-alive stream with backoff."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep_alive(), name="lease keepalive")
            group.create_task(self._grant_ahead(), name="lease grant ahead")
            if ready is not None:
                ready.set()

    async def _grant_ahead(self) -> None:
        """Grant a spare whenever lease_for() asks for one; etcd errors are retried with backoff."""
        retry = backoff.Backoff(initial=0.2, maximum=min(5.0, self.ttl / 3))
        while True:
            await self._spare_wanted.wait()
            self._spare_wanted.clear()
            if self._spare:
                continue
            try:
                self._spare = await self.client.lease_grant(self.ttl)
            except errors.StoreError as exc:
                log.info("event=lease.grant.failed reason=%s", exc)
                self._spare_wanted.set()
                await retry.wait()
                continue
            retry.reset()

    async def _keep_alive(self) -> None:
        retry = backoff.Backoff(initial=0.2, maximum=min(5.0, self.ttl / 3))
        while True:
            try:
                await self._keep_alive_stream(retry)
            except errors.StoreError as exc:
                log.info("event=lease.keepalive.failed reason=%s", exc)
            await retry.wait()
            await self.verify()

    async def verify(self) -> None:
        """Ask etcd which leases survived (after an outage, or a put refused for a missing lease)."""
        for lease in self._all_leases():
            try:
                if await self.client.lease_ttl(lease, timeout=2) <= 0:
                    self._lost(lease)
            except errors.StoreError:
                return

    async def _keep_alive_stream(self, retry: backoff.Backoff) -> None:
        interval = self.ttl / 3

        async def requests() -> AsyncIterator[pb.LeaseKeepAliveRequest]:
            while True:
                for lease in self._all_leases():
                    yield pb.LeaseKeepAliveRequest(ID=lease)
                await asyncio.sleep(interval)

        call = self.client.lease_stub.LeaseKeepAlive(requests())
        try:
            async for resp in call:
                self.client.check_header(resp.header)
                retry.reset()
                if resp.TTL <= 0 and (resp.ID in self._keys or resp.ID == self._spare):
                    self._lost(resp.ID)
        except grpc.RpcError as exc:
            raise etcd_client.translate(exc, "lease keepalive") from exc
        finally:
            call.cancel()
