"""What every benchmark shares: a real etcd with mutual TLS, the machine's description, tables and JSON.

Benchmarks use only the public API of clustermesh (and subprocesses of its daemons); this module adds nothing
but set-up and reporting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from clustermesh import certs
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import process as etcd_process

# etcd's production defaults, but for a fast single-member start and a keepalive floor that lets the failover
# benchmark's fast agents ping every second. Progress notifications keep etcd's default (every 10 minutes): at
# one a second, as the test suite's etcds have them, each idle watch costs its agent a message a second,
# which at 200 agents of 6 watches was most of an idle fan-out's CPU (1.5 ms instead of 0.13 ms per agent
# per second) and no production etcd sends.
BENCH_ETCD_OPTIONS = etcd_process.EtcdOptions(
    grpc_keepalive_min_time=1.0, election_timeout=0.1, heartbeat_interval=0.01,
)


@contextlib.asynccontextmanager
async def etcd_with_tls(name: str = "bench") -> AsyncIterator[tuple[etcd_process.EtcdProcess, certs.ClusterCerts]]:
    """A throwaway etcd (fsync on, as in production) with a fresh CA; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"clustermesh-{name}-") as tmp:
        root = pathlib.Path(tmp)
        cluster_certs = certs.init_cluster(root / "certs", name)
        process = etcd_process.EtcdProcess(root / "etcd", name=name, server_tls=cluster_certs.server,
                                           options=BENCH_ETCD_OPTIONS)
        async with process:
            yield process, cluster_certs


async def admin_client(process: etcd_process.EtcdProcess, cluster_certs: certs.ClusterCerts) -> etcd_client.EtcdClient:
    """An admin client of the benchmark etcd."""
    return await etcd_client.EtcdClient.connect(process.client_config(cluster_certs.admin))


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU count and model, memory, Python, OS."""
    model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(pathlib.Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
        "python": sys.version.split()[0], "platform": platform.platform(),
    }


def percentile(samples: Sequence[float], pct: float) -> float:
    """The pct-th percentile (0..100) by nearest rank; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def mean(samples: Sequence[float]) -> float:
    """Arithmetic mean; 0.0 for no samples."""
    return statistics.fmean(samples) if samples else 0.0


def print_table(title: str, rows: Sequence[tuple[str, Any, str]]) -> None:
    """Print (metric, value, unit) rows under a title."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}\n{'-' * len(title)}")
    for metric, value, unit in rows:
        shown = f"{value:,.3f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else value
        print(f"  {metric:<{width}}  {shown:>14} {unit}")


def write_json(path: pathlib.Path | None, result: dict[str, Any]) -> None:
    """Write result (with the machine description) as JSON to path, if given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(f"\nwrote {path}")


def main(
    doc: str | None, benchmark: str, quick_help: str,
    run: Callable[[bool], Coroutine[Any, Any, dict[str, Any]]], report: Callable[[dict[str, Any]], None],
) -> int:
    """The command line of a benchmark with only --quick and --json: run it, print its table, write its JSON."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    args = parser.parse_args()
    result = asyncio.run(run(args.quick))
    report(result)
    write_json(args.json, {"benchmark": benchmark, **result})
    return 0

