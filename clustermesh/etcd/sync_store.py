"""The write side: keep the keys under one prefix in etcd equal to what a publisher says they should be.

Callers say upsert(key, value) / delete(key) as often as they like; the store coalesces per key (latest wins),
skips a write whose outcome etcd already holds (or will hold once the writes in flight land), and writes in
transactions of at most MAX_TXN_OPS operations, each key attached to a lease from a shared LeasePool.
Back-pressure policy: pending writes coalesce in a dict, so memory is bounded by the number of distinct keys,
never by the update rate.

Up to `max_inflight` transactions are in flight at once (etcd's throughput grows with concurrent requests;
one at a time leaves it idle for every round trip), and per-key order is kept: a key is in at most one
transaction in flight, and a write queued while the key is in flight waits for that transaction to finish,
so a later write of a key never lands before an earlier one. Keys of different transactions are
independent, so transactions may land in any order.

Once the publisher calls mark_synced() (its initial state is fully queued), the store waits until every queued
write has landed, deletes keys under its prefix that this session did not write (left over from an earlier
run of the writer), and then writes the sync canary, so readers gated on the canary never see a partial export.
Only keys that predate the session can be left over: run() records etcd's revision when it starts, and the sweep
lists only keys created at or before it (RangeRequest.max_create_revision), so a sync from an empty prefix lists
nothing instead of every key it has just written (0.25-0.45 s at 50,000 keys). The price: a key that another
writer creates under our prefix while this session runs is not swept (a full listing would sweep it if it
existed at sync time); the prefix is ours alone, so that writer is a misconfiguration, and a later session
sweeps its key. A key written by an earlier run of the writer is created before the session starts, so it is
always swept unless written again.
A lease that expires re-queues the keys attached to it, including puts in flight on it (they may land on the
dead lease); a delete in flight stays a delete. Mirrors Cilium's wqSyncStore (pkg/kvstore/store/syncstore.go).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
from collections.abc import Callable, Iterable

from clustermesh import errors
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease

log = logging.getLogger(__name__)

DEFAULT_MAX_INFLIGHT = 4
"""Transactions a store keeps in flight: as many as bench/etcd_baseline.py's bare batched puts."""

_DELETE = None


class _Lost(enum.Enum):
    """What a key in flight will hold once its write lands, after its lease was lost meanwhile: unknown."""

    LOST = "lost"


_LOST = _Lost.LOST

_Write = tuple[bytes, bytes | None]
"""A key and the value to put (None: delete it)."""


class SyncStore:
    """Coalescing, batching, pipelining writer for one prefix. Mutated only from the event loop; run() does the I/O.

    Shared state: upsert/delete/prime/mark_synced (callers) write `_pending` and `_written`; run() moves a
    batch of keys from `_pending` into `_inflight`, builds its operations and starts its transaction task
    (in `_txns`), which moves the keys from `_inflight` into `_written` when it lands (or back into `_pending`
    when it fails); the LeasePool's lost-lease listener moves keys from `_written` back into `_pending` and
    marks puts in flight _LOST.
    """

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        leases: etcd_lease.LeasePool | None,
        *,
        prefix: bytes | None = None,
        canary: tuple[bytes, Callable[[], bytes]] | None = None,
        name: str = "",
        retry: backoff.Backoff | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
    ) -> None:
        if prefix is not None and not prefix.endswith(b"/"):
            raise ValueError(f"sync prefix {prefix!r} must end with '/'")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, not {max_inflight}")
        self.client = client
        self.leases = leases
        self.prefix = prefix
        self.canary = canary
        self.name = name or (prefix or b"").decode(errors="replace")
        self.retry = retry or backoff.Backoff(initial=0.2, maximum=5.0)
        self.max_inflight = max_inflight
        self.synced = asyncio.Event()
        self.puts = 0
        self.deletes = 0
        self.txns = 0
        self.skipped = 0
        self.failures = 0
        self.last_error = ""
        self._pending: dict[bytes, bytes | None] = {}
        self._written: dict[bytes, bytes] = {}
        # Keys in a transaction in flight, with the value it writes (None: a delete; _LOST: its lease was lost).
        self._inflight: dict[bytes, bytes | _Lost | None] = {}
        self._txns: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sync_requested = False
        # etcd's revision when run() started: keys created after it are this session's, never leftovers.
        self._session_revision = 0
        self._running = False
        self._syncing = False
        if leases is not None:
            leases.on_lost(self._requeue_lost)

    def __repr__(self) -> str:
        return (
            f"<SyncStore {self.name} written={len(self._written)} pending={len(self._pending)} "
            f"inflight={len(self._txns)} puts={self.puts} deletes={self.deletes} txns={self.txns} "
            f"synced={self.synced.is_set()}>"
        )

    @property
    def pending(self) -> int:
        """How many keys wait to be written (not counting those in flight)."""
        return len(self._pending)

    @property
    def inflight(self) -> int:
        """How many transactions are in flight."""
        return len(self._txns)

    def _landing(self, key: bytes) -> bytes | _Lost | None:
        """What etcd holds for key once the writes in flight land, as far as this store knows (None: absent)."""
        if key in self._inflight:
            return self._inflight[key]
        return self._written.get(key)

    def upsert(self, key: bytes, value: bytes) -> None:
        """Make key hold value; a no-op when that is what etcd holds (or will once the writes in flight land)."""
        if self._landing(key) == value:
            if self._pending.pop(key, 0) != 0:
                self._settle()
            self.skipped += 1
            return
        self._pending[key] = value
        self._kick()

    def delete(self, key: bytes) -> None:
        """Make key absent (keys never written by this session are swept at sync, not deleted one by one)."""
        if self._landing(key) is not None:
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
        """Wait until nothing is pending or in flight (and, after mark_synced, until the canary is written)."""
        while self._busy() or (self._sync_requested and not self.synced.is_set()):
            self._idle.clear()
            await self._idle.wait()

    def _busy(self) -> bool:
        # _inflight, not _txns: it also holds the keys of a batch whose operations are being built.
        return bool(self._pending or self._inflight or self._syncing)

    def _kick(self) -> None:
        self._idle.clear()
        self._wakeup.set()

    def _settle(self) -> None:
        if not self._busy():
            self._idle.set()

    def _requeue_lost(self, keys: set[bytes]) -> None:
        for key in keys:
            value = self._written.pop(key, None)
            if key in self._inflight:
                in_flight = self._inflight[key]
                if in_flight is _DELETE:
                    continue  # on its way out: nothing to publish again
                if in_flight is not _LOST:
                    # Its put may land on the lost lease (and vanish with it): queue it again, whatever this
                    # store learns when the transaction ends.
                    self._inflight[key] = _LOST
                    value = in_flight
            if value is not None and key not in self._pending:
                self._pending[key] = value
        self._kick()

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Write until cancelled; sets ready once the canary is written (at once if no canary is set).

        Retries every StoreError with backoff except ClusterIDChanged, which it raises to the owner. Every
        transaction in flight ends with run(): cancelled on the way out, its keys queued again.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            await self._record_session_revision()
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                try:
                    self._reap()
                    await self._start_txns()
                    if not (self._pending or self._inflight) and self._sync_requested and not self.synced.is_set():
                        await self._complete_sync()
                        if ready is not None:
                            ready.set()
                        self.retry.reset()
                except errors.ClusterIDChanged:
                    # Another etcd answers now: what we know was written is void. The owner must start over.
                    raise
                except errors.StoreError as exc:
                    self._failed(exc)
                    if isinstance(exc, errors.LeaseExpired) and self.leases is not None:
                        await self.leases.verify()
                    # Back off before starting another transaction; those in flight go on and are reaped after.
                    self._wakeup.set()
                    await self.retry.wait()
                    continue
                self._settle()
        finally:
            try:
                await self._cancel_txns()
            finally:
                self._running = False

    async def _record_session_revision(self) -> None:
        """Note etcd's current revision, retried until etcd answers (nothing is written before)."""
        if self.prefix is None:
            return
        while True:
            try:
                self._session_revision = (await self.client.status()).revision
            except errors.ClusterIDChanged:
                raise
            except errors.StoreError as exc:
                self._failed(exc)
                await self.retry.wait()
                continue
            self.retry.reset()
            return

    def _failed(self, exc: errors.StoreError) -> None:
        self.failures += 1
        self.last_error = str(exc)
        log.info("event=sync.failed store=%s reason=%s", self.name, exc)

    def _reap(self) -> None:
        """Take the outcome of finished transactions; raise a failure (after counting the others)."""
        finished = [txn for txn in self._txns if txn.done()]
        self._txns.difference_update(finished)
        failures: list[errors.StoreError] = []
        for txn in finished:
            exc = None if txn.cancelled() else txn.exception()
            if exc is None:
                continue
            if isinstance(exc, errors.ClusterIDChanged) or not isinstance(exc, errors.StoreError):
                raise exc
            failures.append(exc)
        if not failures:
            if finished:
                self.retry.reset()
            return
        for exc in failures[1:]:
            self._failed(exc)
        raise failures[0]

    async def _start_txns(self) -> None:
        while len(self._txns) < self.max_inflight:
            batch = self._take_batch()
            if not batch:
                return
            try:
                puts, deletes = await self._ops(batch)
            except BaseException:
                self._requeue(batch)
                raise
            txn = asyncio.create_task(self._write(batch, puts, deletes), name=f"sync {self.name} txn")
            txn.add_done_callback(self._txn_done)
            self._txns.add(txn)

    def _txn_done(self, _txn: asyncio.Task[None]) -> None:
        self._wakeup.set()

    def _take_batch(self) -> list[_Write]:
        """Up to MAX_TXN_OPS pending writes of keys not in flight, oldest first, now marked in flight."""
        inflight = self._inflight
        # Skipped keys are in flight, so at most max_inflight * MAX_TXN_OPS of them are looked at in vain.
        keys = list(itertools.islice((key for key in self._pending if key not in inflight), etcd_client.MAX_TXN_OPS))
        batch = [(key, self._pending.pop(key)) for key in keys]
        for key, value in batch:
            inflight[key] = value
        return batch

    async def _ops(self, batch: list[_Write]) -> tuple[list[tuple[bytes, bytes, int]], list[bytes]]:
        """The puts of batch, each on its key's lease, and its deletes: client.write()'s arguments.

        Built here, by run() alone, rather than in each transaction's task: the LeasePool's grant lock makes
        concurrent callers queue behind one another, each handing over to the next only through a turn of the
        event loop, and a busy loop (a publisher converting thousands of objects) turns rarely.
        """
        puts: list[tuple[bytes, bytes, int]] = []
        deletes: list[bytes] = []
        leases = self.leases
        for key, value in batch:
            if value is _DELETE:
                deletes.append(key)
            elif leases is None:
                puts.append((key, value, 0))
            else:
                # The plain call almost always has the lease; awaiting lease_for() only to grant one.
                puts.append((key, value, leases.try_lease_for(key) or await leases.lease_for(key)))
        return puts, deletes

    def _requeue(self, batch: list[_Write]) -> None:
        for key, value in batch:
            del self._inflight[key]
            self._pending.setdefault(key, value)

    async def _write(
        self, batch: list[_Write], puts: list[tuple[bytes, bytes, int]], deletes: list[bytes]
    ) -> None:
        """One transaction; on success its keys count as written, otherwise they are queued again."""
        try:
            # Puts and deletes are idempotent, so a transaction whose outcome is unknown is simply re-queued.
            await self.client.write(puts, deletes)
        except BaseException:
            self._requeue(batch)
            raise
        self.txns += 1
        for key, value in batch:
            if self._inflight.pop(key) is _LOST:
                # Its lease was lost while in flight; _requeue_lost queued the value again.
                continue
            if value is _DELETE:
                self._written.pop(key, None)
                if self.leases is not None:
                    self.leases.release(key)
                self.deletes += 1
            else:
                self._written[key] = value
                self.puts += 1

    async def _cancel_txns(self) -> None:
        """Cancel the transactions in flight and wait for them (their keys go back to pending)."""
        for txn in self._txns:
            txn.cancel()
        if self._txns:
            await asyncio.wait(self._txns)
        for txn in self._txns:
            if not txn.cancelled():
                txn.exception()  # retrieved: run() is ending, so its outcome is moot
        self._txns.clear()

    async def _complete_sync(self) -> None:
        self._syncing = True
        try:
            await self._sweep_and_write_canary()
        finally:
            self._syncing = False
        self.synced.set()
        log.info("event=sync.complete store=%s keys=%d", self.name, len(self._written))

    async def _sweep_and_write_canary(self) -> None:
        if self.prefix is not None:
            # One request: etcd reads the whole range to filter on the create revision whatever the page size,
            # so pages would only make it read the range again for each.
            existing = await self.client.list_prefix(
                self.prefix, keys_only=True, page_size=0, max_create_revision=self._session_revision
            )
            leftovers = [kv.key for kv in existing.kvs if kv.key not in self._written]
            for start in range(0, len(leftovers), etcd_client.MAX_TXN_OPS):
                chunk = leftovers[start : start + etcd_client.MAX_TXN_OPS]
                await self.client.write((), chunk)
                self.deletes += len(chunk)
            if leftovers:
                log.info("event=sync.swept store=%s keys=%d", self.name, len(leftovers))
        if self.canary is not None:
            key, make_value = self.canary
            lease = await self.leases.lease_for(key) if self.leases is not None else 0
            value = make_value()
            await self.client.put(key, value, lease=lease)
            self._written[key] = value
