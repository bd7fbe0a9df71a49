"""`clustermesh status|nodes|identities|ipcache|services|resolve` run as processes against a real agent gRPC server.

Covered: each command's table and `-o json` output, the status text (modelled on `cilium-dbg status
--all-clusters`), exit codes (all ready / a peer not ready / unknown service / unreachable agent / invalid
arguments), `--agent` from CLUSTERMESH_AGENT, and TCP with mutual TLS. The server is agent.grpc_server in this
test's event loop over a cache filled directly; the full agent process is tests/agent/test_agent_process.py's.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from agent import cache as mesh_cache
from agent import config, grpc_server, peer_status, services
from clustermesh import certs, records
from clustermesh.api.v1 import agent_pb2
from clustermesh.cli import agent_commands
from tests.agent import test_services as objects

ROOT = pathlib.Path(__file__).resolve().parent.parent
NS, NAME = objects.NS, objects.NAME

READY_B = peer_status.PeerStatus(
    name="cluster-b", connected=True, ready=True, cluster_id=2, config_retrieved=True, sync_canaries=True,
    synced=peer_status.SyncState(nodes=True, services=True, identities=True, endpoints=True),
    num_nodes=1, num_endpoints=1, num_identities=1, num_services=1, status="ready",
    etcd_endpoint="https://127.0.0.1:2379", etcd_cluster_id="9f649a615d34326f", last_event_age_seconds=0.4,
    heartbeat_age_seconds=3.0,
)


class Statuses:
    def __init__(self) -> None:
        self.items = [READY_B]

    def statuses(self) -> list[peer_status.PeerStatus]:
        return list(self.items)


def cache() -> mesh_cache.MeshCache:
    filled = mesh_cache.MeshCache()
    filled.upsert(mesh_cache.Kind.NODES, "cluster-b", "node-1", records.Node(
        name="node-1", cluster="cluster-b", cluster_id=2, ipv4_alloc_cidr=records.CIDR.parse("10.2.0.0/24"),
        ip_addresses=(records.NodeAddress("InternalIP", "172.18.0.2"),)))
    filled.upsert(mesh_cache.Kind.IDENTITIES, "cluster-b", "131073", records.Identity(131_073, "k8s:app=web;"))
    filled.upsert(mesh_cache.Kind.IPCACHE, "cluster-b", "10.2.0.7", mesh_cache.IPCacheEntry(
        prefix="10.2.0.7", id=131_073, host_ip="172.18.0.2", k8s_namespace=NS, k8s_pod_name="web-1"))
    filled.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}",
                  objects.remote_service("cluster-b", 2, "20.0.0.2", "fd00::2"))
    return filled


def server_for(statuses: Statuses, listen: config.ListenAddress, **kwargs: object) -> grpc_server.GrpcServer:
    data = cache()
    resolver = services.ServiceResolver(data, None, local_cluster="cluster-a", local_cluster_id=1)
    service = grpc_server.AgentService(data, resolver, statuses, agent=grpc_server.AgentIdentity("cluster-a", 1, "n1"))
    return grpc_server.GrpcServer(service, listen, **kwargs)  # type: ignore[arg-type]


class Agent:
    def __init__(self, address: str, statuses: Statuses) -> None:
        self.address = address
        self.statuses = statuses


@pytest.fixture
async def agent(tmp_path: pathlib.Path) -> AsyncIterator[Agent]:
    statuses = Statuses()
    socket = tmp_path / "agent.sock"
    async with objects.running(server_for(statuses, config.ListenAddress(unix_path=socket))):
        yield Agent(f"unix:{socket}", statuses)


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clustermesh", *args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status(agent: Agent) -> None:
    code, out, err = await cli("status", "--agent", agent.address)
    assert code == 0, err
    assert "ClusterMesh:   1/1 remote clusters ready, 1 global-services" in out
    assert "cluster-b: ready, 1 nodes, 1 endpoints, 1 identities, 1 services" in out
    assert "└  etcd: connected: https://127.0.0.1:2379 - ID: 9f649a615d34326f" in out
    assert "cluster-id=2" in out and "sync-canaries=true" in out

    agent.statuses.items = [READY_B, peer_status.PeerStatus(name="cluster-c", status="connecting")]
    code, out, _ = await cli("status", "--agent", agent.address, "-o", "json")
    assert code == 1, "a peer that is not ready fails the status check"
    document = json.loads(out)
    assert [p["name"] for p in document["peers"]] == ["cluster-b", "cluster-c"]
    assert document["peers"][1]["ready"] is False and document["peers"][1]["num_nodes"] == 0, "every field"
    assert document["cluster_name"] == "cluster-a"


async def test_lists(agent: Agent) -> None:
    code, out, _ = await cli("nodes", "--agent", agent.address)
    assert code == 0 and "node-1" in out and "InternalIP=172.18.0.2" in out and "10.2.0.0/24" in out
    code, out, _ = await cli("identities", "--agent", agent.address, "-o", "json")
    assert code == 0 and json.loads(out) == {"identities": [{"id": 131_073, "cluster": "cluster-b",
                                                             "labels": "k8s:app=web;"}]}
    code, out, _ = await cli("ipcache", "--agent", agent.address)
    assert code == 0 and "10.2.0.7" in out and f"{NS}/web-1" in out
    code, out, _ = await cli("services", "--agent", agent.address, "--cluster", "cluster-b")
    assert code == 0 and "20.0.0.2:9090/TCP" in out and "[fd00::2]:9090/TCP" in out
    code, out, _ = await cli("services", "--agent", agent.address, "--cluster", "nope", "-o", "json")
    assert code == 0 and json.loads(out) == {"services": []}


async def test_resolve(agent: Agent) -> None:
    env = {agent_commands.AGENT_ENV: agent.address}
    code, out, _ = await cli("resolve", f"{NS}/{NAME}", env=env)
    assert code == 0
    assert f"{NS}/{NAME}: global, affinity=none" in out and out.count("(preferred)") == 2
    code, out, _ = await cli("resolve", f"{NS}/{NAME}", "-o", "json", env=env)
    document = json.loads(out)
    assert document["found"] and document["global"] and len(document["backends"]) == 2
    code, out, err = await cli("resolve", f"{NS}/unknown", env=env)
    assert code == 1 and f"service {NS}/unknown not found" in err


async def test_usage_and_connection_errors(tmp_path: pathlib.Path, agent: Agent) -> None:
    code, _, err = await cli("resolve", "no-slash", "--agent", agent.address)
    assert code == 2 and "expected NAMESPACE/NAME" in err
    code, _, err = await cli("status", "--agent", "127.0.0.1:1")
    assert code == 2 and "needs --tls-ca, --tls-cert and --tls-key" in err
    code, _, err = await cli("status", "--agent", agent.address, "--tls-ca", "x")
    assert code == 2 and "TLS applies only to a HOST:PORT" in err
    code, _, err = await cli("status", "--agent", f"unix:{tmp_path / 'missing.sock'}", "--timeout", "2")
    assert code == 1 and err.startswith("error: cannot reach the agent at unix:")


async def test_tcp_with_mutual_tls(certs_dir: certs.ClusterCerts) -> None:
    listen = config.ListenAddress(tcp=config.HostPort("127.0.0.1", 0))
    server = server_for(Statuses(), listen, tls_files=certs_dir.server)
    async with objects.running(server):
        files = certs_dir.admin
        code, out, err = await cli("status", "--agent", server.address, "--tls-ca", str(files.ca),
                                   "--tls-cert", str(files.cert), "--tls-key", str(files.key), "-o", "json")
    assert code == 0, err
    assert json.loads(out)["peers"][0]["name"] == "cluster-b"


def test_status_lines_and_ages() -> None:
    status = agent_pb2.AgentStatus(cluster_name="cluster-a", cluster_id=1, node_name="n1", version="0.1.0",
                                   uptime_seconds=3725, num_global_services=10)
    refused = status.peers.add(name="cluster-d", status="refused: clusterID 2 is already used by cluster cluster-b",
                               refused_reason="clusterID 2 is already used by cluster cluster-b", failures=2,
                               last_failure_unix=1000.0, last_error="refused: clusterID 2 is already used by "
                               "cluster cluster-b", revoked=True, last_event_age_seconds=-1)
    refused.heartbeat_age_seconds = -1
    lines = agent_commands.status_lines(status, now_unix=1065.0)
    assert lines[0] == "Agent:         cluster-a (id 1), node n1, clustermesh 0.1.0, up 1h2m5s"
    assert lines[1] == "ClusterMesh:   0/1 remote clusters ready, 10 global-services"
    assert lines[2].startswith("   cluster-d: not-ready, 0 nodes") and lines[2].endswith("2 failures (last: 1m5s ago)")
    assert "last event never, heartbeat never" in lines[3]
    assert sum("already used" in line for line in lines) == 1, "one message, printed once"
    assert any("revoked" in line for line in lines)
    assert [agent_commands.format_age(s) for s in (-1, 0.25, 9.94, 42, 61, 3600)] == [
        "never", "0.2s", "9.9s", "42s", "1m1s", "1h0m0s"]
