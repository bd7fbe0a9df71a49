"""Propagation: a change put into a peer's etcd, observed through a real agent's gRPC watch stream.

One peer etcd (mutual TLS, fsync on) publishing like an apiserver (cluster config, canaries, heartbeat), one
`python -m agent` process following it, and this process writing ipcache entries at a fixed rate while it reads
the agent's WatchBatched stream (and, for comparison, its one-message-per-change Watch stream). Each latency is
from the put's send to the event's arrival, so it covers etcd, the agent's watch, decode and validation, its
cache, the stream's queue and gRPC. At each rate (325/s, Cilium's scale-test churn, and ten times that) the
bare etcd put->watch latency (a watch on the writing client, as in bench/etcd_baseline.py) is measured in the
same run with the same writer, and the agent's figures are reported as ratios to it.

Keeping up: a consumer that cannot keep up builds a backlog, and its latency grows through the run; one that
barely keeps up holds a standing backlog, and its latency sits far above etcd's. The agent keeps up at a rate
when the writer reached it, every change arrived, and the median latency of the last fifth of the changes is
at most twice that of the first fifth plus 5 ms (a backlog growing by 1% of 3,250/s would add about 200 ms
over an 8 s run) and at most five times the bare median plus 5 ms.

The writer is open loop (see drive()), not etcd_baseline.put_to_watch_latency's one-put-at-a-time loop: that
loop waits for every put's fsync and tops out near 700 puts/s on the reference machine, so it cannot produce
3,250 changes/s at all.

    python bench/propagation.py [--quick] [--json FILE]
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import pathlib
import signal
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import etcd_baseline, harness
from clustermesh import codec, keys, records
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch as etcd_watch

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER, PEER_ID = "bench-peer", 2
LOCAL, LOCAL_ID = "bench-local", 1
RATES = (325, 3250)
IDENTITY = (PEER_ID << 16) + 100
WARMUP = 50
AGENT_SERVICE = "clustermesh.v1.Agent"


def entry_key(index: int) -> tuple[str, bytes]:
    """The ipcache key name (the IP) and etcd key of the index-th entry."""
    ip = f"10.{100 + index // 65536}.{index // 256 % 256}.{index % 256}"
    return ip, keys.ip_key(ip).encode()


KEEP_UP_FACTOR, KEEP_UP_BARE_FACTOR, KEEP_UP_SLACK_MS = 2.0, 5.0, 5.0


def entry_value(ip: str) -> bytes:
    return codec.encode(records.IPIdentityPair(ip=ip, host_ip="172.18.0.2", id=IDENTITY, k8s_namespace="bench",
                                               k8s_pod_name=f"pod-{ip}"))


async def publish_peer(admin: etcd_client.EtcdClient) -> None:
    """What an apiserver leaves in its etcd before agents read it: config, canaries, heartbeat."""
    config = records.ClusterConfig(id=PEER_ID, capabilities=records.Capabilities(
        synced_canaries=True, max_connected_clusters=255, service_exports_enabled=False))
    await admin.put(keys.cluster_config_key(PEER).encode(), codec.encode(config))
    now = codec.encode_timestamp(datetime.datetime.now(datetime.UTC))
    for kind in keys.Kind:
        await admin.put(keys.synced_canary_key(PEER, kind).encode(), now)
    await admin.put(keys.HEARTBEAT_KEY.encode(), now)


@contextlib.asynccontextmanager
async def agent_process(work: pathlib.Path, endpoint: str, files: Any) -> AsyncIterator[str]:
    """A running agent following the peer; yields its gRPC address once it reports ready."""
    mesh_dir = work / "mesh-config"
    mesh_dir.mkdir()
    (mesh_dir / PEER).write_text(
        f"endpoints:\n- {endpoint}\ntrusted-ca-file: {files.ca}\ncert-file: {files.cert}\nkey-file: {files.key}\n"
    )
    address = f"unix:{work / 'agent.sock'}"
    with (work / "agent.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "--cluster-name", LOCAL, "--cluster-id", str(LOCAL_ID),
            "--node-name", "bench-node", "--mesh-config", str(mesh_dir), "--listen", address,
            "--log-level", "warning", cwd=ROOT, stdout=log, stderr=log,
        )
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60
            while True:
                if proc.returncode is not None or time.monotonic() > deadline:
                    tail = (work / "agent.log").read_text(errors="replace").splitlines()[-20:]
                    raise RuntimeError("the agent did not become ready:\n" + "\n".join(tail))
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answer = await health.Check(health_pb2.HealthCheckRequest(service=AGENT_SERVICE), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                await asyncio.sleep(0.1)
        yield address
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# At most this many transactions in flight: bounded if etcd stalls.
MAX_INFLIGHT = 64
# At most one transaction per this many seconds; the puts due meanwhile share it.
TXN_INTERVAL = 0.001


async def drive(
    admin: etcd_client.EtcdClient, puts: list[tuple[str, bytes, bytes]], sent: dict[str, float], *, rate: float,
    linger: float | None = None,
) -> float:
    """Issue (token, key, value) puts on a fixed schedule of `rate` per second; return the rate reached.

    Open loop, as a publisher writes: whenever the loop wakes, every put that is due goes out in one
    transaction (at most 128, etcd's --max-txn-ops), without waiting for earlier transactions to be answered
    (up to MAX_INFLIGHT). That is how clustermesh's sync store coalesces writes. One put per transaction
    would cap the rate at what etcd fsyncs serially (about 1,500 puts/s on this machine, measured), and the
    latency would then be queueing, not propagation. Each put's send time is recorded under its token.

    With `linger`, a publisher that waits that long between transactions so that each carries more changes:
    each put is then stamped with the time it was due, so its latency includes the wait.
    """
    issued: list[asyncio.Task[etcd_client.TxnResult]] = []
    inflight: set[asyncio.Task[etcd_client.TxnResult]] = set()
    started = time.perf_counter()
    index = 0
    while index < len(puts):
        due = min(len(puts), int((time.perf_counter() - started) * rate) + 1)
        if due <= index:
            await asyncio.sleep(max(started + index / rate - time.perf_counter(), linger or TXN_INTERVAL))
            continue
        if len(inflight) >= MAX_INFLIGHT:
            await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        batch = puts[index : min(due, index + etcd_client.MAX_TXN_OPS)]
        now = time.perf_counter()
        for offset, (token, _, _) in enumerate(batch):
            sent[token] = now if linger is None else started + (index + offset) / rate
        issued.append(asyncio.create_task(admin.txn([etcd_client.put_op(key, value) for _, key, value in batch])))
        inflight.add(issued[-1])
        issued[-1].add_done_callback(inflight.discard)
        index += len(batch)
    reached = len(puts) / (time.perf_counter() - started)
    await asyncio.gather(*issued)  # every transaction's outcome, so a failed write is not silently lost
    return reached


async def measure(
    admin: etcd_client.EtcdClient, puts: list[tuple[str, bytes, bytes]], observed: AsyncIterator[str],
    *, rate: float,
) -> tuple[list[float], float]:
    """Latencies in ms from each put's send to its token appearing in `observed`, and the put rate reached."""
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def consume() -> None:
        async for token in observed:
            now = time.perf_counter()
            if (t0 := sent.pop(token, None)) is not None:
                latencies.append((now - t0) * 1000)
                if len(latencies) == len(puts):
                    return

    consumer = asyncio.create_task(consume())
    try:
        reached = await drive(admin, puts, sent, rate=rate)
        async with asyncio.timeout(30):
            await consumer
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    return latencies, reached


async def bare_keys(admin: etcd_client.EtcdClient, prefix: bytes, start_revision: int) -> AsyncGenerator[str, None]:
    """Every key put under prefix from start_revision on, from an etcd watch."""
    async for batch in etcd_watch.Watch.prefix(admin, prefix, start_revision=start_revision, progress_notify=False):
        for event in batch.events:
            yield event.key.decode()


async def agent_keys(stream: grpc.aio.UnaryStreamCall) -> AsyncIterator[str]:
    """The key of every event of an agent Watch stream that has already delivered its SYNCED marker."""
    while (event := await stream.read()) is not grpc.aio.EOF:
        yield event.key


async def agent_batched_keys(stream: grpc.aio.UnaryStreamCall) -> AsyncIterator[str]:
    """The key of every event of an agent WatchBatched stream that has already delivered its SYNCED marker."""
    while (batch := await stream.read()) is not grpc.aio.EOF:
        for event in batch.events:
            yield event.key


def keeps_up(
    latencies: list[float], expected: int, reached: float, rate: float, bare_p50: float
) -> dict[str, Any]:
    """Whether latency stayed flat and near etcd's (see the module docstring), with the figures it used."""
    fifth = max(1, len(latencies) // 5)
    early = harness.percentile(latencies[:fifth], 50)
    late = harness.percentile(latencies[-fifth:], 50)
    return {
        "early_p50_ms": early,
        "late_p50_ms": late,
        "keeps_up": len(latencies) == expected and reached >= 0.95 * rate
        and late <= KEEP_UP_FACTOR * early + KEEP_UP_SLACK_MS
        and late <= KEEP_UP_BARE_FACTOR * bare_p50 + KEEP_UP_SLACK_MS,
    }


async def bare(admin: etcd_client.EtcdClient, rate: float, duration: float) -> tuple[list[float], float]:
    """etcd put -> watch of the same client, the baseline."""
    prefix = f"bench/bare/{rate}/".encode()
    puts = [(key.decode(), key, etcd_baseline.VALUE)
            for key in (prefix + f"{i:08}".encode() for i in range(int(rate * duration)))]
    # Watching from the next revision: no put can slip in before the watch exists.
    observed = bare_keys(admin, prefix, (await admin.status()).revision + 1)
    try:
        return await measure(admin, puts, observed, rate=rate)
    finally:
        await observed.aclose()


async def through_agent(
    admin: etcd_client.EtcdClient, stub: agent_pb2_grpc.AgentStub, first: int, *, rate: float, duration: float,
    batched: bool,
) -> tuple[list[float], float]:
    """etcd put of ipcache entries -> the agent's WatchBatched (or Watch) stream."""
    request = agent_pb2.WatchRequest(kinds=["ipcache"], skip_initial=True)
    stream = stub.WatchBatched(request) if batched else stub.Watch(request)
    try:
        synced = await stream.read()
        first_event = synced.events[0] if batched else synced
        if first_event.type != agent_pb2.WatchEvent.SYNCED:
            raise RuntimeError(f"expected SYNCED first, got {synced}")
        puts = []
        for index in range(first, first + int(rate * duration)):
            ip, key = entry_key(index)
            puts.append((ip, key, entry_value(ip)))
        observed = agent_batched_keys(stream) if batched else agent_keys(stream)
        return await measure(admin, puts, observed, rate=rate)
    finally:
        stream.cancel()


async def run(quick: bool) -> dict[str, Any]:
    """Measure bare etcd and the agent at each rate; return the figures."""
    duration = 2.0 if quick else 8.0
    results: list[dict[str, Any]] = []
    async with harness.etcd_with_tls(PEER) as (peer, peer_certs), contextlib.AsyncExitStack() as stack:
        admin = await harness.admin_client(peer, peer_certs)
        stack.push_async_callback(admin.close)
        await publish_peer(admin)
        work = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="clustermesh-propagation-")))
        address = await stack.enter_async_context(agent_process(work, peer.endpoint, peer_certs.remote))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
        stub = agent_pb2_grpc.AgentStub(channel)
        await through_agent(admin, stub, 0, rate=200, duration=WARMUP / 200, batched=True)
        next_index = WARMUP
        for rate in RATES:
            expected = int(rate * duration)
            bare_ms, bare_reached = await bare(admin, rate, duration)
            agent_ms, agent_reached = await through_agent(
                admin, stub, next_index, rate=rate, duration=duration, batched=True)
            next_index += expected
            plain_ms, plain_reached = await through_agent(
                admin, stub, next_index, rate=rate, duration=duration, batched=False)
            next_index += expected
            row = {
                "rate_per_s": rate,
                "bare_put_rate_per_s": bare_reached,
                "agent_put_rate_per_s": agent_reached,
                "samples": len(agent_ms),
                "bare_p50_ms": harness.percentile(bare_ms, 50),
                "bare_p99_ms": harness.percentile(bare_ms, 99),
                "agent_p50_ms": harness.percentile(agent_ms, 50),
                "agent_p99_ms": harness.percentile(agent_ms, 99),
                **keeps_up(agent_ms, expected, agent_reached, rate, harness.percentile(bare_ms, 50)),
                "watch_p50_ms": harness.percentile(plain_ms, 50),
                "watch_p99_ms": harness.percentile(plain_ms, 99),
                "watch_keeps_up": keeps_up(
                    plain_ms, expected, plain_reached, rate, harness.percentile(bare_ms, 50))["keeps_up"],
            }
            row["p50_ratio"] = row["agent_p50_ms"] / row["bare_p50_ms"]
            row["p99_ratio"] = row["agent_p99_ms"] / row["bare_p99_ms"]
            row["watch_p99_ratio"] = row["watch_p99_ms"] / row["bare_p99_ms"]
            results.append(row)
    return {"duration_s": duration, "max_inflight_puts": MAX_INFLIGHT, "stream": "WatchBatched", "rates": results}


def report(result: dict[str, Any]) -> None:
    """Print the figures as a table per rate."""
    for row in result["rates"]:
        harness.print_table(f"etcd put -> agent Watch @ {row['rate_per_s']:,} changes/s", [
            ("puts reached (bare / agent)", f"{row['bare_put_rate_per_s']:,.0f} / {row['agent_put_rate_per_s']:,.0f}",
             "puts/s"),
            ("samples", row["samples"], ""),
            ("bare put->watch p50", row["bare_p50_ms"], "ms"),
            ("bare put->watch p99", row["bare_p99_ms"], "ms"),
            ("agent (WatchBatched) p50", row["agent_p50_ms"], "ms"),
            ("agent (WatchBatched) p99", row["agent_p99_ms"], "ms"),
            ("p50 ratio (agent / bare)", row["p50_ratio"], "x"),
            ("p99 ratio (agent / bare)", row["p99_ratio"], "x"),
            ("median latency, first / last fifth", f"{row['early_p50_ms']:,.2f} / {row['late_p50_ms']:,.2f}", "ms"),
            ("keeps up", "yes" if row["keeps_up"] else "NO", ""),
            ("one-message-per-change Watch p50 / p99",
             f"{row['watch_p50_ms']:,.2f} / {row['watch_p99_ms']:,.2f}", "ms"),
            ("  keeps up", "yes" if row["watch_keeps_up"] else "NO", ""),
        ])


def main() -> int:
    return harness.main(__doc__, "propagation", "2 s per rate instead of 8 s", run, report)


if __name__ == "__main__":
    sys.exit(main())
