"""The ClusterMesh watcher against the fake kube-apiserver: declared peers and their Secrets, read by name, live.

Covered: which peers a set of ClusterMesh objects declares (defaults, the local cluster, malformed entries,
conflicts, Secrets outside the namespace); the initial delivery and `ready`; every Secret request carrying a
`metadata.name` field selector and only referenced Secrets requested; a Secret created, changed and deleted; a
peer removed from the resource (its Secret watch stopped); a reference changed while Secrets cannot be read
(the peer keeps its previous Secret, a new peer says "not read yet"); an absent CRD; a second run() refused.
Not covered: what a Secret means (tests/test_peer_secrets.py) and the agent around it (tests/agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clustermesh.kube import cluster_mesh
from tests.helpers import running
from tests.kube import test_kubernetes_api as fake

NS = fake.PEER_NAMESPACE
DEADLINE = 10.0
LOCAL = "cluster-a"


def mesh(name: str, *entries: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """A ClusterMesh listing (cluster, secret name[, secret namespace]) entries."""
    clusters = []
    for entry in entries:
        secret = {"name": entry[1]} if len(entry) == 2 else {"name": entry[1], "namespace": entry[2]}
        clusters.append({"name": entry[0], "secret": secret})
    return {"metadata": {"name": name}, "spec": {"clusters": clusters}}


def secret(name: str, value: str = "MQ==") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS}, "type": "Opaque", "data": {"cluster.name": value}}


class Changes:
    """The callback: records every delivered peer set and lets a test wait for one."""

    def __init__(self) -> None:
        self.delivered: list[dict[str, cluster_mesh.PeerSecret]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, peers: dict[str, cluster_mesh.PeerSecret]) -> None:
        async with self._changed:
            self.delivered.append(peers)
            self._changed.notify_all()

    @property
    def latest(self) -> dict[str, cluster_mesh.PeerSecret]:
        return self.delivered[-1]

    async def wait_for(self, predicate: Callable[[dict[str, cluster_mesh.PeerSecret]], bool]) -> None:
        async with asyncio.timeout(DEADLINE), self._changed:
            await self._changed.wait_for(lambda: bool(self.delivered) and predicate(self.latest))


@pytest.fixture
def cluster() -> fake.FakeCluster:
    return fake.FakeCluster()


@pytest.fixture
def kubeconfig(tmp_path: Path, cluster: fake.FakeCluster) -> Iterator[Path]:
    server = fake.FakeAPIServer(cluster)
    try:
        yield fake.write_kubeconfig(tmp_path / "kubeconfig", server.url)
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def watching(kubeconfig: Path, changes: Changes) -> AsyncIterator[cluster_mesh.ClusterMeshWatcher]:
    """The watcher running until the block ends, entered once it is ready."""
    watcher = cluster_mesh.ClusterMeshWatcher(
        kubeconfig, namespace=NS, local_cluster=LOCAL, on_change=changes, options=fake.FAST
    )
    async with running(watcher, timeout=DEADLINE):
        yield watcher


def secret_requests(cluster: fake.FakeCluster) -> list[dict[str, str]]:
    return cluster.lists(fake.PEER_SECRETS) + cluster.watches(fake.PEER_SECRETS)


def test_declared_peers(caplog: pytest.LogCaptureFixture) -> None:
    meshes = {
        "default": mesh("default", ("cluster-b", "cluster-b-secret"), ("cluster-c", "cluster-c-secret", NS),
                        (LOCAL, "cluster-a-secret"), ("cluster-e", "cluster-e-secret", "kube-system"),
                        ("cluster-d", "one")),
        "more": mesh("more", ("cluster-b", "cluster-b-secret", NS), ("cluster-d", "two"), ("Not_A_Name", "x")),
    }
    meshes["more"]["spec"]["clusters"].append({"name": "cluster-f", "secret": {}})

    declared = cluster_mesh.declared_peers(meshes, namespace=NS, local_cluster=LOCAL)

    ref = cluster_mesh.SecretRef
    assert declared == {
        "cluster-b": ref(NS, "cluster-b-secret"),  # listed twice, the same Secret: fine
        "cluster-c": ref(NS, "cluster-c-secret"),
        "cluster-d": f"ClusterMesh default and more give it different Secrets ({NS}/one and {NS}/two)",
        "cluster-e": f"Secret kube-system/cluster-e-secret is outside namespace {NS}, the only one peer Secrets "
                     "are read from",
    }
    assert caplog.text.count("event=cluster_mesh.entry.invalid") == 2


async def test_peers_and_their_secrets_followed_live(cluster: fake.FakeCluster, kubeconfig: Path) -> None:
    stored_b = cluster.put(fake.PEER_SECRETS, secret("cluster-b-secret"))
    cluster.put(fake.PEER_SECRETS, secret("unrelated"))
    cluster.put(fake.CLUSTER_MESHES, mesh(
        "default", ("cluster-b", "cluster-b-secret"), ("cluster-c", "cluster-c-secret"), (LOCAL, "cluster-a-secret"),
        ("cluster-e", "cluster-e-secret", "kube-system"),
    ))
    changes = Changes()
    async with watching(kubeconfig, changes):
        assert len(changes.delivered) == 1, "delivered once everything was read, not piece by piece"
        initial = changes.latest
        assert sorted(initial) == ["cluster-b", "cluster-c", "cluster-e"], "the local cluster is no peer"
        assert initial["cluster-b"] == cluster_mesh.PeerSecret("cluster-b", secret=stored_b)
        assert initial["cluster-c"].problem == f"Secret {NS}/cluster-c-secret not found"
        assert initial["cluster-e"].secret is None and "outside namespace" in initial["cluster-e"].problem
        selectors = {query.get("fieldSelector") for query in secret_requests(cluster)}
        assert selectors == {"metadata.name=cluster-b-secret", "metadata.name=cluster-c-secret"}

        stored_c = cluster.put(fake.PEER_SECRETS, secret("cluster-c-secret"))
        await changes.wait_for(lambda peers: peers["cluster-c"].secret == stored_c)
        changed_b = cluster.put(fake.PEER_SECRETS, secret("cluster-b-secret", "Mg=="))
        await changes.wait_for(lambda peers: peers["cluster-b"].secret == changed_b)

        watches_before = cluster.active_watches
        cluster.put(fake.CLUSTER_MESHES, mesh("default", ("cluster-b", "cluster-b-secret")))
        await changes.wait_for(lambda peers: sorted(peers) == ["cluster-b"])
        await fake.eventually(lambda: cluster.active_watches == watches_before - 1)  # cluster-c's Secret

        cluster.delete(fake.PEER_SECRETS, "cluster-b-secret", NS)
        await changes.wait_for(lambda peers: peers["cluster-b"].problem == f"Secret {NS}/cluster-b-secret not found")
        cluster.delete(fake.CLUSTER_MESHES, "default")
        await changes.wait_for(lambda peers: peers == {})
    assert all(query["fieldSelector"].startswith("metadata.name=") for query in secret_requests(cluster))


async def test_a_changed_reference_keeps_the_peer_until_its_secret_is_read(
    cluster: fake.FakeCluster, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clustermesh.kube.kubernetes_api")
    first = cluster.put(fake.PEER_SECRETS, secret("cluster-b-v1"))
    second = cluster.put(fake.PEER_SECRETS, secret("cluster-b-v2", "Mg=="))
    cluster.put(fake.CLUSTER_MESHES, mesh("default", ("cluster-b", "cluster-b-v1")))
    changes = Changes()
    async with watching(kubeconfig, changes):
        with cluster.changed:
            cluster.failures[fake.PEER_SECRETS.path] = 403  # new Secret requests fail from now on
        cluster.put(fake.CLUSTER_MESHES, mesh("default", ("cluster-b", "cluster-b-v2"), ("cluster-c", "c")))

        await changes.wait_for(lambda peers: "cluster-c" in peers)
        assert changes.latest["cluster-b"].secret == first, "kept while the new Secret cannot be read"
        assert changes.latest["cluster-c"].problem == f"Secret {NS}/c not read yet"
        await fake.eventually(lambda: f"event=kube.list.failed kind=Secret namespace={NS} name=c " in caplog.text)
        assert changes.latest["cluster-b"].secret == first

        with cluster.changed:
            del cluster.failures[fake.PEER_SECRETS.path]
        await changes.wait_for(lambda peers: peers["cluster-b"].secret == second and peers["cluster-c"].problem
                               == f"Secret {NS}/c not found")


async def test_an_absent_crd_means_no_peers(cluster: fake.FakeCluster, kubeconfig: Path) -> None:
    cluster.missing.add(fake.CLUSTER_MESHES.path)
    changes = Changes()
    async with watching(kubeconfig, changes) as watcher:
        assert changes.delivered == [{}]
        with pytest.raises(RuntimeError, match="already running"):
            await watcher.run()

        with cluster.changed:
            cluster.missing.clear()
        cluster.put(fake.CLUSTER_MESHES, mesh("default", ("cluster-b", "cluster-b-secret")))
        await changes.wait_for(lambda peers: "cluster-b" in peers)
