"""The apiserver's write path alone: a prototype's bound for publishing with conversion off the writing thread.

bench/publish.py measures the whole apiserver, which converts and writes on one thread (CPU-bound from the
first event on). This benchmark measures only what that thread would keep if the conversion ran elsewhere (a
process of its own, feeding encoded values): clustermesh's SyncStore — coalescing, pipelined transactions,
keys on leases (LeasePool, grant-ahead), the sweep and the canary — writing pre-encoded ipcache values of
the apiserver's size, against bare batched transactions (bench/etcd_baseline.batched_puts) of the same
number of keys, in rounds that take turns on the same etcd. The ratio is the publish ratio such a design
could reach at most, if the conversion kept up on a core of its own.

    python bench/publish_writer.py [--quick] [--json FILE]
"""

from __future__ import annotations

import asyncio
import pathlib
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import etcd_baseline, harness
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease
from clustermesh.etcd import sync_store

# What bench/publish.py writes: 58,000 keys, most of them ipcache entries of about this size.
KEYS, QUICK_KEYS = 58_000, 11_600
ROUNDS = 3
VALUE = (b'{"IP":"10.1.2.3","Mask":null,"HostIP":"192.168.0.1","ID":12345,"Key":0,"Metadata":"",'
         b'"K8sNamespace":"namespace-01","K8sPodName":"pod-000012345"}')
LEASE_TTL = 600
# The publisher yields to the event loop every 64 pods so that the stores write while it converts.
YIELD_EVERY = 64


async def store_write(client: etcd_client.EtcdClient, prefix: str, count: int) -> tuple[float, float]:
    """Write count keys through a SyncStore with leases, then sweep and write the canary: (keys/s, CPU s)."""
    leases = etcd_lease.LeasePool(client, ttl=LEASE_TTL)
    store = sync_store.SyncStore(client, leases, prefix=prefix.encode(),
                                 canary=(f"canary/{prefix}".encode(), lambda: b"synced"))
    running = [asyncio.create_task(leases.run()), asyncio.create_task(store.run())]
    try:
        cpu, started = time.process_time(), time.perf_counter()
        for index in range(count):
            store.upsert(f"{prefix}{index:08}".encode(), VALUE)
            if index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        store.mark_synced()
        await store.synced.wait()
        return count / (time.perf_counter() - started), time.process_time() - cpu
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await leases.revoke_all()


async def run(quick: bool) -> dict[str, Any]:
    """Rounds of bare batched puts and SyncStore writes, taking turns; return the figures."""
    count = QUICK_KEYS if quick else KEYS
    rounds = []
    async with harness.etcd_with_tls("writer") as (process, cluster_certs):
        client = await harness.admin_client(process, cluster_certs)
        try:
            for index in range(ROUNDS):
                cpu = time.process_time()
                bare = await etcd_baseline.batched_puts(client, f"bare{index}/", count)
                bare_cpu = time.process_time() - cpu
                store, store_cpu = await store_write(client, f"store{index}/", count)
                rounds.append({"bare_puts_per_s": bare, "bare_cpu_s": bare_cpu, "store_keys_per_s": store,
                               "store_cpu_s": store_cpu, "ratio": store / bare})
        finally:
            await client.close()
    return {
        "keys": count,
        "value_bytes": len(VALUE),
        "rounds": rounds,
        "ratio_store_to_bare": statistics.median(r["ratio"] for r in rounds),
        "bare_puts_per_s": statistics.median(r["bare_puts_per_s"] for r in rounds),
        "store_keys_per_s": statistics.median(r["store_keys_per_s"] for r in rounds),
        "store_cpu_us_per_key": statistics.median(r["store_cpu_s"] for r in rounds) / count * 1e6,
        "bare_cpu_us_per_key": statistics.median(r["bare_cpu_s"] for r in rounds) / count * 1e6,
    }


def report(result: dict[str, Any]) -> None:
    """Print the figures as a table."""
    harness.print_table(f"apiserver write path alone: {result['keys']:,} keys, medians of {ROUNDS} rounds", [
        ("bare batched puts", result["bare_puts_per_s"], "puts/s"),
        ("SyncStore with leases, sweep, canary", result["store_keys_per_s"], "keys/s"),
        ("ratio store / bare", result["ratio_store_to_bare"], "x"),
        ("client CPU per key, bare / store",
         f"{result['bare_cpu_us_per_key']:.1f} / {result['store_cpu_us_per_key']:.1f}", "us"),
    ])


def main() -> int:
    return harness.main(__doc__, "publish_writer", f"{QUICK_KEYS:,} keys instead of {KEYS:,}", run, report)


if __name__ == "__main__":
    sys.exit(main())
