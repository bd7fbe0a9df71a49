"""Bare etcd on this machine, through clustermesh's own client: the baselines every other benchmark divides by.

Measures batched-transaction puts (128 per transaction), a paginated range read of 100,000 keys of ~300 bytes
(and the same read by etcdctl, as a reference outside our client), watch delivery rate, and put->watch latency
p50/p99 at a fixed put rate.

    python bench/etcd_baseline.py [--quick] [--json FILE]
"""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import harness
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import process as etcd_process
from clustermesh.etcd import watch as etcd_watch

VALUE = b"v" * 300


async def batched_puts(client: etcd_client.EtcdClient, prefix: str, count: int, *, inflight: int = 4) -> float:
    """Write count keys in 128-put transactions, `inflight` transactions at a time; return puts per second."""
    batches = [
        [etcd_client.put_op(f"{prefix}{i:08}".encode(), VALUE) for i in range(start, min(start + 128, count))]
        for start in range(0, count, 128)
    ]
    queue = iter(batches)

    async def worker() -> None:
        for batch in queue:
            await client.txn(batch)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return count / (time.perf_counter() - started)


async def range_read(client: etcd_client.EtcdClient, prefix: str) -> tuple[float, int]:
    """Seconds to list every key under prefix (paginated at one revision) and how many there were."""
    started = time.perf_counter()
    result = await client.list_prefix(prefix.encode())
    return time.perf_counter() - started, len(result.kvs)


def etcdctl_read(process: etcd_process.EtcdProcess, files: Any, prefix: str) -> float:
    """Seconds for etcdctl (process start included) to read every value under prefix."""
    binary = etcd_process.find_binary("etcdctl")
    started = time.perf_counter()
    subprocess.run(
        [str(binary), f"--endpoints={process.endpoint}", f"--cacert={files.ca}", f"--cert={files.cert}",
         f"--key={files.key}", "get", "--prefix", prefix, "--print-value-only"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


async def watch_rate(client: etcd_client.EtcdClient, prefix: str, count: int) -> float:
    """Events per second delivered by a watch replaying count puts from history."""
    start_rev = (await client.status()).revision + 1
    await batched_puts(client, prefix, count)
    seen = 0
    started = time.perf_counter()
    async for batch in etcd_watch.Watch.prefix(client, prefix.encode(), start_revision=start_rev):
        seen += len(batch.events)
        if seen >= count:
            break
    return count / (time.perf_counter() - started)


async def put_to_watch_latency(
    client: etcd_client.EtcdClient, prefix: str, *, rate: float, duration: float
) -> list[float]:
    """Latency in ms from a put's send to its watch event, at `rate` puts per second for `duration` seconds."""
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    total = int(rate * duration)
    done = asyncio.Event()

    async def consume() -> None:
        async for batch in etcd_watch.Watch.prefix(client, prefix.encode(), start_revision=0):
            now = time.perf_counter()
            for event in batch.events:
                if (t0 := sent.pop(event.key, None)) is not None:
                    latencies.append((now - t0) * 1000)
            if len(latencies) >= total:
                done.set()
                return

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    interval = 1 / rate
    started = time.perf_counter()
    for i in range(total):
        key = f"{prefix}{i:08}".encode()
        delay = started + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[key] = time.perf_counter()
        await client.put(key, VALUE)
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    return latencies


async def run(quick: bool) -> dict[str, Any]:
    """Run every baseline; return the figures."""
    keys = 20_000 if quick else 100_000
    async with harness.etcd_with_tls("baseline") as (process, cluster_certs):
        client = await harness.admin_client(process, cluster_certs)
        try:
            put_rate = await batched_puts(client, "bench/read/", keys)
            read_s, read_n = await range_read(client, "bench/read/")
            etcdctl_s = etcdctl_read(process, cluster_certs.admin, "bench/read/")
            watch_eps = await watch_rate(client, "bench/watch/", keys // 2)
            latencies = await put_to_watch_latency(client, "bench/latency/", rate=500, duration=2 if quick else 6)
        finally:
            await client.close()
    return {
        "keys": read_n,
        "value_bytes": len(VALUE),
        "batched_puts_per_s": put_rate,
        "range_read_s": read_s,
        "range_read_keys_per_s": read_n / read_s,
        "etcdctl_read_s": etcdctl_s,
        "watch_events_per_s": watch_eps,
        "put_watch_rate_per_s": 500,
        "put_watch_p50_ms": harness.percentile(latencies, 50),
        "put_watch_p99_ms": harness.percentile(latencies, 99),
    }


def report(result: dict[str, Any]) -> None:
    """Print the figures as a table."""
    harness.print_table("bare etcd (clustermesh client, mTLS, loopback)", [
        ("batched puts (128/txn)", result["batched_puts_per_s"], "puts/s"),
        (f"range read {result['keys']:,} keys", result["range_read_s"], "s"),
        (f"etcdctl read {result['keys']:,} values", result["etcdctl_read_s"], "s (incl. process start)"),
        ("watch delivery", result["watch_events_per_s"], "events/s"),
        (f"put->watch p50 @{result['put_watch_rate_per_s']}/s", result["put_watch_p50_ms"], "ms"),
        (f"put->watch p99 @{result['put_watch_rate_per_s']}/s", result["put_watch_p99_ms"], "ms"),
    ])


def main() -> int:
    return harness.main(__doc__, "etcd_baseline", "20,000 keys instead of 100,000", run, report)


if __name__ == "__main__":
    sys.exit(main())
