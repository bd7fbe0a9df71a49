"""The write side: keep the keys under one prefix in etcd equal to what a publisher says they should be.

Callers say upsert(key, value) / delete(key) as often as they like; the store coalesces per key (latest wins),
skips a put whose value equals the last one written, and writes in transactions of at most MAX_TXN_OPS
operations, each key attached to a lease from a shared LeasePool. Back-pressure policy: pending writes coalesce
in a dict, so memory is bounded by the number of distinct keys, never by the update rate.

Once the publisher calls mark_synced() (its initial state is fully queued), the store waits until every queued
write has landed, deletes keys under its prefix that this session did not write (left over from an earlier
run of the writer), and then writes the sync canary, so readers gated on the canary never see a partial export.
A lease that expires re-queues the keys attached to it. Mirrors Cilium's wqSyncStore (pkg/kvstore/store/syncstore.go).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from clustermesh import errors
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease

log = logging.getLogger(__name__)

_DELETE = None


class SyncStore:
    """Coalescing, batching writer for one prefix. Mutated only from the event loop; run() does the I/O."""

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        leases: etcd_lease.LeasePool | None,
        *,
        prefix: bytes | None = None,
        canary: tuple[bytes, Callable[[], bytes]] | None = None,
        name: str = "",
        retry: backoff.Backoff | None = None,
    ) -> None:
        if prefix is not None and not prefix.endswith(b"/"):
            raise ValueError(f"sync prefix {prefix!r} must end with '/'")
        self.client = client
        self.leases = leases
        self.prefix = prefix
        self.canary = canary
        self.name = name or (prefix or b"").decode(errors="replace")
        self.retry = retry or backoff.Backoff(initial=0.2, maximum=5.0)
        self.synced = asyncio.Event()
        self.puts = 0
        self.deletes = 0
        self.txns = 0
        self.skipped = 0
        self.failures = 0
        self.last_error = ""
        self._pending: dict[bytes, bytes | None] = {}
        self._written: dict[bytes, bytes] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sync_requested = False
        self._running = False
        self._writing = False
        if leases is not None:
            leases.on_lost(self._requeue_lost)

    def __repr__(self) -> str:
        return (
            f"<SyncStore {self.name} written={len(self._written)} pending={len(self._pending)} "
            f"puts={self.puts} deletes={self.deletes} txns={self.txns} synced={self.synced.is_set()}>"
        )

    @property
    def pending(self) -> int:
        """How many keys wait to be written."""
        return len(self._pending)

    def upsert(self, key: bytes, value: bytes) -> None:
        """Make key hold value; a no-op when that is already what etcd holds."""
        if self._written.get(key) == value:
            if self._pending.pop(key, 0) != 0:
                self._settle()
            self.skipped += 1
            return
        self._pending[key] = value
        self._kick()

    def delete(self, key: bytes) -> None:
        """Make key absent (keys never written by this session are swept at sync, not deleted one by one)."""
        if key in self._written:
            self._pending[key] = _DELETE
            self._kick()
        elif self._pending.pop(key, 0) != 0:
            self._settle()

    def prime(self, existing: Iterable[etcd_client.KeyValue]) -> None:
        """Take keys etcd already holds as written by this store, so that they are not written again.

        For a writer that restarts (its keys are still in etcd, on leases the LeasePool adopted) and for keys the
        caller wrote itself (e.g. with a create-only transaction). An upsert of the value a primed key holds
        then writes nothing; a delete removes it. Primed keys count as written at mark_synced(): keys the caller
        no longer wants must be deleted explicitly, or they survive the sweep. Call from the event loop, before
        or while run() runs; priming a key again replaces its value.
        """
        for kv in existing:
            self._written[kv.key] = kv.value

    def mark_synced(self) -> None:
        """Declare the initial state fully queued: sweep leftovers and write the canary once it has landed."""
        self._sync_requested = True
        self._kick()

    async def flush(self) -> None:
        """Wait until nothing is pending (and, after mark_synced, until the canary is written)."""
        while self._pending or self._writing or (self._sync_requested and not self.synced.is_set()):
            self._idle.clear()
            await self._idle.wait()

    def _kick(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    def _settle(self) -> None:
        if not self._pending and not self._writing:
            self._idle.set()

    def _requeue_lost(self, keys: set[bytes]) -> None:
        for key in keys:
            value = self._written.pop(key, None)
            if value is not None and key not in self._pending:
                self._pending[key] = value
        self._kick()

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Write until cancelled; sets ready once the canary is written (at once if no canary is set).

        Retries every StoreError with backoff except ClusterIDChanged, which it raises to the owner.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                self._writing = True
                try:
                    while self._pending:
                        await self._write_batch()
                    if self._sync_requested and not self.synced.is_set():
                        await self._complete_sync()
                        if ready is not None:
                            ready.set()
                    self.retry.reset()
                except errors.ClusterIDChanged:
                    # Another etcd answers now: what we know was written is void. The owner must start over.
                    raise
                except errors.StoreError as exc:
                    self.failures += 1
                    self.last_error = str(exc)
                    log.info("event=sync.failed store=%s reason=%s", self.name, exc)
                    if isinstance(exc, errors.LeaseExpired) and self.leases is not None:
                        await self.leases.verify()
                    self._wakeup.set()
                    await self.retry.wait()
                    continue
                finally:
                    self._writing = False
                self._settle()
        finally:
            self._running = False
            self._writing = False

    async def _write_batch(self) -> None:
        batch: list[tuple[bytes, bytes | None]] = []
        for key in list(self._pending)[: etcd_client.MAX_TXN_OPS]:
            batch.append((key, self._pending.pop(key)))
        ops: list[etcd_client.Op] = []
        try:
            for key, value in batch:
                if value is _DELETE:
                    ops.append(etcd_client.delete_op(key))
                else:
                    lease = await self.leases.lease_for(key) if self.leases is not None else 0
                    ops.append(etcd_client.put_op(key, value, lease=lease))
            # Puts and deletes are idempotent, so a transaction whose outcome is unknown is simply re-queued.
            await self.client.txn(ops)
        except BaseException:
            for key, value in batch:
                self._pending.setdefault(key, value)
            raise
        self.txns += 1
        for key, value in batch:
            if value is _DELETE:
                self._written.pop(key, None)
                if self.leases is not None:
                    self.leases.release(key)
                self.deletes += 1
            else:
                self._written[key] = value
                self.puts += 1

    async def _complete_sync(self) -> None:
        if self.prefix is not None:
            existing = await self.client.list_prefix(self.prefix, keys_only=True)
            leftovers = [kv.key for kv in existing.kvs if kv.key not in self._written]
            for start in range(0, len(leftovers), etcd_client.MAX_TXN_OPS):
                chunk = leftovers[start : start + etcd_client.MAX_TXN_OPS]
                await self.client.txn([etcd_client.delete_op(key) for key in chunk])
                self.deletes += len(chunk)
            if leftovers:
                log.info("event=sync.swept store=%s keys=%d", self.name, len(leftovers))
        if self.canary is not None:
            key, make_value = self.canary
            lease = await self.leases.lease_for(key) if self.leases is not None else 0
            value = make_value()
            await self.client.put(key, value, lease=lease)
            self._written[key] = value
        self.synced.set()
        log.info("event=sync.complete store=%s keys=%d", self.name, len(self._written))
