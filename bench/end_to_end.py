"""End to end: a change in one cluster's manifests, to the change in a peer cluster's agent.

Cluster A: an etcd (mutual TLS, fsync on) and the real apiserver (`python -m apiserver`) publishing a manifest
directory (200 nodes, 2,000 pods, 200 global services). Cluster B: one real agent (`python -m agent`)
following A's etcd with A's `remote` certificate, as a peer file in its mesh-config directory says. Once the
agent is synced, one pod of A is recreated with a new IP, again and again (its own manifest file, rewritten
atomically); for each change the benchmark records when the file was written, when the new ipcache key
appeared in A's etcd (a watch of this process's own), and when it reached the agent's WatchBatched stream.
Reported: p50/p99 of file → agent (the issue's figure), split into file → etcd (the apiserver: the manifest
watcher's 50 ms debounce, parsing, conversion, the write, until a bare watch of A's etcd sees the key) and
etcd → agent (from that bare watch's event to the agent's stream: the agent's own share — its watch,
validation, cache and stream — over the cheapest watcher of the same event), beside bare etcd put → watch on
the same etcd in the same run.

    python bench/end_to_end.py [--quick] [--json FILE]
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sys
import tempfile
import time
from typing import Any

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import harness, propagation, publish
from clustermesh import keys
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.etcd import watch as etcd_watch

SIZES = {"nodes": 200, "pods": 2000, "identities": 200, "services": 200, "namespaces": 10}
CHANGES, QUICK_CHANGES = 40, 10
# Time between changes: each lands alone, as a pod recreated now and then would.
PAUSE = 0.25
TIMEOUT = 30.0
IP_FIRST = 13


async def _arrivals(stream: Any, expected: set[str], seen: dict[str, float]) -> None:
    """Record when each expected IP arrives on the agent's WatchBatched stream."""
    while (batch := await stream.read()) is not grpc.aio.EOF:
        now = time.perf_counter()
        for event in batch.events:
            if event.key in expected:
                seen.setdefault(event.key, now)


async def _etcd_arrivals(client: Any, prefix: bytes, start: int, expected: set[str], seen: dict[str, float]) -> None:
    """Record when each expected IP's key is put in A's etcd."""
    cut = len(prefix)
    async for batch in etcd_watch.Watch.prefix(client, prefix, start_revision=start, progress_notify=False):
        now = time.perf_counter()
        for event in batch.events:
            name = event.key[cut:].decode()
            if event.type is etcd_watch.EventType.PUT and name in expected:
                seen.setdefault(name, now)


async def _changes(manifests: pathlib.Path, count: int, client: Any, stub: Any) -> dict[str, list[float]]:
    """Recreate one pod with a new IP `count` times; the latencies (ms) of each leg."""
    index = SIZES["pods"]  # a pod of its own, in a file of its own
    ips = [publish.ip_address(IP_FIRST, change) for change in range(1, count + 1)]
    expected = set(ips)
    publish.write_list(manifests / "churn.json", [publish.pod(index, SIZES, publish.ip_address(IP_FIRST, 0))])
    stream = stub.WatchBatched(agent_pb2.WatchRequest(kinds=["ipcache"], skip_initial=True))
    at_agent: dict[str, float] = {}
    at_etcd: dict[str, float] = {}
    written: dict[str, float] = {}
    prefix = keys.watch_prefix(keys.Kind.IPCACHE, propagation.PEER, cached=False).encode()
    watchers = [
        asyncio.create_task(_arrivals(stream, expected, at_agent)),
        asyncio.create_task(_etcd_arrivals(client, prefix, (await client.status()).revision + 1, expected, at_etcd)),
    ]
    try:
        for ip in ips:
            await asyncio.sleep(PAUSE)
            written[ip] = time.perf_counter()
            publish.write_list(manifests / "churn.json", [publish.pod(index, SIZES, ip)])
            async with asyncio.timeout(TIMEOUT):
                while ip not in at_agent or ip not in at_etcd:  # noqa: ASYNC110
                    await asyncio.sleep(0.005)
    finally:
        stream.cancel()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
    return {
        "file_to_agent": [(at_agent[ip] - written[ip]) * 1000 for ip in ips],
        "file_to_etcd": [(at_etcd[ip] - written[ip]) * 1000 for ip in ips],
        "etcd_to_agent": [(at_agent[ip] - at_etcd[ip]) * 1000 for ip in ips],
    }


async def run(quick: bool) -> dict[str, Any]:
    """Cluster A's apiserver and cluster B's agent on A's etcd; the latencies of `CHANGES` pod changes."""
    count = QUICK_CHANGES if quick else CHANGES
    async with harness.etcd_with_tls(propagation.PEER) as (etcd, certs), contextlib.AsyncExitStack() as stack:
        client = await harness.admin_client(etcd, certs)
        stack.push_async_callback(client.close)
        bare_ms, _ = await propagation.bare(client, 1 / PAUSE, 2.0 if quick else 5.0)
        root = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clustermesh-e2e-")))
        manifests = root / "manifests"
        manifests.mkdir()
        publish.write_cluster(manifests, SIZES)
        _, ports, _ = await stack.enter_async_context(publish.apiserver(
            root, manifests, etcd.endpoint, certs.admin, cluster=propagation.PEER, cluster_id=propagation.PEER_ID))
        async with asyncio.timeout(TIMEOUT):
            await publish.wait_ready(ports)
        agent_dir = root / "agent"
        agent_dir.mkdir()
        address = await stack.enter_async_context(propagation.agent_process(agent_dir, etcd.endpoint, certs.remote))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
        legs = await _changes(manifests, count, client, agent_pb2_grpc.AgentStub(channel))
    result: dict[str, Any] = {"changes": count, "sizes": SIZES}
    for leg, samples in legs.items():
        result[f"{leg}_p50_ms"] = harness.percentile(samples, 50)
        result[f"{leg}_p99_ms"] = harness.percentile(samples, 99)
    result["bare_put_watch_p50_ms"] = harness.percentile(bare_ms, 50)
    result["bare_put_watch_p99_ms"] = harness.percentile(bare_ms, 99)
    return result


def report(result: dict[str, Any]) -> None:
    """Print the figures as a table."""
    def pair(leg: str) -> str:
        return f"{result[f'{leg}_p50_ms']:,.1f} / {result[f'{leg}_p99_ms']:,.1f}"

    harness.print_table(f"end to end: {result['changes']} pod changes in cluster A, seen by cluster B's agent", [
        ("manifest file -> peer agent, p50 / p99", pair("file_to_agent"), "ms"),
        ("  file -> a bare watch of A's etcd (apiserver)", pair("file_to_etcd"), "ms"),
        ("  that watch -> B's agent stream (agent)", pair("etcd_to_agent"), "ms"),
        ("bare put -> watch, same etcd", pair("bare_put_watch"), "ms"),
    ])


def main() -> int:
    return harness.main(__doc__, "end_to_end", f"{QUICK_CHANGES} changes instead of {CHANGES}", run, report)


if __name__ == "__main__":
    sys.exit(main())
