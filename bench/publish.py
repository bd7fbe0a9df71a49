"""The apiserver publishing a large synthetic cluster into etcd, side by side with bare batched transactions.

A manifest directory describes the cluster (by default 1,000 nodes, 50,000 pods in 5,000 identities over 50
namespaces, 2,000 global services each with an EndpointSlice); the real apiserver process (`python -m
apiserver`) publishes it into an empty etcd with mutual TLS. Reported:

- bootstrap: the apiserver's own bootstrap_seconds (GetSyncStatus: listing, reading the source, conversion,
  writes and canaries), the part of it after the source's initial sync (from the log: what could not be
  converted and written while the source was read, the last queued writes, the sweep and the canaries; the
  publisher writes pods and nodes as they arrive, so most of the conversion is before it), and the wall time
  from process start to `/readyz`; keys/s over each as a ratio to the bare batched-transaction put rate of
  bench/etcd_baseline.py, measured first in the same run on the same etcd
  with as many keys; and the apiserver's CPU time up to `/readyz` (less sensitive than wall time to other
  load on the machine);
- steady state: one pod changes its IP (a recreated pod), N times: latency from the manifest change to the
  new ipcache key in etcd (p50/p99, including the file watcher's debounce), etcd revisions per change, and
  apiserver CPU per change.

With `--profile FILE` the apiserver runs under py-spy (`pip install py-spy`; not a project dependency), which
samples it from start to stop (the thread holding the GIL: the Python work, not gRPC's C threads) and writes
FILE: a speedscope profile (open it at https://www.speedscope.app), or with a `.txt` name py-spy's raw
collapsed stacks (grep-able, or input to flamegraph.pl). The sampler costs the apiserver some speed, so the
figures of a profiled run are not comparable with an unprofiled one.

    python bench/publish.py [--quick] [--json FILE] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import grpc

from bench import etcd_baseline, harness
from clustermesh.api.v1 import apiserver_pb2 as pb
from clustermesh.api.v1 import apiserver_pb2_grpc as pb_grpc
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch as etcd_watch

REPO = pathlib.Path(__file__).resolve().parent.parent
CLUSTER, CLUSTER_ID = "bench", 7
FULL = {"nodes": 1000, "pods": 50_000, "identities": 5000, "services": 2000, "namespaces": 50, "changes": 40}
QUICK = {"nodes": 200, "pods": 10_000, "identities": 1000, "services": 400, "namespaces": 20, "changes": 20}
_LISTENING = re.compile(r"event=(grpc|http)\.listening (?:server=(\w+) )?address=\S+ port=(\d+)")
_TIMEOUT = 600.0
_LOGGED_AT = r"time=(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*event="


def ip_address(prefix: int, index: int) -> str:
    return f"{prefix}.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}"


def pod(index: int, sizes: dict[str, int], ip: str) -> dict[str, Any]:
    app = index % sizes["identities"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"pod-{index}",
            "namespace": f"ns-{app % sizes['namespaces']}",
            "uid": f"00000000-0000-4000-8000-{index:012d}",
            "labels": {"app": f"app-{app}", "tier": "bench"},
        },
        "spec": {
            "nodeName": f"node-{index % sizes['nodes']}",
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}],
        },
        "status": {"phase": "Running", "podIP": ip},
    }


def write_list(path: pathlib.Path, items: list[dict[str, Any]]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    partial.rename(path)


def write_cluster(directory: pathlib.Path, sizes: dict[str, int]) -> None:
    """The synthetic cluster as JSON List files (JSON: the source parses it far faster than YAML)."""
    write_list(directory / "nodes.json", [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": f"node-{n}", "labels": {"kubernetes.io/hostname": f"node-{n}"}},
            "spec": {"podCIDR": f"10.{n >> 8}.{n & 255}.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": ip_address(172, n)}]},
        }
        for n in range(sizes["nodes"])
    ])
    write_list(directory / "namespaces.json", [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{n}"}} for n in range(sizes["namespaces"])
    ])
    pods = [pod(index, sizes, ip_address(11, index)) for index in range(sizes["pods"])]
    chunk = 10_000
    for start in range(0, len(pods), chunk):
        write_list(directory / f"pods-{start // chunk}.json", pods[start : start + chunk])
    services, slices = [], []
    per_app = sizes["pods"] // sizes["identities"]
    for index in range(sizes["services"]):
        namespace = f"ns-{index % sizes['namespaces']}"
        services.append({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"svc-{index}", "namespace": namespace,
                         "annotations": {"service.cilium.io/global": "true"}},
            "spec": {"clusterIP": ip_address(12, index), "selector": {"app": f"app-{index}"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        })
        addresses = [ip_address(11, index + k * sizes["identities"]) for k in range(per_app)]
        slices.append({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{index}-1", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": f"svc-{index}"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}} for address in addresses],
        })
    write_list(directory / "services.json", services)
    write_list(directory / "slices.json", slices)


def _write_phase_seconds(log: str) -> float:
    """Seconds from the source's initial sync to ready (the part of the bootstrap after reading the source)."""
    moments = []
    for event in ("source.synced", "publisher.ready"):
        match = re.search(_LOGGED_AT + re.escape(event), log)
        if match is None:
            raise RuntimeError(f"no {event} line in the apiserver log")
        moments.append(datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f"))
    return (moments[1] - moments[0]).total_seconds()


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _ports(log: pathlib.Path, process: asyncio.subprocess.Process) -> dict[str, int]:
    async with asyncio.timeout(60):
        while True:
            text = await asyncio.to_thread(log.read_text)
            if process.returncode is not None:
                raise RuntimeError(f"apiserver exited:\n{text[-3000:]}")
            ports = {m[2] or m[1]: int(m[3]) for m in _LISTENING.finditer(text)}
            if {"grpc", "health"} <= ports.keys():
                return ports
            await asyncio.sleep(0.02)


async def _change_latencies(
    client: etcd_client.EtcdClient, directory: pathlib.Path, sizes: dict[str, int], pid: int
) -> tuple[list[float], float, float]:
    """Move one pod to a new IP `changes` times; (latencies ms, revisions per change, CPU ms per change)."""
    latencies: list[float] = []
    revisions = 0
    cpu = 0.0
    index = sizes["pods"]  # a pod of its own, in its own file, so the source re-reads only that file
    write_list(directory / "churn.json", [pod(index, sizes, ip_address(13, 0))])
    prefix = b"cilium/state/ip/v1/default/"
    await asyncio.sleep(1.0)  # let the first version land before measuring
    for change in range(1, sizes["changes"] + 1):
        key = prefix + ip_address(13, change).encode()
        start_revision = (await client.status()).revision
        cpu_before = _cpu_seconds(pid)
        started = time.perf_counter()
        write_list(directory / "churn.json", [pod(index, sizes, ip_address(13, change))])
        async with asyncio.timeout(30):
            async for batch in etcd_watch.Watch.prefix(client, prefix, start_revision=start_revision + 1):
                if any(event.key == key for event in batch.events):
                    break
        latencies.append((time.perf_counter() - started) * 1000)
        # Let the delete of the old IP land too before counting.
        await asyncio.sleep(0.2)
        revisions += (await client.status()).revision - start_revision
        cpu += _cpu_seconds(pid) - cpu_before
    return latencies, revisions / sizes["changes"], cpu * 1000 / sizes["changes"]


@contextlib.asynccontextmanager
async def apiserver(
    root: pathlib.Path, manifests: pathlib.Path, endpoint: str, files: Any, *, cluster: str = CLUSTER,
    cluster_id: int = CLUSTER_ID, profile: pathlib.Path | None = None,
) -> AsyncIterator[tuple[int, dict[str, int], float]]:
    """The real apiserver publishing `manifests` into the etcd at endpoint, its log in root; stopped on exit.

    Yields (pid, ports by server name, perf_counter at start) once it listens; the pid is the apiserver's even
    under py-spy (with `profile`).
    """
    log = root / "apiserver.log"
    args = [
        "--cluster-name", cluster, "--cluster-id", str(cluster_id),
        "--etcd-endpoints", endpoint, "--etcd-ca", str(files.ca),
        "--etcd-cert", str(files.cert), "--etcd-key", str(files.key),
        "--source", f"manifests:{manifests}", "--grpc-listen", "127.0.0.1:0",
        "--health-listen", "127.0.0.1:0", "--metrics-listen", "", "--heartbeat-interval", "3600",
    ]
    command = [sys.executable, "-m", "apiserver", *args]
    if profile is not None:
        command = [*_profiler(profile), *command]
    with log.open("wb") as output:
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    pid = process.pid
    try:
        ports = await _ports(log, process)
        if profile is not None:
            # The apiserver is py-spy's child: measure and stop that one (py-spy then writes its profile and
            # exits).
            pid = _only_child(process.pid)
        yield pid, ports, started
    finally:
        if process.returncode is None:
            os.kill(pid, signal.SIGTERM)
        await process.wait()


async def wait_ready(ports: dict[str, int]) -> None:
    """Return once the apiserver's /readyz answers 200 (readiness is announced only over HTTP)."""
    while (await _http_get(ports["health"], "/readyz"))[0] != 200:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def _profiler(output: pathlib.Path) -> list[str]:
    """The py-spy command line that runs a command (appended after it) and samples it into output."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(pathlib.Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    output.parent.mkdir(parents=True, exist_ok=True)
    kind = "raw" if output.suffix == ".txt" else "speedscope"
    return [found, "record", "--gil", "--rate", "200", "--format", kind, "--output", str(output.resolve()), "--"]


def _only_child(pid: int) -> int:
    """The pid of the one child process of pid (the apiserver under py-spy, once it listens)."""
    return int(pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])


async def run(quick: bool, profile: pathlib.Path | None = None) -> dict[str, Any]:
    """Run the benchmark (the apiserver under py-spy if profile is set); return the figures."""
    sizes = QUICK if quick else FULL
    async with harness.etcd_with_tls("publish") as (process, cluster_certs):
        client = await harness.admin_client(process, cluster_certs)
        try:
            with tempfile.TemporaryDirectory(prefix="clustermesh-publish-") as tmp:
                root = pathlib.Path(tmp)
                manifests = root / "manifests"
                manifests.mkdir()
                write_cluster(manifests, sizes)
                expected_keys = sizes["nodes"] + sizes["pods"] + sizes["identities"] + sizes["services"]
                baseline = await etcd_baseline.batched_puts(client, "bench/baseline/", expected_keys)
                await client.delete_prefix(b"bench/")
                async with apiserver(root, manifests, process.endpoint, cluster_certs.admin,
                                     profile=profile) as (pid, ports, started):
                    async with asyncio.timeout(_TIMEOUT):
                        await wait_ready(ports)
                    wall = time.perf_counter() - started
                    cpu_to_ready = _cpu_seconds(pid)
                    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
                        status = await pb_grpc.ApiserverStub(channel).GetSyncStatus(pb.GetSyncStatusRequest())
                    published = sum(kind.keys for kind in status.kinds)
                    write_phase = _write_phase_seconds(await asyncio.to_thread((root / "apiserver.log").read_text))
                    latencies, revisions, cpu_ms = await _change_latencies(client, manifests, sizes, pid)
        finally:
            await client.close()
    keys_per_s = published / status.bootstrap_seconds
    return {
        "sizes": sizes,
        "keys": published,
        "puts": sum(kind.puts for kind in status.kinds),
        "bootstrap_s": status.bootstrap_seconds,
        "wall_to_ready_s": wall,
        "write_phase_s": write_phase,
        "cpu_to_ready_s": cpu_to_ready,
        "publish_keys_per_s": keys_per_s,
        "write_phase_keys_per_s": published / write_phase,
        "baseline_batched_puts_per_s": baseline,
        "ratio_to_baseline": keys_per_s / baseline,
        "write_phase_ratio_to_baseline": published / write_phase / baseline,
        "change_p50_ms": harness.percentile(latencies, 50),
        "change_p99_ms": harness.percentile(latencies, 99),
        "change_revisions": revisions,
        "change_cpu_ms": cpu_ms,
    }


def report(result: dict[str, Any]) -> None:
    """Print the figures as a table."""
    sizes = result["sizes"]
    harness.print_table(
        f"apiserver publish: {sizes['nodes']:,} nodes, {sizes['pods']:,} pods, {sizes['identities']:,} identities,"
        f" {sizes['services']:,} services",
        [
            ("keys published", result["keys"], "keys"),
            ("etcd puts", result["puts"], "puts"),
            ("bootstrap (apiserver)", result["bootstrap_s"], "s"),
            ("process start to /readyz", result["wall_to_ready_s"], "s"),
            ("  of which after the source's sync", result["write_phase_s"], "s (source synced to ready)"),
            ("apiserver CPU to /readyz", result["cpu_to_ready_s"], "s (imports included)"),
            ("publish rate", result["publish_keys_per_s"], "keys/s"),
            ("bare batched puts (same etcd)", result["baseline_batched_puts_per_s"], "puts/s"),
            ("ratio publish / bare", result["ratio_to_baseline"], "x"),
            ("ratio after sync / bare", result["write_phase_ratio_to_baseline"], "x"),
            ("one pod change, p50", result["change_p50_ms"], "ms (file change to etcd)"),
            ("one pod change, p99", result["change_p99_ms"], "ms"),
            ("etcd revisions per change", result["change_revisions"], "revisions"),
            ("apiserver CPU per change", result["change_cpu_ms"], "ms"),
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10,000 pods instead of 50,000")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    parser.add_argument("--profile", type=pathlib.Path, metavar="FILE",
                        help="sample the apiserver with py-spy into FILE (speedscope JSON; raw stacks if *.txt)")
    args = parser.parse_args()
    result = asyncio.run(run(args.quick, args.profile))
    report(result)
    harness.write_json(args.json, {"benchmark": "publish", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
