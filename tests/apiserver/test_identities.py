"""The identity allocator against a real etcd: numbering, create-only claims, stability, grace period.

Covers: numbers handed out in order from the start of the cluster's range and written with a lease; a
number whose key exists with another label string is skipped and left alone (create-only); a key that
already holds our label string is taken back; seeding refuses numbers outside the range and duplicates; a
released identity expires only after its grace period (manual clock) and its number is not reused at once;
an exhausted range is reported, not raised; claims of many identities run several transactions at once and
give the numbers sequential claims would. Excludes: which pods reference which identity (the publisher's
scenarios), restarts of the whole apiserver (test_daemon.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from apiserver import identities
from clustermesh import identity, keys, records
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease
from tests.apiserver.conftest import CLUSTER_ID

FIRST = identity.min_identity(CLUSTER_ID)
LAST = identity.max_identity(CLUSTER_ID)
WEB = "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=cluster-a;"
DB = "k8s:app=db;k8s:io.cilium.k8s.policy.cluster=cluster-a;"
CACHE = "k8s:app=cache;k8s:io.cilium.k8s.policy.cluster=cluster-a;"


@pytest.fixture
def allocator(admin, clock) -> identities.IdentityAllocator:
    leases = etcd_lease.LeasePool(admin, ttl=30)
    return identities.IdentityAllocator(
        admin, leases, cluster_id=CLUSTER_ID, max_clusters=255, clock=clock, grace=100.0
    )


def key(numeric_id: int) -> bytes:
    return keys.identity_key(numeric_id).encode()


async def test_numbers_in_order_from_the_range_start_with_a_lease(admin, allocator) -> None:
    created = await allocator.allocate([WEB, DB, WEB])
    assert created == [records.Identity(FIRST, WEB), records.Identity(FIRST + 1, DB)]
    stored = await admin.get(key(FIRST))
    assert stored is not None and stored.value == WEB.encode() and stored.lease != 0
    assert allocator.lookup(DB) == FIRST + 1
    assert await allocator.allocate([WEB, DB]) == []


async def test_taken_number_is_skipped_and_left_alone(admin, allocator, caplog) -> None:
    await admin.put(key(FIRST), b"k8s:app=someone-else;")
    caplog.set_level(logging.INFO)
    created = await allocator.allocate([WEB, DB])
    assert created == [records.Identity(FIRST + 1, WEB), records.Identity(FIRST + 2, DB)]
    assert (await admin.get(key(FIRST))).value == b"k8s:app=someone-else;"
    assert f"event=identity.taken id={FIRST}" in caplog.text
    # The taken number is never offered again.
    assert await allocator.allocate([CACHE]) == [records.Identity(FIRST + 3, CACHE)]


class ConcurrentTxns:
    """The real client, whose transactions wait until `expected` of them are in flight at once."""

    def __init__(self, client: etcd_client.EtcdClient, expected: int) -> None:
        self._client = client
        self._expected = expected
        self._inflight = 0
        self._all_in = asyncio.Event()
        self.max_inflight = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    async def txn(self, *args: Any, **kwargs: Any) -> etcd_client.TxnResult:
        self._inflight += 1
        self.max_inflight = max(self.max_inflight, self._inflight)
        if self._inflight >= self._expected:
            self._all_in.set()
        try:
            await self._all_in.wait()
            return await self._client.txn(*args, **kwargs)
        finally:
            self._inflight -= 1


async def test_claims_run_in_flight_together_with_the_numbers_of_sequential_claims(admin, clock) -> None:
    await admin.put(key(FIRST + 300), b"k8s:app=someone-else;")
    client = ConcurrentTxns(admin, expected=identities.MAX_CLAIMS_IN_FLIGHT)
    leases = etcd_lease.LeasePool(admin, ttl=30)
    allocator = identities.IdentityAllocator(
        cast(etcd_client.EtcdClient, client), leases, cluster_id=CLUSTER_ID, max_clusters=255, clock=clock, grace=1.0
    )
    labels = [f"k8s:app=a{index:04d};" for index in range(600)]
    # Five batches of at most 128; they would wait for each other forever if claimed one after the other.
    created = await asyncio.wait_for(allocator.allocate(labels), 10)
    assert client.max_inflight == identities.MAX_CLAIMS_IN_FLIGHT
    # The batch holding the taken number was claimed again one number at a time, skipping only that number.
    numbers = {found.labels: found.id for found in created}
    assert len(numbers) == 600 and FIRST + 300 not in numbers.values()
    assert [numbers[text] for text in labels[:300]] == list(range(FIRST, FIRST + 300))
    assert sorted(numbers.values()) == [*range(FIRST, FIRST + 300), *range(FIRST + 301, FIRST + 601)]
    stored = await admin.list_prefix(keys.watch_prefix(keys.Kind.IDENTITIES, "cluster-a", cached=False).encode())
    assert {kv.value.decode(): int(kv.key.rsplit(b"/", 1)[1]) for kv in stored.kvs if kv.lease} == numbers


async def test_key_already_holding_our_labels_is_taken_back(admin, allocator) -> None:
    # A create whose reply was lost: the key is there with our label string.
    await admin.put(key(FIRST), WEB.encode())
    assert await allocator.allocate([WEB]) == [records.Identity(FIRST, WEB)]


async def test_seed_refuses_out_of_range_and_duplicates(allocator) -> None:
    assert allocator.seed(records.Identity(FIRST + 5, WEB))
    assert not allocator.seed(records.Identity(FIRST + 6, WEB))
    assert not allocator.seed(records.Identity(FIRST + 5, DB))
    assert not allocator.seed(records.Identity(LAST + 1, DB))
    assert not allocator.seed(records.Identity(FIRST - 1, DB))
    assert allocator.lookup(WEB) == FIRST + 5


async def test_release_expires_only_after_the_grace_period(allocator, clock) -> None:
    await allocator.allocate([WEB, DB])
    allocator.acquire(WEB)
    allocator.acquire(WEB)
    allocator.acquire(DB)
    allocator.release(WEB)
    clock.advance(1000)
    assert allocator.expire() == []
    allocator.release(WEB)
    allocator.release(DB)
    clock.advance(99)
    assert allocator.expire() == []
    allocator.acquire(DB)
    clock.advance(1)
    assert allocator.expire() == [records.Identity(FIRST, WEB)]
    assert allocator.lookup(WEB) is None and allocator.lookup(DB) == FIRST + 1
    # The freed number is reused last: the next one comes after the highest handed out.
    assert await allocator.allocate([WEB]) == [records.Identity(FIRST + 2, WEB)]


async def test_exhausted_range_is_reported_not_raised(allocator, caplog) -> None:
    for numeric_id in range(FIRST, LAST):
        assert allocator.seed(records.Identity(numeric_id, f"k8s:n={numeric_id};"))
    created = await allocator.allocate([WEB, DB])
    assert created == [records.Identity(LAST, WEB)]
    assert allocator.lookup(DB) is None
    assert "event=identity.exhausted" in caplog.text


async def test_unused_seeded_identities_start_their_grace_period(allocator, clock) -> None:
    allocator.seed(records.Identity(FIRST, WEB))
    assert allocator.unused == 1
    clock.advance(100)
    assert allocator.expire() == [records.Identity(FIRST, WEB)]


def test_acquiring_an_unallocated_label_string_is_refused(allocator) -> None:
    with pytest.raises(KeyError):
        allocator.acquire(WEB)
