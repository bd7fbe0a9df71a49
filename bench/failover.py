"""Failover: how fast the mesh notices a broken cluster, moves traffic, and heals — every drill scenario, a few times.

For each agent profile, `clustermesh up` (2 clusters x 2 agents) runs in a process of its own with a load of
ENTRIES extra pods (one more global service) in cluster-a, so that agents resync a few thousand entries; then
every scenario runs RUNS times with clustermesh.drill.run, exactly as `clustermesh drill` runs it, with churn in
the broken cluster. Reported per profile and scenario: the median and the worst run of detection (fault → the
agent marks the cluster disconnected), failover (fault → DNS stops answering with the broken backends),
failover after detection, and reconvergence (heal → every cache equals the truth), plus the verdicts.

Profiles:
    defaults  the agent's own keepalive (5 s interval, 5 s timeout); cache TTL 1 s so that failover shows
    fast      keepalive 1 s / 1 s; cache TTL 0.5 s

Targets on the reference machine: a hung etcd detected within 3 s with default keepalive settings, failover in
DNS within 1 s of detection, reconvergence within 2 s of the heal.

    python bench/failover.py [--quick] [--json FILE] [--runs N] [--profiles defaults,fast] [--scenarios a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import harness
from clustermesh import drill
from clustermesh.local_mesh import mesh_file, status

PROFILES: dict[str, tuple[str, ...]] = {
    "defaults": ("--cache-ttl", "1"),
    "fast": ("--keepalive-interval", "1", "--keepalive-timeout", "1", "--cache-ttl", "0.5"),
}
# The fault must outlast detection + cache TTL for failover to show: 10 s + 1 s with the defaults.
DURATIONS = {"defaults": 15.0, "fast": 5.0}
CHURN = 5.0
LOAD_FILE = "bench-load.yaml"
LOAD_NAMESPACE = "bench-load"


def load_manifest(cluster: mesh_file.Cluster, pods: int) -> bytes:
    """A Namespace, a global Service and `pods` running pods with an EndpointSlice, on the cluster's nodes."""
    nodes = cluster.agents
    documents: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LOAD_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "load", "namespace": LOAD_NAMESPACE, "annotations": {"service.cilium.io/global": "true"}},
         "spec": {"type": "ClusterIP", "selector": {"app": "load"},
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}},
    ]
    endpoints = []
    prefix = cluster.pod_cidrs[0].split(".")[:2]
    for index in range(pods):
        node = nodes[index % len(nodes)]
        ip = ".".join([*prefix, str(100 + index // 250), str(index % 250 + 1)])
        name = f"load-{index}"
        documents.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": LOAD_NAMESPACE, "uid": f"bench-{index}", "labels": {"app": "load"}},
            "spec": {"nodeName": node.node, "containers": [{"name": "app", "image": "bench"}]},
            "status": {"phase": "Running", "hostIP": node.ip, "podIP": ip, "podIPs": [{"ip": ip}]},
        })
        endpoints.append({"addresses": [ip], "conditions": {"ready": True}, "nodeName": node.node,
                          "targetRef": {"kind": "Pod", "name": name, "namespace": LOAD_NAMESPACE}})
    documents.append({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "load-1", "namespace": LOAD_NAMESPACE, "labels": {"kubernetes.io/service-name": "load"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints,
    })
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True).encode()


@contextlib.asynccontextmanager
async def running_mesh(profile: str, entries: int) -> AsyncIterator[pathlib.Path]:
    """`clustermesh up` with the profile's agent flags and the load in cluster-a; yields the mesh directory."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix="cmb-", dir="/tmp"))
    with (directory / "up.stderr").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clustermesh", "up", "--dir", str(directory), "--nodes", "2", "-o", "json",
            *PROFILES[profile], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(120):
            line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"up failed:\n{(directory / 'up.stderr').read_text()}")
        mesh = mesh_file.decode(line)
        cluster_a = mesh.clusters[0]
        (pathlib.Path(cluster_a.manifests) / LOAD_FILE).write_bytes(load_manifest(cluster_a, entries))
        async with asyncio.timeout(120):
            while True:
                reports = await status.read_mesh(mesh)
                loaded = [r for r in reports if r.cluster != cluster_a.name]
                if status.synced(reports) and all(
                        r.peers[cluster_a.name].num_endpoints >= entries for r in loaded):
                    break
                await asyncio.sleep(0.2)
        yield directory
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def summary(values: list[float | None]) -> tuple[float | None, float | None]:
    """(median, worst) of the runs that had the phase."""
    known = [value for value in values if value is not None]
    return (harness.percentile(known, 50), max(known)) if known else (None, None)


async def bench_profile(profile: str, scenarios: list[str], runs: int, entries: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with running_mesh(profile, entries) as directory:
        for scenario in scenarios:
            reports = []
            for run in range(runs):
                started = time.monotonic()
                result = await drill.run(drill.DrillConfig(
                    mesh=directory, scenario=scenario, cluster="cluster-a", duration=DURATIONS[profile],
                    churn=CHURN, settle_timeout=60))
                print(f"  {profile} {scenario} #{run + 1}: {result.verdict}, detection {result.detection_s}, "
                      f"failover {result.failover_s}, reconverge {result.reconverge_s} "
                      f"({time.monotonic() - started:.1f}s)", flush=True)
                reports.append(result)
            after = [None if r.failover_s is None or r.detection_s is None else round(r.failover_s - r.detection_s, 3)
                     for r in reports]
            results[scenario] = {
                "runs": runs,
                "verdicts": [r.verdict for r in reports],
                "detection_s": summary([r.detection_s for r in reports]),
                "failover_s": summary([r.failover_s for r in reports]),
                "failover_after_detection_s": summary(after),
                "reconverge_s": summary([r.reconverge_s for r in reports]),
                "stale": sum(r.stale for r in reports),
                "missing": sum(r.missing for r in reports),
            }
    return results


def show(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_results(profile: str, results: dict[str, Any]) -> None:
    rows: list[tuple[str, Any, str]] = []
    for scenario, result in results.items():
        clean = sum(verdict == "clean" for verdict in result["verdicts"])
        rows.append((f"{scenario}: clean runs", f"{clean}/{result['runs']}", ""))
        for metric in ("detection_s", "failover_s", "failover_after_detection_s", "reconverge_s"):
            median, worst = result[metric]
            if median is not None:
                rows.append((f"{scenario}: {metric.removesuffix('_s')}", f"{show(median)} (max {show(worst)})",
                             "s median"))
    harness.print_table(f"failover, profile {profile} ({' '.join(PROFILES[profile])})", rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run per scenario and 500 load entries")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--entries", type=int, default=2000, help="extra pods in the broken cluster (default 2000)")
    parser.add_argument("--profiles", default=",".join(PROFILES), help=f"of {', '.join(PROFILES)}")
    parser.add_argument("--scenarios", default=",".join(drill.SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--json", type=pathlib.Path, help="write the results as JSON")
    args = parser.parse_args()
    runs, entries = (1, 500) if args.quick else (args.runs, args.entries)
    profiles = [p for p in args.profiles.split(",") if p]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [p for p in profiles if p not in PROFILES] + [s for s in scenarios if s not in drill.SCENARIOS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)}")
    results = {}
    for profile in profiles:
        print(f"profile {profile}: starting a 2x2 mesh with {entries} extra entries", flush=True)
        results[profile] = asyncio.run(bench_profile(profile, scenarios, runs, entries))
        print_results(profile, results[profile])
    hang = results.get("defaults", {}).get("etcd-hang")
    if hang is not None:
        median = show(hang["detection_s"][0])
        print(f"\ntarget: etcd-hang detected within 3 s with default keepalives: median {median} s")
    harness.write_json(args.json, {"benchmark": "failover", "entries": entries, "runs": runs, "churn": CHURN,
                                   "durations": DURATIONS, "profiles": {p: list(PROFILES[p]) for p in profiles},
                                   "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
