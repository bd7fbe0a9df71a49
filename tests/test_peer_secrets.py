"""Peer Secrets as PeerConfigs: the conversion, its private files, and ClusterMeshPeers over the fake API server.

Covered: a Secret written by `connect` becomes the config a mesh-config file would give, with its TLS files
in a private directory (0700, key 0600); the same Secret again rewrites nothing and keeps the digest; a new
endpoint or a re-issued pair changes the digest (so the peer reconnects); unusable Secrets (another cluster's,
a key missing) reported per peer without touching the others; a bad update keeping the last good config; a
peer gone has its files removed; ClusterMeshPeers creates the directory, delivers, and removes it at the end.
Not covered: reading the resources (tests/kube/test_cluster_mesh.py), connecting (tests/agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import pathlib
import stat
import tempfile
import threading
from typing import Any

import pytest

from clustermesh import certs, connect, peer_secrets
from clustermesh.kube import cluster_mesh
from clustermesh.mesh_config import PeerConfig
from tests.helpers import eventually
from tests.kube import test_kubernetes_api as fake

NS = fake.PEER_NAMESPACE


@pytest.fixture
def trust_b(tmp_path: pathlib.Path) -> connect.ClusterTrust:
    directory = tmp_path / "cluster-b"
    certs.init_cluster(directory, "cluster-b")
    return connect.local_trust(name="cluster-b", cluster_id=2, endpoints=("https://10.0.0.2:2379",),
                               certs_dir=directory)


@pytest.fixture
def files(tmp_path: pathlib.Path) -> peer_secrets.PeerSecretFiles:
    return peer_secrets.PeerSecretFiles(pathlib.Path(tempfile.mkdtemp(dir=tmp_path)))


def declared(*secrets: dict[str, Any], **problems: str) -> dict[str, cluster_mesh.PeerSecret]:
    """What the watcher hands over: peers named after their Secret (`<name>-secret`), plus peers with a problem."""
    peers = {item["metadata"]["name"].removesuffix("-secret"): item for item in secrets}
    result = {name: cluster_mesh.PeerSecret(name, secret=item) for name, item in peers.items()}
    result.update({name: cluster_mesh.PeerSecret(name, problem=problem) for name, problem in problems.items()})
    return result


def signatures(directory: pathlib.Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in directory.iterdir()}


def test_a_secret_becomes_the_config_of_its_peer_with_private_files(
    files: peer_secrets.PeerSecretFiles, trust_b: connect.ClusterTrust
) -> None:
    resolution = files.resolve(declared(connect.peer_secret(trust_b, namespace=NS)))

    assert resolution.problems == {}
    config = resolution.configs["cluster-b"]
    assert (config.name, config.etcd.endpoints) == ("cluster-b", trust_b.endpoints)
    tls = config.etcd.tls
    assert tls is not None and {tls.ca.parent, tls.cert.parent, tls.key.parent} == {files.directory}
    assert (tls.ca.read_bytes(), tls.cert.read_bytes(), tls.key.read_bytes()) == (trust_b.ca, trust_b.cert, trust_b.key)
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600


def test_the_same_secret_rewrites_nothing_and_any_change_reconnects(
    files: peer_secrets.PeerSecretFiles, trust_b: connect.ClusterTrust, tmp_path: pathlib.Path
) -> None:
    first = files.resolve(declared(connect.peer_secret(trust_b, namespace=NS))).configs["cluster-b"]
    before = signatures(files.directory)

    again = files.resolve(declared(connect.peer_secret(trust_b, namespace=NS))).configs["cluster-b"]
    assert again == first and signatures(files.directory) == before, "unchanged: no write, same digest"

    moved = dataclasses.replace(trust_b, endpoints=("https://10.0.0.3:2379",))
    second = files.resolve(declared(connect.peer_secret(moved, namespace=NS))).configs["cluster-b"]
    assert second.digest != first.digest and second.etcd.endpoints == moved.endpoints

    # A re-issued pair changes only the certificate files, not the peer file: the digest must change anyway.
    certs.issue_client_files(tmp_path / "cluster-b", certs.REMOTE_USER)
    reissued = connect.local_trust(name="cluster-b", cluster_id=2, endpoints=moved.endpoints,
                                   certs_dir=tmp_path / "cluster-b")
    third = files.resolve(declared(connect.peer_secret(reissued, namespace=NS))).configs["cluster-b"]
    assert third.digest != second.digest and third.etcd == second.etcd


def test_unusable_secrets_are_reported_per_peer(
    files: peer_secrets.PeerSecretFiles, trust_b: connect.ClusterTrust, tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = connect.peer_secret(trust_b, namespace=NS)
    impostor = copy.deepcopy(good)
    impostor["metadata"]["name"] = "cluster-c-secret"
    incomplete = copy.deepcopy(good)
    incomplete["metadata"]["name"] = "cluster-d-secret"
    del incomplete["data"]["tls.key"]

    resolution = files.resolve(declared(good, impostor, incomplete, **{"cluster-e": "Secret x/y not found"}))

    assert sorted(resolution.configs) == ["cluster-b"]
    assert resolution.problems == {
        "cluster-c": f"Secret {NS}/cluster-c-secret describes cluster 'cluster-b', not 'cluster-c'",
        "cluster-d": f"Secret {NS}/cluster-d-secret: missing tls.key",
        "cluster-e": "Secret x/y not found",
    }
    assert caplog.text.count("event=peer_secrets.unusable") == 3
    files.resolve(declared(good, impostor, incomplete, **{"cluster-e": "Secret x/y not found"}))
    assert caplog.text.count("event=peer_secrets.unusable") == 3, "each problem is logged once"


def test_a_bad_update_keeps_the_last_good_config_and_a_gone_peer_loses_its_files(
    files: peer_secrets.PeerSecretFiles, trust_b: connect.ClusterTrust
) -> None:
    good = connect.peer_secret(trust_b, namespace=NS)
    config = files.resolve(declared(good)).configs["cluster-b"]
    broken = copy.deepcopy(good)
    broken["data"]["tls.crt"] = broken["data"]["ca.crt"]  # a certificate that does not go with the key

    resolution = files.resolve(declared(broken))
    assert resolution.configs == {"cluster-b": config}
    assert resolution.problems["cluster-b"].endswith("; keeping the previous configuration")
    assert config.etcd.tls is not None and config.etcd.tls.cert.read_bytes() == trust_b.cert

    gone = files.resolve(declared(**{"cluster-b": f"Secret {NS}/cluster-b-secret not found"}))
    assert gone.configs == {} and list(files.directory.iterdir()) == []


async def test_cluster_mesh_peers_owns_a_private_directory(
    tmp_path: pathlib.Path, trust_b: connect.ClusterTrust
) -> None:
    cluster = fake.FakeCluster()
    cluster.put(fake.PEER_SECRETS, connect.peer_secret(trust_b, namespace=NS))
    cluster.put(fake.CLUSTER_MESHES, connect.cluster_mesh(["cluster-b", "cluster-c"], namespace=NS))
    server = fake.FakeAPIServer(cluster)
    delivered: list[tuple[dict[str, PeerConfig], dict[str, str]]] = []
    root = tmp_path / "tls"
    root.mkdir()
    peers = peer_secrets.ClusterMeshPeers(
        fake.write_kubeconfig(tmp_path / "kubeconfig", server.url), namespace=NS, local_cluster="cluster-a",
        on_change=lambda configs, problems: delivered.append((configs, problems)), tls_root=root, options=fake.FAST,
    )
    ready = asyncio.Event()
    task = asyncio.create_task(peers.run(ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        [(configs, problems)] = delivered
        assert sorted(configs) == ["cluster-b"] and problems == {"cluster-c": f"Secret {NS}/cluster-c-secret not found"}
        [directory] = root.iterdir()
        assert directory == peers.directory and stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert configs["cluster-b"].etcd.tls is not None and configs["cluster-b"].etcd.tls.key.parent == directory
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(server.stop)
    assert list(root.iterdir()) == [] and peers.directory is None
    await eventually(lambda: not any(thread.name.startswith("peer-secrets") for thread in threading.enumerate()))

