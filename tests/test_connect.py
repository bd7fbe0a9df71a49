"""Tests of the trust exchange (clustermesh.connect and `clustermesh connect`), without running any daemon.

Covered: every refusal and its reason; the `remote` credentials a local cluster hands out (issued by its own CA);
peer files in Cilium's format (content, modes, idempotence, removal) as the agent's loader reads them; the
Kubernetes Secret and ClusterMesh resource validated against the Kubernetes schemas (kubernetes-validate, newest
and oldest bundled minor) and the ClusterMesh CRD's OpenAPI schema (clustermesh/schemas/clustermesh-crd.json),
malformed resources rejected; Secret → peer files round trip; the CLI between two local mesh directories, between
two Kubernetes clusters (`--apply`, emitted YAML) and mixed. Kubernetes is a small in-process HTTP server speaking
the few REST calls the exchange makes (get/create/replace of Secrets and the cluster-scoped ClusterMesh), reached
through a kubeconfig by the unmodified official client. Not covered: agents reading the files (tests/local_mesh).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import http.server
import json
import pathlib
import re
import stat
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from clustermesh import certs, connect, errors, mesh_config, trust
from clustermesh.cli import main as cli_main
from clustermesh.local_mesh import layout, mesh_file

K8S_VERSIONS = (kubernetes_validate.latest_version(), "1.25.0")


def make_trust(tmp_path: pathlib.Path, name: str, cluster_id: int, **changes: Any) -> connect.ClusterTrust:
    directory = tmp_path / name
    certs.init_cluster(directory, name)
    base = connect.local_trust(
        name=name, cluster_id=cluster_id, endpoints=(f"https://127.0.0.1:{2379 + cluster_id}",),
        certs_dir=directory, pod_cidrs=(f"10.{cluster_id}.0.0/16",),
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def pair(tmp_path: pathlib.Path) -> tuple[connect.ClusterTrust, connect.ClusterTrust]:
    return make_trust(tmp_path, "cluster-a", 1), make_trust(tmp_path, "cluster-b", 2)


# ----------------------------------------------------------------------------------------------------
# Refusals


def test_a_valid_pair_is_accepted(pair: tuple[connect.ClusterTrust, connect.ClusterTrust]) -> None:
    connect.check_pair(*pair)


@pytest.mark.parametrize(
    ("changes_b", "reason"),
    [
        ({"name": "cluster-a"}, "both clusters are named 'cluster-a'"),
        ({"cluster_id": 1}, "cluster-a and cluster-b both have cluster id 1"),
        ({"cluster_id": 256}, "cluster-b: ClusterID > 255 is not supported"),
        ({"cluster_id": 0}, "cluster-b: ClusterID 0 is reserved"),
        ({"max_connected_clusters": 511}, "cluster-a has maxConnectedClusters 255 but cluster-b has 511"),
        ({"pod_cidrs": ("10.1.128.0/17",)},
         "pod CIDR 10.1.0.0/16 of cluster-a overlaps pod CIDR 10.1.128.0/17 of cluster-b"),
        ({"name": "Cluster_B"}, "Cluster_B: invalid cluster name"),
    ],
)
def test_refusals_give_the_reason(
    pair: tuple[connect.ClusterTrust, connect.ClusterTrust], changes_b: dict[str, Any], reason: str
) -> None:
    a, b = pair
    with pytest.raises(connect.Refused) as refused:
        connect.check_pair(a, dataclasses.replace(b, **changes_b))
    assert any(reason in line for line in refused.value.reasons), refused.value.reasons
    assert isinstance(refused.value, errors.ConfigError)


def test_every_reason_is_reported_at_once(pair: tuple[connect.ClusterTrust, connect.ClusterTrust]) -> None:
    a, b = pair
    with pytest.raises(connect.Refused) as refused:
        connect.check_pair(a, dataclasses.replace(b, cluster_id=1, pod_cidrs=("10.1.2.0/24",)))
    assert len(refused.value.reasons) == 2


def test_different_address_families_do_not_overlap(pair: tuple[connect.ClusterTrust, connect.ClusterTrust]) -> None:
    a, b = pair
    connect.check_pair(dataclasses.replace(a, pod_cidrs=("10.1.0.0/16", "fd00:1::/64")),
                       dataclasses.replace(b, pod_cidrs=("10.2.0.0/16", "fd00:2::/64")))
    with pytest.raises(connect.Refused, match="fd00::/16 of cluster-a overlaps pod CIDR fd00:2::/64"):
        connect.check_pair(dataclasses.replace(a, pod_cidrs=("fd00::/16",)),
                           dataclasses.replace(b, pod_cidrs=("fd00:2::/64",)))


# ----------------------------------------------------------------------------------------------------
# A local cluster's credentials and peer files


def test_remote_credentials_are_issued_by_the_clusters_own_ca(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "cluster-a"
    certs.init_cluster(directory, "cluster-a")
    certs.pair_files(directory, "remote").cert.unlink()
    local = connect.local_trust(name="cluster-a", cluster_id=1, endpoints=("https://127.0.0.1:1",),
                                certs_dir=directory)
    cert = x509.load_pem_x509_certificate(local.cert)
    cert.verify_directly_issued_by(certs.load_ca(directory).cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == certs.REMOTE_USER
    assert local.ca == (directory / "ca.crt").read_bytes()
    assert local.secret == trust.load_cluster_secret(trust.secret_path(directory))
    assert "BEGIN" not in repr(local)


def test_peer_files_in_ciliums_format(tmp_path: pathlib.Path, pair: tuple[connect.ClusterTrust, ...]) -> None:
    _, b = pair
    directory = tmp_path / "mesh-config"
    directory.mkdir()
    assert connect.write_peer_files(directory, b) is True
    document = yaml.safe_load((directory / "cluster-b").read_text())
    assert document == {
        "endpoints": ["https://127.0.0.1:2381"],
        "trusted-ca-file": str(directory / "cluster-b.etcd-client-ca.crt"),
        "cert-file": str(directory / "cluster-b.etcd-client.crt"),
        "key-file": str(directory / "cluster-b.etcd-client.key"),
    }
    assert stat.S_IMODE((directory / "cluster-b.etcd-client.key").stat().st_mode) == 0o600
    loaded = mesh_config.load_peer_file(directory / "cluster-b")
    assert loaded.name == "cluster-b" and loaded.etcd.endpoints == b.endpoints
    assert loaded.etcd.tls is not None and loaded.etcd.tls.cert.read_bytes() == b.cert
    # Idempotent: nothing rewritten, so a watching agent does not reconnect.
    before = {path.name: path.stat().st_ino for path in directory.iterdir()}
    assert connect.write_peer_files(directory, b) is False
    assert before == {path.name: path.stat().st_ino for path in directory.iterdir()}
    assert connect.peer_names(directory) == ["cluster-b"]
    assert connect.remove_peer_files(directory, "cluster-b") is True
    assert list(directory.iterdir()) == []


# ----------------------------------------------------------------------------------------------------
# Kubernetes objects


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = connect.cluster_mesh_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_secrets_validate_against_the_kubernetes_schema(
    pair: tuple[connect.ClusterTrust, connect.ClusterTrust], version: str
) -> None:
    a, _ = pair
    for secret in (connect.peer_secret(a), connect.cluster_secret(a)):
        kubernetes_validate.validate(secret, version, strict=True)
    assert connect.peer_secret(a)["metadata"]["name"] == "cluster-a-secret"
    assert set(connect.peer_secret(a)["data"]) == {"cluster.id", "cluster.name", "cluster.secret", "endpoints",
                                                    "ca.crt", "tls.crt", "tls.key"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_crd_validates_against_the_kubernetes_schema(version: str) -> None:
    kubernetes_validate.validate(connect.cluster_mesh_crd(), version, strict=True)


def test_cluster_mesh_validates_against_the_crd_schema() -> None:
    resource = connect.cluster_mesh(["cluster-b", "cluster-c"], namespace="kube-system")
    jsonschema.validate(resource, crd_schema())
    assert resource["apiVersion"] == "cilium.io/v2alpha1" and resource["kind"] == "ClusterMesh"
    assert resource["spec"]["clusters"][0] == {
        "name": "cluster-b", "secret": {"name": "cluster-b-secret", "namespace": "kube-system"},
    }


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r["spec"].pop("clusters"),
        lambda r: r["spec"]["clusters"][0].pop("secret"),
        lambda r: r["spec"]["clusters"][0].update(name="Cluster_B"),
        lambda r: r["spec"]["clusters"][0].update(name="x" * 33),
        lambda r: r["spec"]["clusters"][0]["secret"].update(name=""),
        lambda r: r["spec"]["clusters"][0]["secret"].update(namespace="Not_A_Namespace"),
        lambda r: r["spec"].update(clusters="cluster-b"),
        lambda r: r.update(apiVersion="cilium.io/v2"),
    ],
)
def test_malformed_cluster_mesh_is_rejected(mutate: Any) -> None:
    resource = connect.cluster_mesh(["cluster-b"])
    mutate(resource)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(resource, crd_schema())


def test_cluster_mesh_keeps_existing_peers() -> None:
    existing = connect.cluster_mesh(["cluster-c"], namespace="mesh")
    existing["metadata"]["resourceVersion"] = "42"
    merged = connect.cluster_mesh(["cluster-b"], namespace="kube-system", existing=existing)
    assert [c["name"] for c in merged["spec"]["clusters"]] == ["cluster-b", "cluster-c"]
    assert merged["spec"]["clusters"][1]["secret"]["namespace"] == "mesh"
    assert merged["metadata"]["resourceVersion"] == "42"


def test_secret_round_trips_into_the_same_agent_configuration(
    tmp_path: pathlib.Path, pair: tuple[connect.ClusterTrust, connect.ClusterTrust]
) -> None:
    _, b = pair
    # Through YAML, as kubectl would carry it.
    secret = yaml.safe_load(connect.dump_yaml([connect.peer_secret(b)]))
    read = connect.trust_from_secret(secret)
    assert (read.name, read.cluster_id, read.endpoints, read.secret) == (b.name, b.cluster_id, b.endpoints, b.secret)
    direct, via_secret = tmp_path / "direct", tmp_path / "via-secret"
    direct.mkdir()
    via_secret.mkdir()
    connect.write_peer_files(direct, b)
    connect.write_peer_files(via_secret, read)
    assert sorted(p.name for p in direct.iterdir()) == sorted(p.name for p in via_secret.iterdir())
    for path in direct.iterdir():
        assert (via_secret / path.name).read_bytes() == path.read_bytes().replace(
            str(direct).encode(), str(via_secret).encode())
    assert mesh_config.load_peer_file(via_secret / "cluster-b").etcd.endpoints == b.endpoints


def test_cluster_secret_round_trips_identity(pair: tuple[connect.ClusterTrust, connect.ClusterTrust]) -> None:
    a, _ = pair
    a = dataclasses.replace(a, max_connected_clusters=511, pod_cidrs=("10.1.0.0/16", "fd00:1::/64"))
    assert connect.trust_from_secret(connect.cluster_secret(a)) == a


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("tls.key"), "missing tls.key"),
        (lambda d: d.update({"cluster.id": "!!"}), "not base64"),
        (lambda d: d.update({"cluster.id": base64.b64encode(b"one").decode()}), "cluster.id must be a number"),
        (lambda d: d.update({"endpoints": base64.b64encode(b"ftp://x").decode()}), "is not an https://"),
        (lambda d: d.update({"cluster.secret": base64.b64encode(b"short").decode()}), "cluster.secret"),
    ],
)
def test_malformed_peer_secret_is_refused(
    pair: tuple[connect.ClusterTrust, connect.ClusterTrust], mutate: Any, message: str
) -> None:
    secret = connect.peer_secret(pair[1])
    mutate(secret["data"])
    with pytest.raises(errors.ConfigError, match=message):
        connect.trust_from_secret(secret)


def test_peer_secret_with_a_foreign_key_is_refused(pair: tuple[connect.ClusterTrust, connect.ClusterTrust]) -> None:
    a, b = pair
    secret = connect.peer_secret(dataclasses.replace(b, key=a.key))
    with pytest.raises(errors.CertificateError, match="does not belong"):
        connect.trust_from_secret(secret)


# ----------------------------------------------------------------------------------------------------
# The CLI between local mesh directories


def write_local_mesh(directory: pathlib.Path, *, clusters: int = 2, nodes: int = 2) -> mesh_file.MeshFile:
    """A mesh directory as `clustermesh up` leaves it (certificates, mesh.json), with no process running."""
    entries = []
    for plan in layout.plan(directory, clusters=clusters, nodes=nodes):
        layout.make_directories(plan)
        cluster_certs = certs.init_cluster(plan.paths.certs, plan.name)
        trust.ensure_cluster_secret(plan.paths.certs)
        entries.append(mesh_file.Cluster(
            name=plan.name, id=plan.cluster_id, pod_cidrs=list(plan.pod_cidrs), certs=str(plan.paths.certs),
            secret=str(trust.secret_path(plan.paths.certs)),
            etcd=mesh_file.Etcd(endpoints=[f"https://127.0.0.1:{3000 + plan.cluster_id}"], ca=str(cluster_certs.ca),
                                cert=str(cluster_certs.admin.cert), key=str(cluster_certs.admin.key)),
            apiserver=mesh_file.Apiserver(grpc="127.0.0.1:1", metrics="127.0.0.1:2"),
            agents=[mesh_file.Agent(node=node.name, grpc=f"unix:{plan.paths.agent(node.name).socket}",
                                    dns="127.0.0.1:3", metrics="127.0.0.1:4",
                                    mesh_config=str(plan.paths.agent(node.name).mesh_config))
                    for node in plan.nodes],
        ))
    mesh = mesh_file.MeshFile(clusters=entries, dir=str(directory), state="stopped")
    mesh_file.write(directory, mesh)
    return mesh


def test_cli_connects_two_local_clusters(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    mesh = write_local_mesh(tmp_path)
    a, b = (tmp_path / c.name for c in mesh.clusters)
    assert cli_main.main(["connect", "--from", str(a), "--to", str(b)]) == 0
    assert "cluster-a now knows cluster-b: peer files written in 2 agents' mesh-config" in capsys.readouterr().out
    for cluster, peer in ((mesh.clusters[0], "cluster-b"), (mesh.clusters[1], "cluster-a")):
        for agent in cluster.agents:
            loaded = mesh_config.load_peer_file(pathlib.Path(agent.mesh_config) / peer)
            assert loaded.etcd.endpoints == tuple(mesh.cluster(peer).etcd.endpoints)
    assert cli_main.main(["connect", "--from", str(a), "--to", str(b), "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [action["changed"] for action in report["actions"]] == [False, False]


def test_cli_refuses_overlapping_clusters(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    mesh = write_local_mesh(tmp_path)
    mesh.clusters[1].pod_cidrs = ["10.1.3.0/24"]
    mesh_file.write(tmp_path, mesh)
    code = cli_main.main(["connect", "--from", str(tmp_path / "cluster-a"), "--to", str(tmp_path / "cluster-b")])
    assert code == cli_main.EXIT_USAGE
    assert "pod CIDR 10.1.0.0/16 of cluster-a overlaps pod CIDR 10.1.3.0/24 of cluster-b" in capsys.readouterr().err
    assert not list(pathlib.Path(mesh.clusters[0].agents[0].mesh_config).iterdir())


def test_cli_rejects_what_is_not_a_cluster(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main(["connect", "--from", str(tmp_path / "nope"), "--to", str(tmp_path)])
    assert code == cli_main.EXIT_USAGE
    assert "neither a local cluster directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# The CLI against Kubernetes (a fake API server: just the REST calls the exchange makes)


class FakeKubernetes:
    """The objects of one cluster and the requests made to it."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.cluster_meshes: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.version = 0


_SECRET = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets(?:/([^/]+))?$")
_MESH = re.compile(r"^/apis/cilium\.io/v2alpha1/clustermeshes(?:/([^/]+))?$")


def _handler(cluster: FakeKubernetes) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                              "code": code})

        def _body(self) -> dict[str, Any]:
            body: dict[str, Any] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            return body

        def _handle(self, method: str) -> None:
            path = self.path.split("?")[0]
            with cluster.lock:
                cluster.requests.append((method, path))
                if match := _SECRET.match(path):
                    store: dict[Any, dict[str, Any]] = cluster.secrets
                    key: Any = (match.group(1), match.group(2))
                    collection_key = lambda body: (match.group(1), body["metadata"]["name"])  # noqa: E731
                elif match := _MESH.match(path):
                    store, key = cluster.cluster_meshes, match.group(1)
                    collection_key = lambda body: body["metadata"]["name"]  # noqa: E731
                else:
                    self._status(404, "NotFound")
                    return
                named = (key[1] if isinstance(key, tuple) else key) is not None
                if method == "GET" and named:
                    if key in store:
                        self._send(200, store[key])
                    else:
                        self._status(404, "NotFound")
                elif method == "POST" and not named:
                    body = self._body()
                    new_key = collection_key(body)
                    if new_key in store:
                        self._status(409, "AlreadyExists")
                        return
                    cluster.version += 1
                    body["metadata"]["resourceVersion"] = str(cluster.version)
                    store[new_key] = body
                    self._send(201, body)
                elif method == "PUT" and named:
                    if key not in store:
                        self._status(404, "NotFound")
                        return
                    body = self._body()
                    sent = body["metadata"].get("resourceVersion")
                    if sent is not None and sent != store[key]["metadata"]["resourceVersion"]:
                        self._status(409, "Conflict")
                        return
                    cluster.version += 1
                    body["metadata"]["resourceVersion"] = str(cluster.version)
                    store[key] = body
                    self._send(200, body)
                else:
                    self._status(405, "MethodNotAllowed")

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

    return Handler


@dataclasses.dataclass
class KubeCluster:
    kubeconfig: pathlib.Path
    state: FakeKubernetes
    trust: connect.ClusterTrust


@pytest.fixture
def kube_clusters(tmp_path: pathlib.Path) -> Iterator[list[KubeCluster]]:
    """Two fake Kubernetes clusters, each describing itself with the Secret clustermesh-cluster."""
    servers: list[http.server.ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []
    clusters = []
    try:
        for index, name in enumerate(("kube-a", "kube-b"), start=10):
            state = FakeKubernetes()
            own = make_trust(tmp_path, name, index)
            state.secrets[(connect.DEFAULT_NAMESPACE, connect.CLUSTER_SECRET_NAME)] = copy.deepcopy(
                {**connect.cluster_secret(own), "metadata": {**connect.cluster_secret(own)["metadata"],
                                                              "resourceVersion": "1"}})
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
            servers.append(server)
            thread = threading.Thread(target=server.serve_forever, name=f"fake kube {name}")
            thread.start()
            threads.append(thread)
            kubeconfig = tmp_path / f"{name}.kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": name,
                "clusters": [{"name": name, "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                "users": [{"name": name, "user": {"token": "test"}}],
                "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            }))
            clusters.append(KubeCluster(kubeconfig, state, own))
        yield clusters
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()


def test_cli_applies_to_two_kubernetes_clusters(kube_clusters: list[KubeCluster]) -> None:
    a, b = kube_clusters
    assert cli_main.main(["connect", "--from", str(a.kubeconfig), "--to", f"kubernetes:{b.kubeconfig}",
                          "--apply"]) == 0
    for here, peer in ((a, b), (b, a)):
        secret = here.state.secrets[(connect.DEFAULT_NAMESPACE, f"{peer.trust.name}-secret")]
        kubernetes_validate.validate(secret, K8S_VERSIONS[0], strict=True)
        assert connect.trust_from_secret(secret) == dataclasses.replace(peer.trust, max_connected_clusters=255,
                                                                        pod_cidrs=())
        resource = here.state.cluster_meshes["default"]
        jsonschema.validate(resource, crd_schema())
        assert [c["name"] for c in resource["spec"]["clusters"]] == [peer.trust.name]
    # Again: replaced in place, the ClusterMesh still lists the peer once.
    assert cli_main.main(["connect", "--from", str(a.kubeconfig), "--to", str(b.kubeconfig), "--apply"]) == 0
    assert [c["name"] for c in a.state.cluster_meshes["default"]["spec"]["clusters"]] == ["kube-b"]
    assert ("PUT", "/api/v1/namespaces/kube-system/secrets/kube-b-secret") in a.state.requests


def test_cli_emits_yaml_without_apply(
    tmp_path: pathlib.Path, kube_clusters: list[KubeCluster], capsys: pytest.CaptureFixture[str]
) -> None:
    _, b = kube_clusters
    write_local_mesh(tmp_path / "mesh")
    local = tmp_path / "mesh" / "cluster-a"
    assert cli_main.main(["connect", "--from", str(local), "--to", str(b.kubeconfig), "--out",
                          str(tmp_path / "out")]) == 0
    assert "kubectl apply -f" in capsys.readouterr().out
    documents = list(yaml.safe_load_all((tmp_path / "out" / "kube-b.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["Secret", "ClusterMesh"]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(documents[0], version, strict=True)
    jsonschema.validate(documents[1], crd_schema())
    assert not any(method in ("POST", "PUT") for method, _ in b.state.requests)
    # And the local side learned about the Kubernetes cluster, through its self-describing Secret.
    peer_file = mesh_config.load_peer_file(tmp_path / "mesh" / "cluster-a" / "agents" / "cluster-a-node-1" /
                                           "mesh-config" / "kube-b")
    assert peer_file.etcd.endpoints == b.trust.endpoints


def test_cli_reports_a_kubernetes_cluster_without_identity(
    kube_clusters: list[KubeCluster], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = kube_clusters
    b.state.secrets.clear()
    assert cli_main.main(["connect", "--from", str(a.kubeconfig), "--to", str(b.kubeconfig)]) == cli_main.EXIT_USAGE
    assert "reading Secret kube-system/clustermesh-cluster: the Kubernetes API answered 404" in capsys.readouterr().err
