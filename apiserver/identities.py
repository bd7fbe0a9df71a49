"""Security identities of label sets: numbered in the cluster's range, persisted in etcd, stable, released late.

Owns the mapping between identity label strings (`k8s:a=b;...;`) and numeric identities. Numbers come from
the cluster's range (clustermesh.identity: cluster ID in the top bits) and are claimed in etcd the way
Cilium's kvstore allocator claims them: a create-only transaction (`version == 0`) on
`cilium/state/identities/v1/id/<n>` whose value is the label string, so a number is never taken twice, even
by two apiservers sharing an etcd. Keys are attached to the writer's leases like every other key.

Stability: at start the allocator is seeded with the identities already in etcd (seed()), so a restart keeps
every number; an identity whose last user went away is kept for a grace period (a pod being recreated gets
its number back) and only then released (expire()), measured on an injected Clock. Numbers are handed out
in increasing order from where the last one was, wrapping around, so a released number is reused as late as
possible (peers may still cache it).

Allocation is pipelined: the numbers of every batch are chosen first, in order, then up to
MAX_CLAIMS_IN_FLIGHT create-only transactions run at once (5,000 new identities: 40 transactions, one round
trip each, 0.15-0.2 s one after the other). The numbers are the same as claiming them one batch after the
other; a batch that finds a number taken writes nothing and is claimed again one number at a time, after
the others, from its first number on.

Does not own: which pods use which label set (the publisher counts references through acquire/release),
writing or deleting keys after creation (the identities SyncStore does; the allocator only creates).
Mutated only from the publisher's task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from apiserver import clock as clock_module
from clustermesh import errors, identity, keys, records
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease

log = logging.getLogger(__name__)

MAX_CLAIMS_IN_FLIGHT = 4
"""Create-only transactions allocate() keeps in flight, as many as a SyncStore's transactions."""


class IdentityAllocator:
    """Numeric identities for label strings in one cluster's range; see the module docstring."""

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        leases: etcd_lease.LeasePool,
        *,
        cluster_id: int,
        max_clusters: int,
        clock: clock_module.Clock,
        grace: float,
        retry: backoff.Backoff | None = None,
    ) -> None:
        self.client = client
        self.leases = leases
        self.clock = clock
        self.grace = grace
        self.first = identity.min_identity(cluster_id, max_clusters)
        self.last = identity.max_identity(cluster_id, max_clusters)
        self.retry = retry or backoff.Backoff(initial=0.2, maximum=5.0)
        self.created = 0
        self.released = 0
        self._ids: dict[str, int] = {}
        self._labels: dict[int, str] = {}
        self._refs: dict[int, int] = {}
        self._unused_since: dict[int, float] = {}
        # Numbers held in etcd by keys that are not ours (another writer's label string): never offered.
        self._taken: set[int] = set()
        self._next = self.first

    def __repr__(self) -> str:
        return (
            f"<IdentityAllocator range={self.first}..{self.last} identities={len(self._labels)} "
            f"unused={len(self._unused_since)} created={self.created} released={self.released}>"
        )

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def unused(self) -> int:
        """Identities no pod uses, waiting out their grace period."""
        return len(self._unused_since)

    def identities(self) -> list[records.Identity]:
        """Every identity the allocator holds (in use or in its grace period)."""
        return [records.Identity(id=numeric_id, labels=labels) for numeric_id, labels in self._labels.items()]

    def seed(self, found: records.Identity) -> bool:
        """Adopt an identity read from etcd at start, unused until acquired; False if it cannot be ours.

        Refused: a number outside the cluster's range, or a label string that already has a number (the
        caller deletes such keys). Call before the first allocate().
        """
        if not self.first <= found.id <= self.last or found.labels in self._ids or found.id in self._labels:
            return False
        self._remember(found.id, found.labels)
        return True

    def lookup(self, labels: str) -> int | None:
        """The number of a label string, if it has one."""
        return self._ids.get(labels)

    def acquire(self, labels: str) -> int:
        """Count one more user of an allocated label string and return its number (KeyError if unallocated)."""
        numeric_id = self._ids[labels]
        self._refs[numeric_id] = self._refs.get(numeric_id, 0) + 1
        self._unused_since.pop(numeric_id, None)
        return numeric_id

    def release(self, labels: str) -> None:
        """Count one user less; the last one starts the identity's grace period."""
        numeric_id = self._ids[labels]
        remaining = self._refs[numeric_id] - 1
        if remaining:
            self._refs[numeric_id] = remaining
            return
        del self._refs[numeric_id]
        self._unused_since[numeric_id] = self.clock.now()

    def expire(self) -> list[records.Identity]:
        """Forget and return the identities unused for the whole grace period; the caller deletes their keys."""
        deadline = self.clock.now() - self.grace
        expired = [numeric_id for numeric_id, since in self._unused_since.items() if since <= deadline]
        gone = []
        for numeric_id in expired:
            del self._unused_since[numeric_id]
            labels = self._labels.pop(numeric_id)
            del self._ids[labels]
            gone.append(records.Identity(id=numeric_id, labels=labels))
        self.released += len(gone)
        return gone

    async def allocate(self, label_sets: Iterable[str]) -> list[records.Identity]:
        """Give each label string without a number one, creating its key in etcd; return the new identities.

        New identities are unused until acquired. Label strings left without a number when the range is full
        are logged and skipped (lookup() stays None). etcd errors are retried with backoff until they succeed,
        so this returns only when every key is written or the range is exhausted; cancellation stops it.
        """
        wanted = list(dict.fromkeys(labels for labels in label_sets if labels not in self._ids))
        candidates = self._candidates(len(wanted))
        if len(candidates) < len(wanted):
            log.error(
                "event=identity.exhausted first=%d last=%d unallocated=%d",
                self.first, self.last, len(wanted) - len(candidates),
            )
        claims = list(zip(wanted, candidates, strict=False))
        size = etcd_client.MAX_TXN_OPS
        batches = [claims[start : start + size] for start in range(0, len(claims), size)]
        slots = asyncio.Semaphore(MAX_CLAIMS_IN_FLIGHT)

        async def create(batch: list[tuple[str, int]]) -> bool:
            async with slots:
                return await self._create_batch(batch)

        async with asyncio.TaskGroup() as group:
            outcomes = [group.create_task(create(batch), name="identity claim") for batch in batches]
        created: list[records.Identity] = []
        for batch, outcome in zip(batches, outcomes, strict=True):
            if outcome.result():
                created.extend(records.Identity(id=numeric_id, labels=labels) for labels, numeric_id in batch)
                continue
            # Some number was taken behind our back (a key we did not list): claim them one at a time, from
            # the same numbers on, to find out which.
            self._next = batch[0][1]
            for labels, _ in batch:
                numeric_id = await self._create_one(labels)
                if numeric_id is not None:
                    created.append(records.Identity(id=numeric_id, labels=labels))
        self.created += len(created)
        return created

    def _candidates(self, count: int) -> list[int]:
        """Up to `count` free numbers, in order from the cursor, wrapping around; advances the cursor."""
        size = self.last - self.first + 1
        found: list[int] = []
        for step in range(size):
            numeric_id = self.first + (self._next - self.first + step) % size
            if numeric_id not in self._labels and numeric_id not in self._taken:
                found.append(numeric_id)
                if len(found) == count:
                    break
        if found:
            self._next = self.first + (found[-1] + 1 - self.first) % size
        return found

    async def _create_batch(self, claims: list[tuple[str, int]]) -> bool:
        """Create every key in one transaction; False (nothing written) if any number is already taken."""
        if not claims:
            return True
        names = [keys.identity_key(numeric_id).encode() for _, numeric_id in claims]
        succeeded = await self._claim([(name, labels) for name, (labels, _) in zip(names, claims, strict=True)])
        for name, (labels, numeric_id) in zip(names, claims, strict=True):
            if succeeded:
                self._remember(numeric_id, labels)
            else:
                self.leases.release(name)
        return succeeded

    async def _create_one(self, labels: str) -> int | None:
        """Claim the next free number for labels, skipping numbers whose key exists; None if exhausted."""
        while True:
            candidates = self._candidates(1)
            if not candidates:
                log.error("event=identity.exhausted first=%d last=%d unallocated=1", self.first, self.last)
                return None
            numeric_id = candidates[0]
            name = keys.identity_key(numeric_id).encode()
            if await self._claim([(name, labels)]):
                self._remember(numeric_id, labels)
                return numeric_id
            self.leases.release(name)
            existing = await self._read(name)
            if existing is not None and existing.value == labels.encode():
                # Ours already: a transaction whose reply was lost, or a key we had not listed.
                if existing.lease:
                    self.leases.adopt(existing.lease, [name])
                self._remember(numeric_id, labels)
                return numeric_id
            log.info("event=identity.taken id=%d", numeric_id)
            self._taken.add(numeric_id)

    async def _claim(self, claims: list[tuple[bytes, str]]) -> bool:
        """One create-only transaction putting each (key, labels) on its lease; whether every key was absent."""
        # Retried here and only here. After a timeout the outcome is unknown; the retry's guard then fails
        # on our own key, and the caller's read-back recognises the label string as ours. The operations are
        # rebuilt on each attempt: after a lost lease, lease_for() hands out a live one. Several claims run at
        # once, each with a backoff of its own (a Backoff is not shared between tasks).
        guards = [etcd_client.version_equals(name, 0) for name, _ in claims]
        retry = self._new_backoff()
        while True:
            try:
                puts = [
                    etcd_client.put_op(name, labels.encode(), lease=await self.leases.lease_for(name))
                    for name, labels in claims
                ]
                result = await self.client.txn(puts, compare=guards)
            except errors.StoreError as exc:
                log.warning("event=identity.create.failed keys=%d reason=%s", len(claims), exc)
                if isinstance(exc, errors.LeaseExpired):
                    await self.leases.verify()
                await retry.wait()
                continue
            return result.succeeded

    def _new_backoff(self) -> backoff.Backoff:
        """A fresh backoff with the allocator's settings."""
        template = self.retry
        return backoff.Backoff(
            initial=template.initial, maximum=template.maximum, factor=template.factor, jitter=template.jitter
        )

    async def _read(self, name: bytes) -> etcd_client.KeyValue | None:
        while True:
            try:
                kv = await self.client.get(name)
            except errors.StoreError as exc:
                log.warning("event=identity.read.failed key=%s reason=%s", name.decode(), exc)
                await self.retry.wait()
                continue
            self.retry.reset()
            return kv

    def _remember(self, numeric_id: int, labels: str) -> None:
        self._ids[labels] = numeric_id
        self._labels[numeric_id] = labels
        self._unused_since[numeric_id] = self.clock.now()
