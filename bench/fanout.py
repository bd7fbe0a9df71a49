"""Fan-out: many agents watching one peer etcd, p99 propagation as a ratio to a single agent's in the same run.

One peer etcd (mutual TLS, fsync on) publishing like an apiserver (bench/propagation.py's publish_peer) and
this process writing ipcache entries at 325 changes/s (Cilium's scale-test churn) with propagation.py's open-loop
writer. The agents are lightweight watchers sharing processes: each is a full `agent.mesh.Mesh` with that one
peer — its own etcd connection (gRPC channel, mutual TLS), cluster-config validation, canary gate, one watch
store per kind, decoding, validation and its own cache — and `--processes` worker processes (started with
exec, never fork) host `--agents` of them between them. A full `python -m agent` per watcher would add a gRPC
server, DNS and metrics per agent and ~60 MB each, which two cores cannot run 200 of; what etcd sees is the
same: one connection and six watch streams per agent.

Latency is from a put's send to the change reaching an agent's cache (a cache listener; clocks are the shared
CLOCK_MONOTONIC), over every (change, agent) pair. Measured in order, same writer, same rate and duration:

  single          one agent in one worker process;
  fan-out         `--agents` agents in `--processes` worker processes;
  bare single     one bare etcd watch of the prefix (the cheapest Python watcher there is);
  bare fan-out    `--agents` of those in `--processes` worker processes;
  bare            put->watch on the writing client;

and the figure is fan-out p99 / single p99. Each set of watchers reports its CPU per change per watcher: what
hosting the watchers costs this machine.

Then the sweep: the single agent and the fan-out again, at each of --rates (half the duration each), giving
the ratio per rate and the fan-out's capacity on this machine: the highest rate at which the agents' p99 stays
within 3x a single agent's with nothing missing (`capacity_per_s`).

With --linger MS the writer is a publisher that waits MS between transactions, so that each watch message
carries the changes of MS (latency is then counted from when each change was due): fewer, larger messages.

    python bench/fanout.py [--quick] [--agents N] [--processes P] [--linger MS] [--rates R,R,...] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from agent import cache as mesh_cache
from agent import mesh
from bench import harness, propagation
from clustermesh import keys, tls
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch as etcd_watch
from clustermesh.keys import Kind
from clustermesh.mesh_config import PeerConfig

RATE = 325
TARGET_RATIO = 3.0
SWEEP_RATES = (25, 50, 100, 200)
QUICK_SWEEP_RATES = (50, 150)
AGENTS, PROCESSES = 200, 4
READY_TIMEOUT = 300.0
DRAIN_TIMEOUT = 60.0
POLL_INTERVAL = 0.2
IPCACHE_PREFIX = keys.watch_prefix(Kind.IPCACHE, propagation.PEER, cached=False).encode()
# A worker's results are one JSON line of every arrival: far above asyncio's 64 KiB default line limit.
LINE_LIMIT = 1 << 30


# ----------------------------------------------------------------------------------------------------
# Worker side: `python bench/fanout.py --worker SPEC`, SPEC a JSON object; commands on stdin, results on stdout.


async def worker(spec: dict[str, Any]) -> None:
    """Run spec["watchers"] agents (or bare etcd watches); print "ready"; on "cpu" print the CPU time used so
    far, on "stop" the arrivals, and exit.

    Arrivals: per watcher, the CLOCK_MONOTONIC time each ipcache entry (by its IP) reached it.
    """
    files = tls.TLSFiles(ca=pathlib.Path(spec["ca"]), cert=pathlib.Path(spec["cert"]), key=pathlib.Path(spec["key"]))
    config = etcd_client.EtcdConfig((spec["endpoint"],), tls=files)
    arrivals: list[dict[str, float]] = [{} for _ in range(spec["watchers"])]
    async with asyncio.TaskGroup() as group:
        if spec["bare"]:
            started = [await _bare_watcher(group, config, arrived, index) for index, arrived in enumerate(arrivals)]
        else:
            started = [_agent(group, config, arrived, index) for index, arrived in enumerate(arrivals)]
        for _ in range(int(READY_TIMEOUT / POLL_INTERVAL)):
            stuck = [status for _, waiting in started if (status := waiting())]
            if not stuck:
                break
            await asyncio.sleep(POLL_INTERVAL)
        else:
            raise RuntimeError(f"watchers not synced: {stuck[:3]}")
        _send("ready")
        loop = asyncio.get_running_loop()
        while (line := (await loop.run_in_executor(None, sys.stdin.readline)).strip()) != "stop":
            if not line:
                raise RuntimeError("the parent went away")
            if line == "cpu":
                _send(json.dumps({"cpu_s": time.process_time()}))
        _send(json.dumps({"arrivals": [list(arrived.items()) for arrived in arrivals]}))
        for task, _ in started:
            task.cancel()


Started = tuple[asyncio.Task[None], Callable[[], str]]
"""A watcher's task, and what tells what it still waits for before it is synced ("" once it is)."""


def _agent(
    group: asyncio.TaskGroup, config: etcd_client.EtcdConfig, arrived: dict[str, float], index: int
) -> Started:
    """Start an agent (a Mesh with the one peer) recording into arrived."""
    cache = mesh_cache.MeshCache()
    cache.subscribe(_recorder(arrived))
    agent = mesh.Mesh(mesh.LocalCluster(name=propagation.LOCAL, cluster_id=propagation.LOCAL_ID), cache,
                      options=mesh.PeerOptions(sync_timeout=READY_TIMEOUT))
    agent.set_peers({propagation.PEER: PeerConfig(propagation.PEER, config, "v1")})
    task = group.create_task(agent.run(), name=f"agent {index}")
    # Mesh readiness means settled (synced, or failed once: 50 TLS dials at once on a busy machine can time
    # out a few, which then retry), so poll for synced.
    return task, lambda: "; ".join(status.status for status in agent.statuses() if not status.ready)


async def _bare_watcher(
    group: asyncio.TaskGroup, config: etcd_client.EtcdConfig, arrived: dict[str, float], index: int
) -> Started:
    """Start a bare etcd watch of the ipcache prefix on its own connection, recording into arrived."""
    client = await etcd_client.EtcdClient.connect(config, timeout=READY_TIMEOUT)
    start = (await client.status()).revision + 1
    cut = len(IPCACHE_PREFIX)

    async def watch() -> None:
        try:
            async for batch in etcd_watch.Watch.prefix(client, IPCACHE_PREFIX, start_revision=start):
                now = time.monotonic()
                for event in batch.events:
                    arrived.setdefault(event.key[cut:].decode(), now)
        finally:
            await client.close()

    return group.create_task(watch(), name=f"bare watch {index}"), lambda: ""


def _recorder(arrived: dict[str, float]) -> mesh_cache.Listener:
    def record(change: mesh_cache.Change) -> None:
        if change.kind is Kind.IPCACHE and change.record is not None:
            arrived.setdefault(change.name, time.monotonic())
    return record


def _send(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------
# Parent side


class Workers:
    """Worker processes hosting `watchers` agents (or bare watches) between them; stops them on exit."""

    def __init__(self, spec: dict[str, Any], watchers: int, processes: int) -> None:
        self.spec = spec
        self.split = [watchers // processes + (index < watchers % processes) for index in range(processes)]
        self.procs: list[asyncio.subprocess.Process] = []

    async def __aenter__(self) -> Workers:
        for count in self.split:
            if count:
                self.procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--worker", json.dumps({**self.spec, "watchers": count}),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=LINE_LIMIT,
                ))
        async with asyncio.timeout(READY_TIMEOUT):
            for proc in self.procs:
                if await self._line(proc) != "ready":
                    raise RuntimeError("a worker failed to start its watchers")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    async def cpu(self) -> float:
        """The CPU seconds the workers have used so far, together."""
        total = 0.0
        for proc in self.procs:
            self._command(proc, b"cpu\n")
        for proc in self.procs:
            total += json.loads(await self._line(proc))["cpu_s"]
        return total

    async def arrivals(self) -> list[dict[str, float]]:
        """Stop recording; every agent's arrivals."""
        found: list[dict[str, float]] = []
        for proc in self.procs:
            self._command(proc, b"stop\n")
        for proc in self.procs:
            found.extend(dict(items) for items in json.loads(await self._line(proc))["arrivals"])
        return found

    @staticmethod
    def _command(proc: asyncio.subprocess.Process, line: bytes) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line)

    @staticmethod
    async def _line(proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited with status {await proc.wait()}")
        return line.decode().strip()


Round = tuple[int, int]
"""(changes per second, changes) of one round of writes."""


class Outcome(NamedTuple):
    """What one set of agents saw."""

    latencies_ms: list[float]  # every (change, agent) pair
    reached: float  # the put rate the writer reached
    missing: int  # (change, agent) pairs that never arrived
    cpu_us_per_change: float  # worker CPU per change per agent


async def through_watchers(
    admin: etcd_client.EtcdClient, spec: dict[str, Any], *, watchers: int, processes: int, first: int,
    rounds: tuple[Round, ...], linger: float | None, bare: bool = False,
) -> list[Outcome]:
    """What `watchers` agents (or bare watches) in `processes` processes see of each round's changes.

    Rounds run one after the other on the same watchers; each writes its own keys (from index `first` on) and
    waits for its changes to propagate before the next starts.
    """
    outcomes = []
    measured = []
    async with Workers({**spec, "bare": bare}, watchers, processes) as workers:
        for rate, count in rounds:
            puts = []
            for index in range(first, first + count):
                ip, key = propagation.entry_key(index)
                puts.append((ip, key, propagation.entry_value(ip)))
            first += count
            sent: dict[str, float] = {}
            cpu = await workers.cpu()
            started = time.monotonic()
            reached = await propagation.drive(admin, puts, sent, rate=rate, linger=linger)
            # Let the last puts propagate: a change is missing only if it has not arrived after this.
            await asyncio.sleep(min(DRAIN_TIMEOUT, max(2.0, (time.monotonic() - started) / 4)))
            measured.append((sent, reached, await workers.cpu() - cpu))
        arrivals = await workers.arrivals()
    for sent, reached, cpu in measured:
        # drive() stamps sends with perf_counter; on Linux that is CLOCK_MONOTONIC too, as time.monotonic() is.
        latencies = [(arrived[ip] - t0) * 1000 for arrived in arrivals for ip, t0 in sent.items() if ip in arrived]
        outcomes.append(Outcome(latencies, reached, len(sent) * watchers - len(latencies),
                                cpu / (len(sent) * watchers) * 1e6))
    return outcomes


async def sweep(
    admin: etcd_client.EtcdClient, spec: dict[str, Any], *, agents: int, processes: int, first: int,
    rates: tuple[int, ...], duration: float,
) -> list[dict[str, Any]]:
    """The fan-out ratio at each of `rates`, `duration` seconds each (a single agent's rounds, then the fan-out's)."""
    rounds = tuple((rate, int(rate * duration)) for rate in rates)
    singles = await through_watchers(admin, spec, watchers=1, processes=1, first=first, rounds=rounds, linger=None)
    fanouts = await through_watchers(admin, spec, watchers=agents, processes=processes,
                                     first=first + sum(count for _, count in rounds), rounds=rounds, linger=None)
    rows = []
    for rate, single, fanout in zip(rates, singles, fanouts, strict=True):
        single_p99 = harness.percentile(single.latencies_ms, 99)
        fanout_p99 = harness.percentile(fanout.latencies_ms, 99)
        rows.append({
            "rate_per_s": rate, "single_p99_ms": single_p99, "fanout_p99_ms": fanout_p99,
            "p99_ratio": fanout_p99 / single_p99, "fanout_missing": fanout.missing,
            "fanout_cpu_us_per_change": fanout.cpu_us_per_change,
            "fanout_cores_needed": fanout.cpu_us_per_change * agents * rate / 1e6,
        })
    return rows


def capacity(rows: list[dict[str, Any]]) -> int | None:
    """The highest rate at which the fan-out met the target (p99 within 3x one agent's, nothing missing)."""
    met = [row["rate_per_s"] for row in rows if row["p99_ratio"] <= TARGET_RATIO and not row["fanout_missing"]]
    return max(met, default=None)


async def run(
    quick: bool, agents: int, processes: int, linger: float | None, rates: tuple[int, ...],
) -> dict[str, Any]:
    """Single agent, then the fan-out, then bare etcd, then the sweep over `rates`, on one peer etcd."""
    duration = 3.0 if quick else 10.0
    count = int(RATE * duration)
    async with harness.etcd_with_tls(propagation.PEER) as (peer, peer_certs), contextlib.AsyncExitStack() as stack:
        admin = await harness.admin_client(peer, peer_certs)
        stack.push_async_callback(admin.close)
        await propagation.publish_peer(admin)
        files = peer_certs.remote
        spec = {"endpoint": peer.endpoint, "ca": str(files.ca), "cert": str(files.cert), "key": str(files.key)}
        main = ((RATE, count),)
        [single] = await through_watchers(admin, spec, watchers=1, processes=1, first=0, rounds=main, linger=linger)
        [fanout] = await through_watchers(
            admin, spec, watchers=agents, processes=processes, first=count, rounds=main, linger=linger)
        [bare_single] = await through_watchers(
            admin, spec, watchers=1, processes=1, first=2 * count, rounds=main, linger=linger, bare=True)
        [bare_fanout] = await through_watchers(
            admin, spec, watchers=agents, processes=processes, first=3 * count, rounds=main, linger=linger, bare=True)
        bare_ms, _ = await propagation.bare(admin, RATE, duration)
        rows = await sweep(admin, spec, agents=agents, processes=processes, first=4 * count, rates=rates,
                           duration=duration / 2) if rates else []
    p99 = {name: harness.percentile(outcome.latencies_ms, 99)
           for name, outcome in (("single", single), ("fanout", fanout), ("bare_single", bare_single),
                                 ("bare_fanout", bare_fanout))}
    p50 = {name: harness.percentile(outcome.latencies_ms, 50) for name, outcome in (("single", single),
                                                                                 ("fanout", fanout))}
    result: dict[str, Any] = {
        "rate_per_s": RATE,
        "duration_s": duration,
        "linger_ms": (linger or 0) * 1000,
        "agents": agents,
        "processes": processes,
        "agent_kind": "lightweight watchers sharing processes (a full agent.mesh.Mesh each, own etcd connection)",
        "single_put_rate_per_s": single.reached,
        "fanout_put_rate_per_s": fanout.reached,
        "single_missing": single.missing,
        "fanout_missing": fanout.missing,
        "single_cpu_us_per_change": single.cpu_us_per_change,
        "fanout_cpu_us_per_change": fanout.cpu_us_per_change,
        "bare_p50_ms": harness.percentile(bare_ms, 50),
        "bare_p99_ms": harness.percentile(bare_ms, 99),
        "single_p50_ms": harness.percentile(single.latencies_ms, 50),
        "single_p99_ms": harness.percentile(single.latencies_ms, 99),
        "fanout_p50_ms": harness.percentile(fanout.latencies_ms, 50),
        "fanout_p99_ms": harness.percentile(fanout.latencies_ms, 99),
        "fanout_samples": len(fanout.latencies_ms),
        "bare_watcher_single_p99_ms": harness.percentile(bare_single.latencies_ms, 99),
        "bare_watcher_fanout_p50_ms": harness.percentile(bare_fanout.latencies_ms, 50),
        "bare_watcher_fanout_p99_ms": harness.percentile(bare_fanout.latencies_ms, 99),
        "bare_watcher_fanout_missing": bare_fanout.missing,
        "bare_watcher_cpu_us_per_change": bare_fanout.cpu_us_per_change,
    }
    result["fanout_p99_ratio"] = p99["fanout"] / p99["single"]
    result["sweep"] = rows
    main_row = {"rate_per_s": RATE, "p99_ratio": result["fanout_p99_ratio"], "fanout_missing": fanout.missing}
    result["capacity_per_s"] = capacity([*rows, main_row]) if rows else None
    result["fanout_p50_ratio"] = p50["fanout"] / p50["single"]
    result["bare_watcher_fanout_p99_ratio"] = p99["bare_fanout"] / p99["bare_single"]
    # What hosting the watchers costs this machine: CPU per change per watcher, times watchers and rate.
    result["fanout_cores_needed"] = fanout.cpu_us_per_change * agents * RATE / 1e6
    result["bare_watcher_cores_needed"] = bare_fanout.cpu_us_per_change * agents * RATE / 1e6
    return result


def report(result: dict[str, Any]) -> None:
    """Print the figures as a table."""
    harness.print_table(
        f"fan-out: {result['agents']} agents in {result['processes']} processes, one peer etcd, "
        f"{result['rate_per_s']} changes/s" + (f", writer lingering {result['linger_ms']:g} ms" if result["linger_ms"]
                                                else ""), [
            ("bare put->watch p50 / p99", f"{result['bare_p50_ms']:,.2f} / {result['bare_p99_ms']:,.2f}", "ms"),
            ("single agent put->cache p50 / p99",
             f"{result['single_p50_ms']:,.2f} / {result['single_p99_ms']:,.2f}", "ms"),
            (f"{result['agents']} agents put->cache p50 / p99",
             f"{result['fanout_p50_ms']:,.2f} / {result['fanout_p99_ms']:,.2f}", "ms"),
            ("  samples (changes x agents)", result["fanout_samples"], ""),
            ("agent CPU per change, single / fan-out",
             f"{result['single_cpu_us_per_change']:,.0f} / {result['fanout_cpu_us_per_change']:,.0f}", "us"),
            ("  missing", result["fanout_missing"], ""),
            ("p99 ratio (fan-out / single)", result["fanout_p99_ratio"], "x"),
            ("p50 ratio (fan-out / single)", result["fanout_p50_ratio"], "x"),
            ("  cores the watching agents need", result["fanout_cores_needed"], f"of {harness.machine()['cpus']}"),
            (f"{result['agents']} bare etcd watches p50 / p99",
             f"{result['bare_watcher_fanout_p50_ms']:,.2f} / {result['bare_watcher_fanout_p99_ms']:,.2f}", "ms"),
            ("  p99 ratio (to one bare watch)", result["bare_watcher_fanout_p99_ratio"], "x"),
            ("  CPU per change per watch", result["bare_watcher_cpu_us_per_change"], "us"),
            ("  cores the bare watches need", result["bare_watcher_cores_needed"], f"of {harness.machine()['cpus']}"),
        ])
    if result["sweep"]:
        harness.print_table(
            f"fan-out by rate: {result['agents']} agents; capacity (p99 within {TARGET_RATIO:g}x one agent's, "
            f"nothing missing): {result['capacity_per_s'] or 'below every rate tried'} changes/s", [
                (f"{row['rate_per_s']} changes/s",
                 f"{row['single_p99_ms']:,.1f} / {row['fanout_p99_ms']:,.1f} ms = {row['p99_ratio']:,.1f}x",
                 f"p99 one / all agents; {row['fanout_cores_needed']:.2f} cores, {row['fanout_missing']} missing")
                for row in result["sweep"]
            ])


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated changes per second, got {text!r}") from None
    if any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s of changes instead of 10 s")
    parser.add_argument("--agents", type=int, default=AGENTS, help=f"agents in the fan-out (default {AGENTS})")
    parser.add_argument("--processes", type=int, default=PROCESSES,
                        help=f"worker processes hosting them (default {PROCESSES})")
    parser.add_argument("--linger", type=float, metavar="MS", help="the writer's wait between transactions")
    parser.add_argument("--rates", type=_rates, metavar="R,R,...",
                        help=f"the sweep's rates (default {','.join(map(str, SWEEP_RATES))}; quick "
                             f"{','.join(map(str, QUICK_SWEEP_RATES))}; empty: no sweep)")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(json.loads(args.worker)))
        return 0
    rates = args.rates if args.rates is not None else QUICK_SWEEP_RATES if args.quick else SWEEP_RATES
    result = asyncio.run(run(args.quick, args.agents, args.processes, args.linger and args.linger / 1000, rates))
    report(result)
    harness.write_json(args.json, {"benchmark": "fanout", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
