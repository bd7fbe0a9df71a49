"""End-to-end: `clustermesh up` as a real process, with real etcds, apiservers and agents — the seed scenario.

Covered, with 2 clusters x 2 agents (`python -m clustermesh up --dir D -o json`, as a user runs it): ready in
under 30 s with every agent reporting every peer ready over its gRPC API; DNS (dnspython, each agent's listener)
answers my-app with backends of both clusters; scaling my-app in cluster-a's manifests reaches cluster-b's agents;
`clustermesh wireguard peers` and `clustermesh connect` against the running mesh; SIGTERM (first run) and
SIGINT (second run) leave no process behind (every pid in mesh.json gone); the second `up` reuses the state
(same CA files, same identity ids in etcd, same ports, the user's manifest edits); an `up` after a SIGKILLed
one stops what that left behind. In-process (LocalMesh): a second run on the same directory is refused, a
killed agent is restarted, cancellation stops everything, and a daemon that cannot start fails the run with its
log and leaves nothing running.

Each test owns the processes it starts: the fixture stops `up` (SIGTERM, then SIGKILL) and, as a last resort,
kills any pid mesh.json still names. Waits are conditions with deadlines, never sleeps. Mesh directories live
directly under /tmp: the agents' unix socket paths must fit in 107 bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import dns.asyncresolver
import pytest
import pytest_asyncio

from clustermesh import errors, keys, tls
from clustermesh.etcd import client as etcd_client
from clustermesh.local_mesh import daemon, layout, manifests, mesh, mesh_file, ownership, status
from tests import helpers

pytestmark = pytest.mark.timeout(120)

APP_NAME = f"{manifests.APP}.{manifests.NAMESPACE}.svc.cluster.local"
READY_BUDGET = 30.0


@pytest.fixture
def mesh_dir() -> Iterator[pathlib.Path]:
    directory = pathlib.Path(tempfile.mkdtemp(prefix="cm-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class Up:
    """One `clustermesh up` process and what it printed."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None
        self.stderr_path = directory / "up.stderr"

    async def start(self, *args: str) -> tuple[mesh_file.MeshFile, float]:
        """Spawn up (with extra args) and return the mesh it printed once ready, and how long that took."""
        started = time.monotonic()
        with self.stderr_path.open("ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "clustermesh", "up", "--dir", str(self.directory), "-o", "json", *args,
                stdout=asyncio.subprocess.PIPE, stderr=stderr, stdin=asyncio.subprocess.DEVNULL,
            )
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(60):
                line = await self.process.stdout.readline()
        except TimeoutError:
            pytest.fail(f"up not ready within 60s; stderr:\n{self.stderr_path.read_text()}")
        if not line:
            await self.process.wait()
            pytest.fail(f"up exited with {self.process.returncode}; stderr:\n{self.stderr_path.read_text()}")
        return mesh_file.decode(line), time.monotonic() - started

    async def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        """Signal up and return its exit status once it exited (SIGKILL after 30 s)."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signum)
            try:
                async with asyncio.timeout(30):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        assert self.process.returncode is not None
        return self.process.returncode

    def kill_leftovers(self) -> None:
        """Last resort after a failure: kill every process mesh.json names (all started by this test's up)."""
        with contextlib.suppress(Exception):
            for pid in mesh_file.load(self.directory).pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest_asyncio.fixture
async def up(mesh_dir: pathlib.Path) -> AsyncIterator[Up]:
    runner = Up(mesh_dir)
    try:
        yield runner
    finally:
        if runner.process is not None:
            await runner.stop()
        runner.kill_leftovers()


async def resolve(agent: mesh_file.Agent) -> set[str]:
    host, _, port = agent.dns.rpartition(":")
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)
    answer = await resolver.resolve(APP_NAME, "A", lifetime=2)
    return {record.address for record in answer}


async def identity_ids(cluster: mesh_file.Cluster) -> dict[int, bytes]:
    """Identity id → labels, as the cluster's etcd holds them (read with the admin pair mesh.json names)."""
    config = etcd_client.EtcdConfig(
        endpoints=tuple(cluster.etcd.endpoints),
        tls=tls.TLSFiles(ca=pathlib.Path(cluster.etcd.ca), cert=pathlib.Path(cluster.etcd.cert),
                         key=pathlib.Path(cluster.etcd.key)),
    )
    prefix = keys.watch_prefix(keys.Kind.IDENTITIES, cluster.name, cached=False).encode()
    async with await etcd_client.EtcdClient.connect(config) as client:
        listed = await client.list_prefix(prefix)
    found = {}
    for kv in listed.kvs:
        parsed = keys.parse_key(kv.key.decode())
        assert parsed is not None and parsed.identity is not None
        found[parsed.identity] = kv.value
    return found


def ca_bytes(mesh: mesh_file.MeshFile) -> dict[str, bytes]:
    return {c.name: pathlib.Path(c.etcd.ca).read_bytes() for c in mesh.clusters}


def assert_all_gone(mesh: mesh_file.MeshFile) -> None:
    alive = [pid for pid in mesh.pids() if daemon.pid_alive(pid)]
    assert not alive, f"still running: {alive}"


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clustermesh", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_up_seed_scenario(up: Up, mesh_dir: pathlib.Path) -> None:
    mesh, elapsed = await up.start()
    assert elapsed < READY_BUDGET, f"2x2 mesh took {elapsed:.1f}s to sync"
    print(f"clustermesh up (2 clusters x 2 agents) ready and synced in {elapsed:.1f}s")
    assert [c.name for c in mesh.clusters] == ["cluster-a", "cluster-b"]
    assert [len(c.agents) for c in mesh.clusters] == [2, 2]
    assert mesh_file.load(mesh_dir) == mesh

    # Status through every agent's gRPC API: every peer ready, with the example's counts.
    reports = await status.read_mesh(mesh)
    assert status.synced(reports), [r.waiting_for() for r in reports]
    for report in reports:
        (peer,) = report.peers.values()
        assert peer.ready and peer.connected and peer.num_nodes == 2 and peer.num_services == 1
        assert peer.num_endpoints == 2 and peer.num_identities >= 1

    # DNS through a real DNS client: backends from both clusters, from every agent.
    backends = {"10.1.1.10", "10.1.2.10", "10.2.1.10", "10.2.2.10"}
    for cluster in mesh.clusters:
        for agent in cluster.agents:
            assert await resolve(agent) == backends

    # Scale my-app in cluster-a: cluster-b's agents follow, live.
    cluster_a = layout.plan(mesh_dir, clusters=2, nodes=2)[0]
    manifests.write_example_app(cluster_a, replicas=3)
    scaled = backends | {manifests.pod_ip(cluster_a, 2)[1]}
    for agent in mesh.cluster("cluster-b").agents:
        async def seen(agent: mesh_file.Agent = agent) -> bool:
            return await resolve(agent) == scaled
        await helpers.eventually(seen, timeout=15, interval=0.1, description=f"{agent.node} sees 3 cluster-a pods")

    # The WireGuard peers of cluster-a-node-1: cluster-b's nodes, with the pair's PSK.
    code, out, err = await run_cli("wireguard", "peers", "--agent", mesh.clusters[0].agents[0].grpc,
                                   "--mesh", str(mesh_dir), "-o", "json")
    assert code == 0, err
    wg = json.loads(out)
    assert [p["node"] for p in wg["peers"]] == ["cluster-b-node-1", "cluster-b-node-2"]
    assert len({p["preshared_key"] for p in wg["peers"]}) == 1
    assert wg["peers"][0]["allowed_ips"] == ["10.2.1.0/24"] and wg["peers"][0]["endpoint"] == "127.0.2.1:51871"

    # The operator CLI against the mesh directory, without spelling out addresses or certificate paths.
    code, out, err = await run_cli("status", "--mesh", str(mesh_dir), "--wait", "--timeout", "20", "-o", "json")
    assert code == 0, err
    assert [(r["cluster"], r["ready"]) for r in json.loads(out)] == [
        ("cluster-a", True), ("cluster-a", True), ("cluster-b", True), ("cluster-b", True)]
    code, out, err = await run_cli("kv", "ls", "cilium/state/services/v1/", "--mesh", str(mesh_dir),
                                   "--cluster", "cluster-b", "-o", "json")
    assert code == 0, err
    assert [e["key"] for e in json.loads(out)] == ["cilium/state/services/v1/cluster-b/my-namespace/my-app"]

    # The exchange `up` did is what `connect` would do: nothing to change.
    code, out, err = await run_cli("connect", "--from", str(mesh_dir / "cluster-a"), "--to",
                                   str(mesh_dir / "cluster-b"), "-o", "json")
    assert code == 0, err
    assert [a["changed"] for a in json.loads(out)["actions"]] == [False, False]

    ca_files = ca_bytes(mesh)
    identities = {c.name: await identity_ids(c) for c in mesh.clusters}
    assert all(identities.values())

    # SIGTERM: every process stops, and mesh.json says so.
    assert await up.stop(signal.SIGTERM) == 0
    assert_all_gone(mesh)
    stopped = mesh_file.load(mesh_dir)
    assert stopped.state == "stopped" and stopped.pids() == mesh.pids()

    # A second up reuses the state: same CA, same identities, same addresses; Ctrl-C stops it.
    again, elapsed = await up.start()
    assert elapsed < READY_BUDGET
    assert ca_bytes(again) == ca_files
    assert {c.name: await identity_ids(c) for c in again.clusters} == identities
    assert [c.etcd.endpoints for c in again.clusters] == [c.etcd.endpoints for c in mesh.clusters]
    assert set(again.pids()).isdisjoint(mesh.pids())
    # The scaled manifest was kept: a user's edits survive a restart.
    assert await resolve(again.cluster("cluster-b").agents[0]) == scaled
    assert await up.stop(signal.SIGINT) == 0
    assert_all_gone(again)


async def test_up_after_a_killed_up_stops_what_it_left_behind(up: Up) -> None:
    first, _ = await up.start("--nodes", "1", "--example", "none")
    # SIGKILL gives up no chance to stop its children (they run in sessions of their own, as they must so
    # that a terminal's Ctrl-C reaches only up): they keep running, named in mesh.json.
    assert await up.stop(signal.SIGKILL) == -signal.SIGKILL
    assert all(daemon.pid_alive(pid) for pid in first.pids())
    second, _ = await up.start("--nodes", "1", "--example", "none")
    assert_all_gone(first)
    assert status.synced(await status.read_mesh(second))
    assert await up.stop() == 0
    assert_all_gone(second)


async def test_local_mesh_refuses_a_second_run_restarts_a_crashed_agent_and_stops_everything(
    mesh_dir: pathlib.Path,
) -> None:
    local = mesh.LocalMesh(mesh.Config(directory=mesh_dir, clusters=2, nodes=1, example=mesh.Example.NONE))
    ready = asyncio.Event()
    runner = asyncio.create_task(local.run(ready=ready))
    try:
        waiter = asyncio.ensure_future(ready.wait())
        done, _ = await asyncio.wait([waiter, runner], timeout=READY_BUDGET, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if runner in done:
            await runner  # raises why it failed
        assert ready.is_set(), f"not synced within {READY_BUDGET}s"
        with pytest.raises(errors.ConfigError, match="in use by another `clustermesh up`"):
            await mesh.LocalMesh(mesh.Config(directory=mesh_dir, clusters=2, nodes=1)).run()

        agent = local.clusters["cluster-b"].agents["cluster-b-node-1"]
        first_pid = agent.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await helpers.eventually(lambda: agent.pid != first_pid and agent.state is daemon.State.RUNNING,
                                 timeout=20, interval=0.05, description="the killed agent is restarted")
        await helpers.eventually(lambda: mesh_file.load(mesh_dir).cluster("cluster-b").agents[0].pid == agent.pid,
                                 timeout=5, description="mesh.json names the new pid")

        async def synced_again() -> bool:
            return status.synced(await status.read_mesh(local.snapshot()))

        await helpers.eventually(synced_again, timeout=20, interval=0.1, description="synced after the restart")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert_all_gone(local.snapshot())
    assert mesh_file.load(mesh_dir).state == "stopped"


async def test_a_daemon_failing_to_start_stops_everything_and_says_why(mesh_dir: pathlib.Path) -> None:
    local = mesh.LocalMesh(mesh.Config(directory=mesh_dir, clusters=2, nodes=1, example=mesh.Example.NONE,
                                       apiserver_args=("--no-such-flag",)))
    with pytest.raises(daemon.DaemonFailed, match=r"(?s)apiserver cluster-.* exited with status 2.*--no-such-flag"):
        await local.run()
    assert_all_gone(local.snapshot())
    assert mesh_file.load(mesh_dir).state == "stopped"
    os.close(ownership.lock(mesh_dir))  # the directory is free again
