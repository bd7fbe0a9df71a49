"""The agent as it is deployed: a real `python -m agent` process reading real peer etcds, queried from outside.

Covered, end to end: flags, the mesh-config directory (two good peers, one refused for a duplicate cluster ID,
the local cluster's own file ignored, a peer removed live and drained), local services from a manifest
directory, readiness through gRPC health, the gRPC API (status, lists, ResolveService, Watch of a change put
into a peer's etcd), DNS answers following affinity when local backends disappear, Prometheus metrics over
HTTP, the `clustermesh status|nodes|resolve` CLI against the running agent, SIGTERM (exit 0, socket removed),
and invalid flags (one line, exit 2). Peers are written with the peer-side test harness
(tests/agent/peer_harness.py), as an apiserver would write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.etcd import process
from tests.agent import peer_harness as harness
from tests.helpers import eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
NS, NAME = "my-namespace", "my-app"
LOCAL_BACKEND = "10.1.0.5"
AGENT_SERVICE = "clustermesh.v1.Agent"


def peer_file(directory: pathlib.Path, peer: harness.Peer, *, name: str | None = None) -> None:
    """The mesh-config file an operator (or `clustermesh connect`) writes for a peer: Cilium's etcd YAML."""
    files = peer.certs.remote
    (directory / (name or peer.name)).write_text(
        f"endpoints:\n- {peer.endpoint}\ntrusted-ca-file: {files.ca}\ncert-file: {files.cert}\nkey-file: {files.key}\n"
    )


def write_local_manifests(directory: pathlib.Path) -> None:
    directory.mkdir()
    (directory / "service.json").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": NS, "annotations": {
            "service.cilium.io/global": "true", "service.cilium.io/affinity": "local"}},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))
    (directory / "endpoints.json").write_text(json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{NAME}-local", "namespace": NS, "labels": {"kubernetes.io/service-name": NAME}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [LOCAL_BACKEND], "conditions": {"ready": True}}],
    }))


class Agent:
    """A running agent process and how to reach it."""

    def __init__(self, proc: asyncio.subprocess.Process, socket: pathlib.Path, dns_port: int, metrics_port: int,
                 log: pathlib.Path) -> None:
        self.proc = proc
        self.socket = socket
        self.address = f"unix:{socket}"
        self.dns_port = dns_port
        self.metrics_port = metrics_port
        self.log = log

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    async def ready(self, channel: grpc.aio.Channel) -> bool:
        assert self.proc.returncode is None, f"the agent exited with {self.proc.returncode}:\n{self.log_tail()}"
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=AGENT_SERVICE), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """Run `python -m clustermesh ARGS --agent ADDR`; (exit code, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clustermesh", *args, "--agent", self.address, cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def dns_a(self, name: str) -> list[str]:
        response = await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=self.dns_port,
                                            timeout=5)
        return sorted(item.address for rrset in response.answer for item in rrset)

    def scrape(self) -> dict[tuple[str, str], float]:
        """(metric, target_cluster) -> value of the agent's metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, sample.labels.get("target_cluster", "")): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name.startswith("clustermesh_")
        }


@contextlib.asynccontextmanager
async def agent_process(tmp_path: pathlib.Path, mesh_dir: pathlib.Path, *extra: str) -> AsyncIterator[Agent]:
    socket = tmp_path / "run" / "agent.sock"
    dns_port, metrics_port = process.free_port(), process.free_port()
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "--cluster-name", "cluster-a", "--cluster-id", "1",
            "--node-name", "node-a1", "--mesh-config", str(mesh_dir), "--listen", f"unix:{socket}",
            "--dns-listen", f"127.0.0.1:{dns_port}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--keepalive-interval", "1", "--keepalive-timeout", "1", "--pod-cidr", "10.1.0.0/16", *extra,
            cwd=ROOT, stdout=log_file, stderr=log_file,
        )
    agent = Agent(proc, socket, dns_port, metrics_port, log_path)
    try:
        yield agent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_agent_serves_the_mesh(tmp_path: pathlib.Path) -> None:
    mesh_dir = tmp_path / "mesh-config"
    mesh_dir.mkdir()
    manifests = tmp_path / "manifests"
    write_local_manifests(manifests)
    async with contextlib.AsyncExitStack() as stack:
        b = await stack.enter_async_context(harness.peer_cluster(tmp_path, "cluster-b", 2))
        c = await stack.enter_async_context(harness.peer_cluster(tmp_path, "cluster-c", 3))
        d = await stack.enter_async_context(harness.peer_cluster(tmp_path, "cluster-d", 2))  # b's cluster ID
        await harness.publish_basic(b, cidr_base="10.2")
        await harness.publish_basic(c, cidr_base="10.3")
        await harness.publish_basic(d, cidr_base="10.4")
        for peer in (b, c):
            peer_file(mesh_dir, peer)
        peer_file(mesh_dir, c, name="cluster-a")  # the local cluster's own file: ignored

        agent = await stack.enter_async_context(
            agent_process(tmp_path, mesh_dir, "--local-source", f"manifests:{manifests}"))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(agent.address))
        stub = agent_pb2_grpc.AgentStub(channel)
        await eventually(lambda: agent.ready(channel), timeout=30, interval=0.1, description="agent ready")

        # A third peer claiming cluster-b's ID arrives live and is refused, with the reason in status.
        peer_file(mesh_dir, d)

        async def d_refused() -> bool:
            status = await stub.GetStatus(agent_pb2.GetStatusRequest())
            return any(p.name == "cluster-d" and p.refused_reason for p in status.peers)

        await eventually(d_refused, timeout=20, interval=0.1)
        status = await stub.GetStatus(agent_pb2.GetStatusRequest())
        peers = {p.name: p for p in status.peers}
        assert sorted(peers) == ["cluster-b", "cluster-c", "cluster-d"], "the local cluster's file is ignored"
        for name, cluster_id in (("cluster-b", 2), ("cluster-c", 3)):
            peer = peers[name]
            assert (peer.connected, peer.ready, peer.cluster_id) == (True, True, cluster_id), peer
            assert (peer.num_nodes, peer.num_endpoints, peer.num_identities, peer.num_services) == (3, 4, 3, 1)
        assert not peers["cluster-d"].ready and "cluster-b" in peers["cluster-d"].refused_reason
        assert (status.cluster_name, status.cluster_id, status.node_name) == ("cluster-a", 1, "node-a1")
        assert status.num_global_services == 1

        nodes = (await stub.ListNodes(agent_pb2.ListRequest())).nodes
        assert sorted((n.cluster, n.name) for n in nodes) == [
            (cluster, f"node-{i}") for cluster in ("cluster-b", "cluster-c") for i in range(3)]
        assert len((await stub.ListIPCache(agent_pb2.ListRequest(cluster="cluster-c"))).entries) == 4

        # Affinity local: the local backend only, while it exists.
        fqdn = f"{NAME}.{NS}.svc.cluster.local"
        resolved = await stub.ResolveService(agent_pb2.ResolveServiceRequest(namespace=NS, name=NAME))
        assert resolved.found and resolved.affinity == "local"
        assert [(b.ip, b.local) for b in resolved.backends] == [(LOCAL_BACKEND, True)]
        assert len(resolved.all_backends) == 5
        assert await agent.dns_a(fqdn) == [LOCAL_BACKEND]

        # A change in a peer's etcd reaches a Watch consumer.
        watch = stub.Watch(agent_pb2.WatchRequest(kinds=["ipcache"], skip_initial=True))
        async with asyncio.timeout(10):
            assert (await watch.read()).type == agent_pb2.WatchEvent.SYNCED
            await b.put(harness.ip_entry("10.2.9.9", (2 << 16) + 100))
            event = await watch.read()
        assert (event.type, event.cluster, event.key, event.ipcache.identity) == (
            agent_pb2.WatchEvent.UPSERT, "cluster-b", "10.2.9.9", (2 << 16) + 100)
        watch.cancel()

        # Metrics say the same as status.
        scraped = await asyncio.to_thread(agent.scrape)
        assert scraped[("clustermesh_remote_clusters", "")] == 3
        assert scraped[("clustermesh_remote_cluster_readiness_status", "cluster-b")] == 1
        assert scraped[("clustermesh_remote_cluster_readiness_status", "cluster-d")] == 0
        assert scraped[("clustermesh_global_services", "")] == 1

        # The CLI, as an operator runs it.
        code, out, err = await agent.cli("status")
        assert code == 1, "not every peer is ready (cluster-d is refused)"
        assert "ClusterMesh:   2/3 remote clusters ready, 1 global-services" in out, out
        assert "cluster-b: ready, 3 nodes, 5 endpoints, 3 identities, 1 services" in out, out
        assert "cluster-d: not-ready" in out and "cluster-b" in out.split("cluster-d: not-ready", 1)[1], out
        code, out, _ = await agent.cli("status", "-o", "json")
        assert code == 1 and {p["name"] for p in json.loads(out)["peers"]} == {"cluster-b", "cluster-c", "cluster-d"}
        code, out, _ = await agent.cli("nodes", "--cluster", "cluster-c", "-o", "json")
        assert code == 0 and [n["name"] for n in json.loads(out)["nodes"]] == ["node-0", "node-1", "node-2"]
        code, out, _ = await agent.cli("resolve", f"{NS}/{NAME}")
        assert code == 0 and "affinity=local" in out and "(preferred)" in out, out
        code, _, err = await agent.cli("resolve", f"{NS}/nope")
        assert code == 1 and "not found" in err

        # The local backends disappear: DNS fails over to the peers' backends.
        (manifests / "endpoints.json").unlink()
        remote = ["10.2.0.10", "10.2.0.11", "10.3.0.10", "10.3.0.11"]

        async def failed_over() -> bool:
            return await agent.dns_a(fqdn) == remote

        await eventually(failed_over, timeout=10, interval=0.05)

        # A peer removed from the mesh-config directory is drained.
        (mesh_dir / "cluster-c").unlink()

        async def c_drained() -> bool:
            listed = (await stub.ListNodes(agent_pb2.ListRequest())).nodes
            return {n.cluster for n in listed} == {"cluster-b"}

        await eventually(c_drained, timeout=10, interval=0.05)
        assert await agent.dns_a(fqdn) == ["10.2.0.10", "10.2.0.11"]

        agent.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await agent.proc.wait() == 0, agent.log_tail()
        assert not agent.socket.exists()
        log = agent.log.read_text()
        assert "event=agent.ready" in log and "event=agent.stopped" in log


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"--node-name": None}, "the following arguments are required: --node-name"),
        ({"--cluster-id": "0"}, "ClusterID 0 is reserved"),
        ({"--cluster-id": "x"}, "invalid int value"),
        ({"--listen": "127.0.0.1:7000"}, "requires --tls-ca"),
        ({"--local-source": "nowhere:x"}, "invalid source"),
        ({"--dns-listen": "localhost"}, "--dns-listen: expected HOST:PORT"),
        ({"--cache-ttl": "-1"}, "--cache-ttl: must not be negative"),
        ({"--mesh-config": "/nonexistent"}, "--mesh-config: /nonexistent is not a directory"),
    ],
)
def test_invalid_flags_exit_2_with_one_line(
    tmp_path: pathlib.Path, overrides: dict[str, str | None], message: str
) -> None:
    flags: dict[str, str | None] = {
        "--cluster-name": "cluster-a", "--cluster-id": "1", "--node-name": "n", "--mesh-config": str(tmp_path),
        **overrides,
    }
    argv = [item for flag, value in flags.items() if value is not None for item in (flag, value)]
    result = subprocess.run([sys.executable, "-m", "agent", *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
