"""The peer set: peers added, reconnected and removed live; readiness that never waits on a dead peer; stop
is not remove; the mesh-config directory driving the mesh end to end.

Covers: set_peers() before and during run(); a changed peer file reconnects without dropping entries; a
removed peer is drained and its cluster ID released; the local cluster's own config ignored; ready once
every peer synced or failed its first attempt; cancelling run() keeps every entry; a second run() refused;
configuration problems shown in status without touching the peers; the heap trimmed once at readiness and
after a later relist, not per peer; peers behind one etcd sharing one connection (faults reach both,
removing one leaves the other connected); MeshConfigWatcher + Mesh on a real directory with Cilium-style files.
Excludes: what happens inside one connection (test_remote_cluster.py), conflicts (test_peer_conflicts.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import pathlib
import shutil

import pytest

from agent import cache as mesh_cache
from agent import heap, mesh
from clustermesh import mesh_config
from clustermesh.aio import tcp_proxy
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import process
from clustermesh.keys import Kind
from tests.agent.peer_harness import (
    FAST,
    LOCAL,
    cached_state,
    converged,
    node,
    peer_cluster,
    publish_basic,
    running_mesh,
    status_of,
)
from tests.helpers import eventually


async def test_peers_added_reconnected_and_removed_live(tmp_path: pathlib.Path) -> None:
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(LOCAL, cache, options=FAST)
    async with (
        peer_cluster(tmp_path, "cluster-b", 2, proxied=True) as b,
        peer_cluster(tmp_path, "cluster-c", 3) as c,
        peer_cluster(tmp_path, "cluster-d", 2) as d,
    ):
        await publish_basic(b, cidr_base="10.20")
        await publish_basic(c, cidr_base="10.30")
        await publish_basic(d, cidr_base="10.40")
        agent_mesh.set_peers({"cluster-b": b.peer_config(), "cluster-a": b.peer_config(name="cluster-a")})
        async with running_mesh(agent_mesh):
            await converged(cache, b)
            assert [s.name for s in agent_mesh.statuses()] == ["cluster-b"]  # the local cluster is no peer
            assert agent_mesh.peer_synced("cluster-b") and not agent_mesh.peer_synced("cluster-c")

            agent_mesh.set_peers({"cluster-b": b.peer_config(), "cluster-c": c.peer_config()})
            await converged(cache, c)

            # A changed file reconnects the peer and keeps its entries: the relist reconciles, nothing is drained.
            deleted: list[tuple[Kind, str, str]] = []
            cache.subscribe(lambda ch: deleted.append((ch.kind, ch.cluster, ch.name)) if ch.record is None else None)
            assert b.proxy is not None
            dials = b.proxy.connections
            agent_mesh.set_peers({"cluster-b": b.peer_config(digest="v2"), "cluster-c": c.peer_config()})
            await eventually(lambda: b.proxy.connections > dials and status_of(agent_mesh, "cluster-b").ready,
                             timeout=10)
            assert deleted == []

            # Removal drains the peer and releases its cluster ID: cluster-d (also ID 2) is accepted after.
            agent_mesh.set_peers({"cluster-c": c.peer_config(), "cluster-d": d.peer_config()})
            await eventually(lambda: status_of(agent_mesh, "cluster-d").ready, timeout=10)
            assert "cluster-b" not in cache.peers() and not agent_mesh.peer_synced("cluster-b")
            assert [s.name for s in agent_mesh.statuses()] == ["cluster-c", "cluster-d"]
            await converged(cache, d)


async def test_readiness_skips_dead_peers_and_stop_keeps_entries(tmp_path: pathlib.Path) -> None:
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(LOCAL, cache, options=FAST)
    async with peer_cluster(tmp_path, "cluster-b", 2) as b:
        await publish_basic(b)
        dead = dataclasses.replace(
            b.peer_config(name="cluster-z"),
            etcd=etcd_client.EtcdConfig(endpoints=(f"https://127.0.0.1:{process.free_port()}",), tls=b.certs.remote),
        )
        agent_mesh.set_peers({"cluster-b": b.peer_config(), "cluster-z": dead})
        async with running_mesh(agent_mesh) as task:
            assert status_of(agent_mesh, "cluster-b").ready
            await converged(cache, b)
            z = status_of(agent_mesh, "cluster-z")
            assert not z.connected and z.failures >= 1 and z.last_error and z.status.startswith(
                ("disconnected: ", "connecting to "))
            with pytest.raises(RuntimeError, match="already running"):
                await agent_mesh.run()
            before = cached_state(cache, "cluster-b")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert cached_state(cache, "cluster-b") == before  # stop is not remove
        assert status_of(agent_mesh, "cluster-b").status == "stopped"


async def test_heap_is_trimmed_once_settled_and_after_a_relist(tmp_path: pathlib.Path) -> None:
    trims: list[int] = []
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(LOCAL, cache, options=FAST, trim_heap=lambda: trims.append(len(cache.peers())))
    async with peer_cluster(tmp_path, "cluster-b", 2) as b, peer_cluster(tmp_path, "cluster-c", 3) as c:
        await publish_basic(b, cidr_base="10.20")
        await publish_basic(c, cidr_base="10.30")
        agent_mesh.set_peers({"cluster-b": b.peer_config(), "cluster-c": c.peer_config()})
        async with running_mesh(agent_mesh):  # returns once ready: every peer synced
            assert trims == [2], "one trim, once both peers' lists are in"
            agent_mesh.set_peers({"cluster-b": b.peer_config(digest="v2"), "cluster-c": c.peer_config()})
            await eventually(lambda: len(trims) >= 2, timeout=10, description="a trim after cluster-b's relist")
            assert status_of(agent_mesh, "cluster-b").ready


async def test_peers_behind_one_etcd_share_one_connection(tmp_path: pathlib.Path) -> None:
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(LOCAL, cache, options=FAST)
    async with peer_cluster(tmp_path, "cluster-b", 2, proxied=True, cached=True) as b:
        c = dataclasses.replace(b, name="cluster-c", cluster_id=3)  # as KVStoreMesh: a second cluster, same etcd
        await publish_basic(b, cidr_base="10.20")
        await publish_basic(c, cidr_base="10.30")
        agent_mesh.set_peers({b.name: b.peer_config(), c.name: c.peer_config()})
        assert b.proxy is not None
        async with running_mesh(agent_mesh):
            await converged(cache, b)
            await converged(cache, c)
            assert b.proxy.connections == 1
            # A fault of the shared connection reaches both peers, and both resync once it is back.
            b.proxy.set_mode(tcp_proxy.Mode.REJECT)
            await eventually(lambda: not any(status_of(agent_mesh, p.name).connected for p in (b, c)), timeout=10)
            await b.put(node(b.name, 2, "while-away", cidr="10.20.8.0/24"))
            await c.delete(node(c.name, 3, "node-0"))
            b.proxy.set_mode(tcp_proxy.Mode.FORWARD)
            await eventually(lambda: all(status_of(agent_mesh, p.name).ready for p in (b, c)), timeout=10)
            await converged(cache, b)
            await converged(cache, c)
            # Removing a peer returns its share only: the other keeps the connection and follows its changes.
            connections = b.proxy.connections
            agent_mesh.set_peers({b.name: b.peer_config()})
            await eventually(lambda: c.name not in cache.peers(), timeout=10)
            await b.put(node(b.name, 2, "later", cidr="10.20.9.0/24"))
            await converged(cache, b)
            assert b.proxy.connections == connections and status_of(agent_mesh, b.name).ready


def test_heap_trim_is_glibc_malloc_trim() -> None:
    assert heap.trim() is hasattr(ctypes.CDLL(None), "malloc_trim")


async def test_configuration_problems_show_in_status_and_touch_no_peer(tmp_path: pathlib.Path) -> None:
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(LOCAL, cache, options=FAST)
    async with peer_cluster(tmp_path, "cluster-b", 2) as b:
        await publish_basic(b)
        problems = {
            "cluster-e": "Secret kube-system/cluster-e-secret not found",
            "cluster-a": "the local cluster's own entry",
        }
        agent_mesh.set_peers({"cluster-b": b.peer_config()}, problems)
        assert [(s.name, s.status) for s in agent_mesh.statuses()] == [
            ("cluster-b", "not started"), ("cluster-e", f"not started: {problems['cluster-e']}")]
        async with running_mesh(agent_mesh):  # ready: a peer without configuration is no peer to wait for
            await converged(cache, b)
            e = status_of(agent_mesh, "cluster-e")
            assert (e.ready, e.last_error) == (False, problems["cluster-e"])

            # A bad update of a running peer's configuration: it keeps running, its status says why.
            agent_mesh.set_peers({"cluster-b": b.peer_config()}, {"cluster-b": "tls.key missing; keeping it"})
            status = status_of(agent_mesh, "cluster-b")
            assert status.ready and status.status == "ready; configuration: tls.key missing; keeping it"
            assert [s.name for s in agent_mesh.statuses()] == ["cluster-b"]
            await converged(cache, b)

            agent_mesh.set_peers({"cluster-b": b.peer_config()})
            assert status_of(agent_mesh, "cluster-b").status == "ready"


async def test_mesh_config_directory_drives_the_mesh(tmp_path: pathlib.Path) -> None:
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(LOCAL, cache, options=FAST)
    directory = tmp_path / "clustermesh"
    directory.mkdir()
    async with peer_cluster(tmp_path, "cluster-b", 2) as b:
        await publish_basic(b)
        # Cilium's layout: per-cluster client certificate files beside the peer file, relative paths.
        remote = b.certs.remote
        for source, suffix in ((remote.ca, "etcd-client-ca.crt"), (remote.cert, "etcd-client.crt"),
                               (remote.key, "etcd-client.key")):
            shutil.copy(source, directory / f"cluster-b.{suffix}")
        (directory / "cluster-b").write_text(
            f"endpoints:\n- {b.endpoint}\ntrusted-ca-file: cluster-b.etcd-client-ca.crt\n"
            "cert-file: cluster-b.etcd-client.crt\nkey-file: cluster-b.etcd-client.key\n"
        )
        (directory / "cluster-a").write_text("endpoints:\n- https://127.0.0.1:1\n")
        watcher = mesh_config.MeshConfigWatcher(directory, local_cluster="cluster-a", on_change=agent_mesh.set_peers)
        ready = asyncio.Event()
        watching = asyncio.create_task(watcher.run(ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            async with running_mesh(agent_mesh):
                await converged(cache, b)
                assert [s.name for s in agent_mesh.statuses()] == ["cluster-b"]
                (directory / "cluster-b").unlink()
                await eventually(lambda: cache.peers() == [] and agent_mesh.statuses() == [], timeout=10)
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
