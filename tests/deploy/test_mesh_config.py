"""`clustermesh deploy mesh-config`: the agents' peers, from the ClusterMesh resource and its peer Secrets.

Covers, end to end with real material: cluster-b is rendered (certificates, self-description Secret), its etcd
runs from the rendered server certificate and is prepared by `clustermesh etcd init`; `connect`'s Secret and
ClusterMesh for cluster-a become the mesh-config Secret, which, laid out as the kubelet mounts it, is a
mesh-config directory the agent's loader accepts and whose `remote` credentials read cluster-b's keys and
write none. Also: only declared peers are included, List documents are unpacked, input errors name what is
wrong, the CLI pipes. Not covered: the agent connecting (tests/agent), the kubelet's volume updates.
"""

from __future__ import annotations

import asyncio
import base64
import pathlib
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from clustermesh import connect, deploy_render, errors, mesh_config, tls
from clustermesh.etcd import client, process

NAMESPACE = deploy_render.DEFAULT_NAMESPACE


def _peer_secret(state: pathlib.Path, name: str, cluster_id: int, *endpoints: str) -> dict[str, Any]:
    """What `connect` writes into the other cluster for `name`: its self-description as a peer Secret."""
    options = deploy_render.Options(cluster_name=name, cluster_id=cluster_id, endpoints=endpoints)
    files = deploy_render.render(options, deploy_render.prepare_material(state, options))
    [described] = [doc for doc in files[deploy_render.SECRETS_FILE]
                   if doc["metadata"]["name"] == connect.CLUSTER_SECRET_NAME]
    return connect.peer_secret(connect.trust_from_secret(described), namespace=NAMESPACE)


def _mount(secret: dict[str, Any], directory: pathlib.Path) -> pathlib.Path:
    """The Secret's keys as files, as the kubelet mounts them (keys 0440 in the DaemonSet; 0600 here)."""
    directory.mkdir()
    for key, value in secret["data"].items():
        path = directory / key
        path.write_bytes(base64.b64decode(value))
        path.chmod(0o600)
    return directory


async def test_the_mesh_config_reads_a_rendered_and_initialised_peer(
    tmp_path: pathlib.Path, etcd_options: process.EtcdOptions
) -> None:
    port = process.free_port()
    state = tmp_path / "cluster-b"
    peer = _peer_secret(state, "cluster-b", 2, f"https://127.0.0.1:{port}")
    resource = connect.cluster_mesh(["cluster-b"], namespace=NAMESPACE)
    mount = tmp_path / "mesh-config"
    secret = deploy_render.mesh_config_secret([resource, peer], mount=mount)
    for version in ("1.29.0", kubernetes_validate.latest_version()):
        kubernetes_validate.validate(secret, version, strict=True)
    assert sorted(secret["data"]) == ["cluster-b", *sorted(connect.peer_file_names("cluster-b"))]

    loaded = mesh_config.load_peer_file(_mount(secret, mount) / "cluster-b")

    server = tls.TLSFiles(ca=state / "ca.crt", cert=state / "server.crt", key=state / "server.key")
    admin = tls.TLSFiles(ca=state / "ca.crt", cert=state / "admin.crt", key=state / "admin.key")
    async with process.EtcdProcess(tmp_path / "etcd", name="cluster-b", server_tls=server, client_port=port,
                                   options=etcd_options) as etcd:
        init = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "clustermesh", "etcd", "init", "--cluster-name=cluster-b",
             f"--etcd-endpoints={etcd.endpoint}", f"--etcd-ca={admin.ca}", f"--etcd-cert={admin.cert}",
             f"--etcd-key={admin.key}"],
            capture_output=True, text=True, timeout=60,
        )
        assert init.returncode == 0, init.stderr
        async with await client.EtcdClient.connect(etcd.client_config(admin)) as etcd_admin:
            await etcd_admin.put(b"cilium/cluster-config/cluster-b", b'{"id":2}')
        async with await client.EtcdClient.connect(loaded.etcd) as remote:
            found = await remote.get(b"cilium/cluster-config/cluster-b")
            assert found is not None and found.value == b'{"id":2}'
            with pytest.raises(errors.PermissionDenied):
                await remote.put(b"cilium/cluster-config/cluster-b", b"{}")


def test_only_declared_peers_are_included_and_lists_are_unpacked(tmp_path: pathlib.Path) -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": [
        _peer_secret(tmp_path / "b", "cluster-b", 2, "https://198.51.100.2:2379"),
        _peer_secret(tmp_path / "c", "cluster-c", 3, "https://198.51.100.3:2379"),
    ]}
    resource = connect.cluster_mesh(["cluster-c"], namespace=NAMESPACE)

    secret = deploy_render.mesh_config_secret([resource, listed])

    assert secret["metadata"] == {"name": deploy_render.PEERS_SECRET, "namespace": NAMESPACE,
                                  "labels": secret["metadata"]["labels"]}
    assert sorted(secret["data"]) == ["cluster-c", *sorted(connect.peer_file_names("cluster-c"))]
    peer_yaml = yaml.safe_load(base64.b64decode(secret["data"]["cluster-c"]))
    assert peer_yaml == {
        "endpoints": ["https://198.51.100.3:2379"],
        "trusted-ca-file": f"{deploy_render.AGENT_MESH_CONFIG}/cluster-c.etcd-client-ca.crt",
        "cert-file": f"{deploy_render.AGENT_MESH_CONFIG}/cluster-c.etcd-client.crt",
        "key-file": f"{deploy_render.AGENT_MESH_CONFIG}/cluster-c.etcd-client.key",
    }


def test_a_clustermesh_without_peers_gives_an_empty_mesh_config() -> None:
    secret = deploy_render.mesh_config_secret([connect.cluster_mesh([], namespace=NAMESPACE)])
    assert secret["data"] == {}


def test_input_errors_name_what_is_wrong(tmp_path: pathlib.Path) -> None:
    peer = _peer_secret(tmp_path / "b", "cluster-b", 2, "https://198.51.100.2:2379")
    resource = connect.cluster_mesh(["cluster-b"], namespace=NAMESPACE)
    with pytest.raises(errors.ConfigError, match="expected one ClusterMesh resource among the input, found 0"):
        deploy_render.mesh_config_secret([peer])
    with pytest.raises(errors.ConfigError, match="Secret clustermesh/cluster-b-secret is not among the input"):
        deploy_render.mesh_config_secret([resource])
    renamed = connect.cluster_mesh(["cluster-x"], namespace=NAMESPACE)
    renamed["spec"]["clusters"][0]["secret"]["name"] = "cluster-b-secret"
    with pytest.raises(errors.ConfigError, match="describes cluster 'cluster-b'"):
        deploy_render.mesh_config_secret([renamed, peer])


def test_cli_reads_kubectl_output_from_stdin(tmp_path: pathlib.Path) -> None:
    peer = _peer_secret(tmp_path / "b", "cluster-b", 2, "https://198.51.100.2:2379")
    resource = connect.cluster_mesh(["cluster-b"], namespace=NAMESPACE)
    kubectl_output = yaml.safe_dump(resource) + "---\n" + yaml.safe_dump({"kind": "List", "items": [peer]})
    result = subprocess.run([sys.executable, "-m", "clustermesh", "deploy", "mesh-config", "-f", "-"],
                            input=kubectl_output, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [secret] = yaml.safe_load_all(result.stdout)
    assert secret == deploy_render.mesh_config_secret([resource, peer])

    bad = subprocess.run([sys.executable, "-m", "clustermesh", "deploy", "mesh-config", "-f", "-"],
                         input="kind: [", capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not valid YAML" in bad.stderr
