"""Tests of the local mesh's plan, manifests and mesh file: pure functions and files, no process.

Covered: cluster and node naming and numbering (deterministic, non-overlapping CIDRs, unique addresses), limits,
the unix socket length check; every generated manifest valid against the Kubernetes schema, pod IPs inside their
node's pod CIDR, the example's global annotation and ports, user edits kept, WireGuard keys stable; mesh.json
round trip, tolerance of unknown keys, and errors naming the file. Not covered: running anything (test_up.py).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import pathlib
import stat

import kubernetes_validate
import pytest
import yaml

from clustermesh import errors
from clustermesh.local_mesh import layout, manifests, mesh_file


def test_cluster_names() -> None:
    assert [layout.cluster_name(i) for i in (1, 2, 26, 27, 28, 52, 53)] == [
        "cluster-a", "cluster-b", "cluster-z", "cluster-aa", "cluster-ab", "cluster-az", "cluster-ba"]


def test_plan_is_deterministic_and_disjoint(tmp_path: pathlib.Path) -> None:
    plans = layout.plan(tmp_path, clusters=3, nodes=2)
    assert plans == layout.plan(tmp_path, clusters=3, nodes=2)
    assert [(p.name, p.cluster_id, p.pod_cidr) for p in plans] == [
        ("cluster-a", 1, "10.1.0.0/16"), ("cluster-b", 2, "10.2.0.0/16"), ("cluster-c", 3, "10.3.0.0/16")]
    for a, b in itertools.combinations(plans, 2):
        assert not ipaddress.ip_network(a.pod_cidr).overlaps(ipaddress.ip_network(b.pod_cidr))
    ips = [node.internal_ip for plan in plans for node in plan.nodes]
    assert len(set(ips)) == len(ips) == 6
    for plan in plans:
        for node in plan.nodes:
            assert ipaddress.ip_network(node.pod_cidr).subnet_of(ipaddress.ip_network(plan.pod_cidr))
            assert ipaddress.ip_address(node.internal_ip).is_loopback
    assert plans[0].nodes[1].name == "cluster-a-node-2"
    assert plans[0].paths.agent("cluster-a-node-2").socket == tmp_path / "cluster-a/agents/cluster-a-node-2/agent.sock"


@pytest.mark.parametrize(("clusters", "nodes", "flag"), [(0, 1, "--clusters"), (251, 1, "--clusters"),
                                                         (2, 0, "--nodes"), (2, 251, "--nodes")])
def test_plan_limits(tmp_path: pathlib.Path, clusters: int, nodes: int, flag: str) -> None:
    with pytest.raises(errors.ConfigError, match=flag):
        layout.plan(tmp_path, clusters=clusters, nodes=nodes)


def test_socket_paths_must_fit(tmp_path: pathlib.Path) -> None:
    layout.check_socket_paths(layout.plan(pathlib.Path("/tmp/cm"), clusters=2, nodes=2))
    with pytest.raises(errors.ConfigError, match="choose a shorter --dir"):
        layout.check_socket_paths(layout.plan(tmp_path / ("x" * 80), clusters=2, nodes=2))


# ----------------------------------------------------------------------------------------------------
# manifests


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> layout.ClusterPlan:
    plan = layout.plan(tmp_path, clusters=2, nodes=2)[1]
    layout.make_directories(plan)
    return plan


def documents(path: pathlib.Path) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_manifests_are_valid_kubernetes_objects(cluster: layout.ClusterPlan) -> None:
    keys = {node.name: manifests.ensure_wireguard_key(cluster.paths.agent(node.name).wireguard_key)
            for node in cluster.nodes}
    manifests.write_nodes(cluster, keys)
    manifests.ensure_example(cluster)
    files = sorted(cluster.paths.manifests.iterdir())
    assert [f.name for f in files] == ["my-app.yaml", "my-namespace.yaml", "nodes.yaml"]
    kinds = []
    for file in files:
        for document in documents(file):
            for version in (kubernetes_validate.latest_version(), "1.25.0"):
                kubernetes_validate.validate(document, version, strict=True)
            kinds.append(document["kind"])
    assert sorted(kinds) == ["EndpointSlice", "Namespace", "Node", "Node", "Pod", "Pod", "Service"]


def test_example_app(cluster: layout.ClusterPlan) -> None:
    objects = manifests.example_app(cluster, replicas=5)
    service, *pods, endpoint_slice = objects
    assert service["metadata"]["annotations"] == {"service.cilium.io/global": "true"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    assert len(pods) == 5
    by_node = {node.name: node for node in cluster.nodes}
    for pod in pods:
        node = by_node[pod["spec"]["nodeName"]]
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.pod_cidr)
        assert pod["status"]["hostIP"] == node.internal_ip
    assert [e["addresses"][0] for e in endpoint_slice["endpoints"]] == [p["status"]["podIP"] for p in pods]
    assert all(e["conditions"]["ready"] for e in endpoint_slice["endpoints"])
    assert len({p["status"]["podIP"] for p in pods}) == 5
    with pytest.raises(ValueError):
        manifests.example_app(cluster, replicas=manifests.MAX_REPLICAS + 1)


def test_user_edits_survive(cluster: layout.ClusterPlan) -> None:
    manifests.ensure_example(cluster)
    app = cluster.paths.manifests / manifests.APP_FILE
    manifests.write_example_app(cluster, replicas=4)
    edited = app.read_bytes()
    manifests.ensure_example(cluster)
    assert app.read_bytes() == edited
    assert manifests.write_nodes(cluster, {}) is True
    assert manifests.write_nodes(cluster, {}) is False


def test_wireguard_key_is_created_once(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "wireguard.key"
    public = manifests.ensure_wireguard_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert manifests.ensure_wireguard_key(path) == public
    assert len(public) == 44
    path.write_text("garbage")
    with pytest.raises(errors.ConfigError, match="not a WireGuard private key"):
        manifests.ensure_wireguard_key(path)


# ----------------------------------------------------------------------------------------------------
# mesh.json


def sample() -> mesh_file.MeshFile:
    return mesh_file.MeshFile(
        dir="/tmp/cm",
        pid=7,
        clusters=[mesh_file.Cluster(
            name="cluster-a", id=1, pod_cidrs=["10.1.0.0/16"],
            etcd=mesh_file.Etcd(endpoints=["https://127.0.0.1:2379"], ca="ca", cert="c", key="k", pid=10),
            apiserver=mesh_file.Apiserver(grpc="127.0.0.1:1", metrics="127.0.0.1:2", pid=11),
            agents=[mesh_file.Agent(node="n1", grpc="unix:/s", dns="127.0.0.1:53", metrics="127.0.0.1:3", pid=12)],
        )],
    )


def test_mesh_file_round_trip(tmp_path: pathlib.Path) -> None:
    mesh_file.write(tmp_path, sample())
    loaded = mesh_file.load(tmp_path)
    assert loaded == sample()
    assert loaded.pids() == [10, 11, 12]
    raw = json.loads((tmp_path / "mesh.json").read_text())
    cluster = raw["clusters"][0]
    assert {"name", "id", "pod_cidrs", "etcd", "apiserver", "agents"} <= set(cluster)
    assert {"endpoints", "ca", "cert", "key", "pid"} <= set(cluster["etcd"])
    assert {"grpc", "metrics", "pid"} <= set(cluster["apiserver"])
    assert {"node", "grpc", "dns", "metrics", "pid"} <= set(cluster["agents"][0])


def test_mesh_file_ignores_unknown_keys_and_names_errors(tmp_path: pathlib.Path) -> None:
    raw = json.loads(mesh_file.encode(sample()))
    raw["future"] = {"anything": 1}
    raw["clusters"][0]["etcd"]["future"] = True
    assert mesh_file.decode(json.dumps(raw).encode()) == sample()
    with pytest.raises(errors.ConfigError, match="not found"):
        mesh_file.load(tmp_path)
    (tmp_path / "mesh.json").write_text('{"clusters": [{"name": 1}]}')
    with pytest.raises(errors.ConfigError, match=r"mesh.json.*\$.clusters\[0\]"):
        mesh_file.load(tmp_path)
    with pytest.raises(errors.ConfigError, match="no cluster 'cluster-z'"):
        sample().cluster("cluster-z")
