"""The agent with `--clustermesh-resource`, as deployed: a real `python -m agent` process that reads its peers from
the ClusterMesh resource and the peer Secrets on the fake kube-apiserver, and connects to real peer etcds.

Covered, end to end: `/healthz` at once and `/readyz` only once the peer configuration was read (an API that
refuses the ClusterMesh list keeps it NotReady); then ready although a peer has not synced yet (gRPC health, which
waits for the peers, is not) and a declared peer has no Secret — reported in status with the reason, the other
peers connected and ready; the peers' TLS files in a private directory (0700,
keys 0600) that is removed at exit; a Secret update reconnecting its peer to the new endpoint with its entries
kept; a Secret created later connecting its peer; a cluster removed from the resource drained; SIGTERM. Peers
and their Secrets are made as `clustermesh connect` makes them. Excluded: serving and the CLI, the same whatever
the peer source (test_agent_process.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import grpc

from clustermesh import connect
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.etcd import process
from tests.agent import peer_harness as harness
from tests.agent.test_agent_process import ROOT, Agent
from tests.helpers import eventually
from tests.kube import test_kubernetes_api as fake

NS = fake.PEER_NAMESPACE


def http_status(port: int, path: str) -> int:
    """The status code of GET path on the agent's health port (0: nothing answers yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def trust_of(peer: harness.Peer, endpoint: str | None = None) -> connect.ClusterTrust:
    return connect.local_trust(name=peer.name, cluster_id=peer.cluster_id, endpoints=(endpoint or peer.endpoint,),
                               certs_dir=peer.certs.dir)


@contextlib.asynccontextmanager
async def fake_api(tmp_path: pathlib.Path) -> AsyncIterator[tuple[fake.FakeCluster, pathlib.Path]]:
    cluster = fake.FakeCluster()
    server = fake.FakeAPIServer(cluster)
    try:
        yield cluster, fake.write_kubeconfig(tmp_path / "kubeconfig", server.url)
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def agent_process(
    tmp_path: pathlib.Path, kubeconfig: pathlib.Path, tls_root: pathlib.Path, health_port: int
) -> AsyncIterator[Agent]:
    socket = tmp_path / "run" / "agent.sock"
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "--cluster-name", "cluster-a", "--cluster-id", "1",
            "--node-name", "node-a1", "--clustermesh-resource", f"kubernetes:{kubeconfig}",
            "--clustermesh-namespace", NS, "--peer-tls-dir", str(tls_root), "--listen", f"unix:{socket}",
            "--health-listen", f"127.0.0.1:{health_port}", "--keepalive-interval", "1", "--keepalive-timeout", "1",
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        )
    agent = Agent(proc, socket, dns_port=0, metrics_port=0, log=log_path)
    try:
        yield agent
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_agent_follows_the_clustermesh_resource_and_its_secrets(tmp_path: pathlib.Path) -> None:
    tls_root = tmp_path / "peer-tls"
    tls_root.mkdir()
    health_port = process.free_port()
    async with contextlib.AsyncExitStack() as stack:
        b = await stack.enter_async_context(harness.peer_cluster(tmp_path, "cluster-b", 2, proxied=True))
        c = await stack.enter_async_context(harness.peer_cluster(tmp_path, "cluster-c", 3))
        e = await stack.enter_async_context(harness.peer_cluster(tmp_path, "cluster-e", 5))
        for peer, cidr_base in ((b, "10.2"), (e, "10.5")):
            await harness.publish_basic(peer, cidr_base=cidr_base)
        # cluster-c's export is not complete yet: no sync canaries, so the agent cannot call it synced.
        await c.publish_config()
        await c.beat()
        cluster, kubeconfig = await stack.enter_async_context(fake_api(tmp_path))
        for peer in (b, c):
            cluster.put(fake.PEER_SECRETS, connect.peer_secret(trust_of(peer), namespace=NS))
        cluster.put(fake.CLUSTER_MESHES, connect.cluster_mesh(["cluster-b", "cluster-c", "cluster-e"], namespace=NS))
        with cluster.changed:
            cluster.failures[fake.CLUSTER_MESHES.path] = 403

        agent = await stack.enter_async_context(agent_process(tmp_path, kubeconfig, tls_root, health_port))
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(agent.address))
        stub = agent_pb2_grpc.AgentStub(channel)

        async def alive() -> bool:
            return await asyncio.to_thread(http_status, health_port, "/healthz") == 200

        # Alive at once; not ready while the peer configuration cannot be read.
        await eventually(alive, timeout=30, interval=0.1, description="/healthz 200")
        await eventually(lambda: "event=kube.list.failed kind=ClusterMesh" in agent.log.read_text(), timeout=10)
        assert await asyncio.to_thread(http_status, health_port, "/readyz") == 500
        with cluster.changed:
            del cluster.failures[fake.CLUSTER_MESHES.path]

        # Ready as soon as the peers are known, although cluster-c is still waiting for its canaries (and
        # cluster-e has no Secret); gRPC health, which waits for every peer to settle, is not SERVING yet.
        async def serving() -> bool:
            return await asyncio.to_thread(http_status, health_port, "/readyz") == 200

        await eventually(serving, timeout=20, interval=0.1, description="/readyz 200")
        assert not await agent.ready(channel)
        await harness.publish_basic(c, cidr_base="10.3")

        async def statuses() -> dict[str, agent_pb2.PeerStatus]:
            return {p.name: p for p in (await stub.GetStatus(agent_pb2.GetStatusRequest())).peers}

        async def b_and_c_ready() -> bool:
            peers = await statuses()
            return all(name in peers and peers[name].ready for name in ("cluster-b", "cluster-c"))

        await eventually(b_and_c_ready, timeout=30, interval=0.1, description="cluster-b and cluster-c ready")
        assert await agent.ready(channel), "every peer with a configuration settled"
        assert await asyncio.to_thread(http_status, health_port, "/readyz") == 200
        peers = await statuses()
        assert sorted(peers) == ["cluster-b", "cluster-c", "cluster-e"]
        missing = f"Secret {NS}/cluster-e-secret not found"
        assert (peers["cluster-e"].ready, peers["cluster-e"].status) == (False, f"not started: {missing}")
        assert peers["cluster-e"].last_error == missing
        assert (peers["cluster-b"].num_nodes, peers["cluster-c"].num_nodes) == (3, 3)

        # The peers' certificates and keys: in a private directory of the given root.
        [private] = list(tls_root.iterdir())
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert stat.S_IMODE((private / "cluster-b.etcd-client.key").stat().st_mode) == 0o600

        # A Secret update reconnects its peer with the new content; its entries are kept meanwhile.
        assert b.proxy is not None and peers["cluster-b"].etcd_endpoint == f"https://{b.proxy.address}"
        cluster.put(fake.PEER_SECRETS, connect.peer_secret(trust_of(b, b.etcd.endpoint), namespace=NS))

        async def b_moved() -> bool:
            status = (await statuses())["cluster-b"]
            return status.ready and status.etcd_endpoint == b.etcd.endpoint

        await eventually(b_moved, timeout=20, interval=0.1, description="cluster-b reconnected to its new endpoint")
        nodes = (await stub.ListNodes(agent_pb2.ListRequest(cluster="cluster-b"))).nodes
        assert len(nodes) == 3

        # The missing Secret appears: its peer connects.
        cluster.put(fake.PEER_SECRETS, connect.peer_secret(trust_of(e), namespace=NS))

        async def e_ready() -> bool:
            return (await statuses())["cluster-e"].ready

        await eventually(e_ready, timeout=20, interval=0.1, description="cluster-e ready")

        # A cluster removed from the resource is drained.
        cluster.put(fake.CLUSTER_MESHES, connect.cluster_mesh(["cluster-b", "cluster-e"], namespace=NS))

        async def c_drained() -> bool:
            listed = (await stub.ListNodes(agent_pb2.ListRequest())).nodes
            return {n.cluster for n in listed} == {"cluster-b", "cluster-e"} and "cluster-c" not in await statuses()

        await eventually(c_drained, timeout=20, interval=0.1, description="cluster-c drained")
        assert not (private / "cluster-c").exists()

        agent.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await agent.proc.wait() == 0, agent.log_tail()
        assert list(tls_root.iterdir()) == [], "the private directory is removed at exit"
        requests = cluster.lists(fake.PEER_SECRETS) + cluster.watches(fake.PEER_SECRETS)
        assert all(query["fieldSelector"].startswith("metadata.name=") for query in requests)


def test_exactly_one_peer_source(tmp_path: pathlib.Path) -> None:
    common = [sys.executable, "-m", "agent", "--cluster-name", "cluster-a", "--cluster-id", "1", "--node-name", "n"]
    for extra, message in (
        ([], "one of the arguments --mesh-config --clustermesh-resource is required"),
        (["--mesh-config", str(tmp_path), "--clustermesh-resource", "kubernetes"], "not allowed with"),
        (["--mesh-config", str(tmp_path), "--clustermesh-namespace", "x"], "applies only with --clustermesh-resource"),
        (["--clustermesh-resource", "kubernetes:/nonexistent"], "--clustermesh-resource: source"),
        (["--clustermesh-resource", "etcd"], "--clustermesh-resource: invalid Kubernetes API 'etcd'"),
        (["--clustermesh-resource", "kubernetes", "--clustermesh-namespace", "Bad_NS"], "--clustermesh-namespace"),
        (["--clustermesh-resource", "kubernetes", "--peer-tls-dir", "/nonexistent"], "--peer-tls-dir"),
    ):
        result = subprocess.run([*common, *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr

