"""The real apiserver process (`python -m apiserver`) against a real etcd: serving, stopping, restarting.

Covers: readiness over HTTP (`/readyz` NotReady → Ready, `/healthz`), the gRPC Apiserver service (cluster
info with pod CIDRs, sync status per kind), gRPC health (SERVING once synced) and reflection, Prometheus
metrics; SIGTERM → exit 0 with every key and lease left in etcd; a restart against the same etcd rewrites
no key (mod revisions and leases unchanged), keeps identity numbers, and writes each canary again only
after the resync of its prefix (mod revision after the prefix's last write); invalid flags → exit 2 with
one line. Ports are picked by the process (port 0) and read from its log.
Excludes: conversion details (test_scenarios.py), flag parsing details (test_main.py).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import signal
import subprocess
import sys

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clustermesh.api.v1 import apiserver_pb2 as pb
from clustermesh.api.v1 import apiserver_pb2_grpc as pb_grpc
from tests.apiserver.conftest import CLUSTER, CLUSTER_ID, canaries, state
from tests.helpers import eventually

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "scenarios" / "apiserver" / "golden.yaml"
DEADLINE = 20.0
_LISTENING = re.compile(r"event=(grpc|http)\.listening (?:server=(\w+) )?address=\S+ port=(\d+)")

LATE_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: echo-3, namespace: ns-alpha, labels: {app: echo}}
spec: {nodeName: node-2, serviceAccountName: echo, containers: [{name: echo}]}
status: {podIP: 10.244.1.21}
"""


class Apiserver:
    """One apiserver subprocess, its output in a log file; ports are read from the log."""

    def __init__(self, log: pathlib.Path, args: list[str]) -> None:
        self.log = log
        self.args = args
        self.process: asyncio.subprocess.Process | None = None
        self.ports: dict[str, int] = {}

    async def start(self) -> None:
        with self.log.open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "apiserver", *self.args,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

        def listening() -> bool:
            assert self.process is not None and self.process.returncode is None, self.log.read_text()
            self.ports = {m[2] or m[1]: int(m[3]) for m in _LISTENING.finditer(self.log.read_text())}
            return {"grpc", "health", "metrics"} <= self.ports.keys()

        await eventually(listening, timeout=DEADLINE)

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET path from the health or metrics server (by path); status and body."""
        port = self.ports["metrics" if path == "/metrics" else "health"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    async def ready(self) -> None:
        async def answers_ready() -> bool:
            assert self.process is not None and self.process.returncode is None, self.log.read_text()
            return await self.get("/readyz") == (200, b"Ready")

        await eventually(answers_ready, timeout=DEADLINE, interval=0.05)

    async def stop(self) -> int:
        """SIGTERM, then the exit status."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(DEADLINE):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise


@pytest.fixture
def manifests(tmp_path) -> pathlib.Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    for name, content in yaml.safe_load(GOLDEN.read_text())["steps"][0]["files"].items():
        (directory / name).write_text(content)
    return directory


@pytest.fixture
async def apiserver(tmp_path, etcd, certs_dir, manifests):
    """`apiserver()` builds an Apiserver for this test's etcd and manifests; all are stopped at teardown."""
    started: list[Apiserver] = []

    def make(*extra: str) -> Apiserver:
        files = certs_dir.admin
        args = [
            "--cluster-name", CLUSTER, "--cluster-id", str(CLUSTER_ID),
            "--etcd-endpoints", etcd.endpoint, "--etcd-ca", str(files.ca),
            "--etcd-cert", str(files.cert), "--etcd-key", str(files.key),
            "--source", f"manifests:{manifests}",
            "--grpc-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
            "--lease-ttl", "60", *extra,
        ]
        server = Apiserver(tmp_path / f"apiserver-{len(started)}.log", args)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.process is not None:
            await server.stop()


async def test_serves_status_then_stops_without_revoking(apiserver, admin) -> None:
    server = apiserver()
    await server.start()
    await server.ready()
    assert await server.get("/healthz") == (200, b"ok")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.ports['grpc']}") as channel:
        info = await pb_grpc.ApiserverStub(channel).GetClusterInfo(pb.GetClusterInfoRequest())
        assert (info.cluster_name, info.cluster_id, info.max_connected_clusters) == (CLUSTER, CLUSTER_ID, 255)
        assert list(info.pod_cidrs) == ["10.244.0.0/24", "10.244.1.0/24", "fd00:10:244::/64"]
        status = await pb_grpc.ApiserverStub(channel).GetSyncStatus(pb.GetSyncStatusRequest())
        assert status.ready and status.source_synced and status.bootstrap_seconds > 0
        assert status.etcd_status.startswith("connected: etcd 3.5")
        counts = {kind.kind: (kind.synced, kind.keys) for kind in status.kinds}
        assert counts == {
            "nodes": (True, 2), "services": (True, 2), "serviceexports": (True, 2),
            "identities": (True, 2), "ipcache": (True, 4),
        }
        for service in ("", "clustermesh.v1.Apiserver"):
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in reflection.ServerReflectionInfo(iter([request])):
            names = {service.name for service in answer.list_services_response.service}
        assert {"clustermesh.v1.Apiserver", "grpc.health.v1.Health"} <= names
    code, metrics = await server.get("/metrics")
    assert code == 200
    synced = "clustermesh_apiserver_kvstore_initial_sync_completed"
    for line in (
        f'clustermesh_apiserver_kvstore_keys{{scope="ipcache",source_cluster="{CLUSTER}"}} 4.0',
        f'{synced}{{action="write",scope="nodes",source_cluster="{CLUSTER}"}} 1.0',
        'clustermesh_apiserver_identities{state="in-use"} 2.0',
        "clustermesh_apiserver_ready 1.0",
    ):
        assert line.encode() in metrics, line
    assert b"clustermesh_apiserver_bootstrap_seconds{" in metrics
    assert b'clustermesh_apiserver_kvstore_writes_total{action="put",scope="services"' in metrics
    before = await state(admin)
    config = before[f"cilium/cluster-config/{CLUSTER}"]
    assert all(kv.create_revision > config.create_revision for kv in before.values() if kv is not config)
    heartbeat = await admin.get(b"cilium/.heartbeat")
    assert heartbeat is not None and heartbeat.lease != 0
    assert await server.stop() == 0
    assert b"event=apiserver.stopped reason=signal" in server.log.read_bytes()
    after = await state(admin)
    assert after == before
    for kv in after.values():
        assert await admin.lease_ttl(kv.lease) > 0


async def test_restart_rewrites_nothing_and_keeps_identities(apiserver, admin, manifests) -> None:
    first = apiserver()
    await first.start()
    await first.ready()
    published = await state(admin)
    first_canaries = await canaries(admin)
    assert await first.stop() == 0

    second = apiserver()
    await second.start()
    await second.ready()
    assert await state(admin) == published, "a restart with nothing changed rewrote keys"
    second_canaries = await canaries(admin)
    assert second_canaries.keys() == first_canaries.keys()
    for key, canary in second_canaries.items():
        assert canary.mod_revision > first_canaries[key].mod_revision, f"{key} was not written again"
    assert await second.stop() == 0

    # A change while no apiserver runs: one more pod of an existing identity.
    (manifests / "late.yaml").write_text(LATE_POD)
    third = apiserver()
    await third.start()
    await third.ready()
    now = await state(admin)
    new_key = "cilium/state/ip/v1/default/10.244.1.21"
    assert now.keys() - published.keys() == {new_key}
    assert {key: now[key] for key in published} == published, "unchanged keys were rewritten"
    assert b'"ID":196609' in now[new_key].value
    third_canaries = await canaries(admin)
    ip_canary = third_canaries[f"cilium/synced/{CLUSTER}/cilium/state/ip/v1"]
    assert ip_canary.mod_revision > now[new_key].mod_revision
    assert ip_canary.mod_revision > second_canaries[f"cilium/synced/{CLUSTER}/cilium/state/ip/v1"].mod_revision


async def test_invalid_flag_exits_2_with_one_line(tmp_path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiserver", "--cluster-name", "cluster-a", "--cluster-id", "0",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    assert err.decode().splitlines() == ["clustermesh-apiserver: error: ClusterID 0 is reserved"]
