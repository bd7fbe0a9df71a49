"""clustermesh.deploy_render and `clustermesh deploy render`: valid Kubernetes manifests, kept certificates.

Covers: every rendered manifest of several option sets validates (strictly: unknown fields are errors) against
the Kubernetes OpenAPI schemas shipped by kubernetes-validate, for the oldest supported minor (1.29, the first
with native sidecar containers on by default) and the newest the package ships; the checked-in base manifests
in deploy/kubernetes/ are exactly what the renderer produces; certificates are kept across renders, rotated or
replaced on request, and re-issued alone when a SAN is added; the self-description Secret reads back through
clustermesh.connect; the agent DaemonSet for both peer sources (the ClusterMesh resource with its Secrets'
namespace, Role and memory-backed TLS volume; the mounted mesh-config Secret), probed on /readyz and /healthz;
the CLI's outputs and exit codes. Not covered: the CRD's schema (test_crd_schema.py),
RBAC against the daemons' requests (test_rbac.py), `etcd init` (test_etcd_init.py).
"""

from __future__ import annotations

import base64
import pathlib
import stat
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from clustermesh import connect, deploy_render, errors, trust
from clustermesh.cli import main as cli_main

OLDEST = "1.29.0"
NEWEST = kubernetes_validate.latest_version()
VERSIONS = (OLDEST, NEWEST)
REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"
BASE_OPTIONS = deploy_render.Options(cluster_name="cluster-a", cluster_id=1)

OPTION_SETS = {
    "defaults": BASE_OPTIONS,
    "loadbalancer-pvc": deploy_render.Options(
        cluster_name="cluster-b", cluster_id=2, service_type=deploy_render.ServiceType.LOAD_BALANCER,
        etcd_storage=deploy_render.EtcdStorage.PVC, endpoints=("https://203.0.113.10:2379",),
        pod_cidrs=("10.2.0.0/16", "fd00:2::/64"), image="registry.example.com/clustermesh:0.1.0",
    ),
    "nodeport-511": deploy_render.Options(
        cluster_name="cluster-c", cluster_id=300, max_connected_clusters=511, namespace="mesh",
        service_type=deploy_render.ServiceType.NODE_PORT, sans=("etcd.example.com",), peer_namespace="mesh-secrets",
    ),
    "mesh-config": deploy_render.Options(
        cluster_name="cluster-d", cluster_id=4, peer_source=deploy_render.PeerSource.MESH_CONFIG,
    ),
}


def _secret_data(files: dict[str, list[dict[str, Any]]], name: str) -> dict[str, bytes]:
    [secret] = [doc for doc in files[deploy_render.SECRETS_FILE] if doc["metadata"]["name"] == name]
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def _render(state: pathlib.Path, options: deploy_render.Options = BASE_OPTIONS, **kwargs: bool) -> dict[str, Any]:
    return deploy_render.render(options, deploy_render.prepare_material(state, options, **kwargs))


def _cn(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_every_manifest_validates_against_the_kubernetes_schema(
    tmp_path: pathlib.Path, name: str, version: str
) -> None:
    options = OPTION_SETS[name]
    files = _render(tmp_path / "state", options)
    kinds = []
    for documents in files.values():
        for document in documents:
            kubernetes_validate.validate(document, version, strict=True)
            kinds.append(document["kind"])
    assert sorted(set(kinds)) == sorted(
        {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret",
         "Deployment", "Service", "DaemonSet"}
        | ({"PersistentVolumeClaim"} if options.etcd_storage is deploy_render.EtcdStorage.PVC else set())
        | ({"Role", "RoleBinding"} if options.peer_source is deploy_render.PeerSource.CLUSTER_MESH_RESOURCE else set())
    )


def test_the_validation_is_strict_enough_to_catch_a_typo() -> None:
    [deployment, _] = deploy_render.render(BASE_OPTIONS, None)[deploy_render.APISERVER_FILE]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, OLDEST, strict=True)


def test_the_checked_in_base_manifests_are_what_the_renderer_produces() -> None:
    rendered = deploy_render.render(BASE_OPTIONS, None)
    on_disk = sorted(path.name for path in BASE.glob("*.yaml"))
    assert on_disk == sorted(rendered), "regenerate: clustermesh deploy render --cluster-name cluster-a " \
                                        "--cluster-id 1 --no-secrets -o deploy/kubernetes"
    for name, documents in rendered.items():
        text = (BASE / name).read_text()
        assert text == deploy_render.header(BASE_OPTIONS) + deploy_render.dump(documents), (
            f"deploy/kubernetes/{name} is stale: regenerate it with clustermesh deploy render --cluster-name "
            "cluster-a --cluster-id 1 --no-secrets -o deploy/kubernetes"
        )


def test_the_apiserver_pod_runs_etcd_as_a_sidecar_before_etcd_init_and_the_apiserver() -> None:
    [deployment, service] = deploy_render.render(BASE_OPTIONS, None)[deploy_render.APISERVER_FILE]
    pod = deployment["spec"]["template"]["spec"]
    etcd, init = pod["initContainers"]
    [apiserver] = pod["containers"]
    assert (etcd["name"], etcd["restartPolicy"], etcd["image"]) == ("etcd", "Always", deploy_render.DEFAULT_ETCD_IMAGE)
    assert "--client-cert-auth" in etcd["args"]
    assert init["command"][-2:] == ["etcd", "init"] and "--cluster-name=cluster-a" in init["args"]
    assert "--source=kubernetes" in apiserver["args"]
    assert apiserver["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert apiserver["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert all("requests" in container["resources"] for container in (etcd, init, apiserver))
    assert pod["volumes"][0] == {"name": "etcd-data", "emptyDir": {}}
    assert pod["automountServiceAccountToken"] is False, "etcd and etcd-init get no Kubernetes credentials"
    mounted = {container["name"]: {mount["name"] for mount in container["volumeMounts"]}
               for container in (etcd, init, apiserver)}
    assert [name for name, mounts in mounted.items() if "kube-api-access" in mounts] == ["apiserver"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == deploy_render.ETCD_CLIENT_PORT


def _agent_container(options: deploy_render.Options) -> tuple[dict[str, Any], dict[str, Any]]:
    [daemon_set, _] = deploy_render.render(options, None)[deploy_render.AGENT_FILE]
    pod = daemon_set["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container


def test_the_agents_read_peers_from_the_clustermesh_resource_and_secrets_of_their_own_namespace() -> None:
    files = deploy_render.render(BASE_OPTIONS, None)
    pod, agent = _agent_container(BASE_OPTIONS)
    assert [doc["metadata"]["name"] for doc in files[deploy_render.NAMESPACE_FILE]] == [
        "clustermesh", "clustermesh-peers"]
    assert {"--clustermesh-resource=kubernetes", "--clustermesh-namespace=clustermesh-peers",
            f"--peer-tls-dir={deploy_render.AGENT_PEER_TLS}"} <= set(agent["args"])
    assert not any(arg.startswith("--mesh-config") for arg in agent["args"])
    assert {"name": "peer-tls", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}} in pod["volumes"]
    assert {"name": "peer-tls", "mountPath": str(deploy_render.AGENT_PEER_TLS)} in agent["volumeMounts"]
    # Probes on the health endpoints, never on the peers' state.
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    health = {port["name"]: port["containerPort"] for port in agent["ports"]}["health"]
    assert f"--health-listen=0.0.0.0:{health}" in agent["args"]

    roles = [doc for doc in files[deploy_render.RBAC_FILE] if doc["kind"] in ("Role", "RoleBinding")]
    assert {(doc["kind"], doc["metadata"]["namespace"]) for doc in roles} == {
        ("Role", "clustermesh-peers"), ("RoleBinding", "clustermesh-peers")}
    [role] = [doc for doc in roles if doc["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]


def test_the_mesh_config_alternative_mounts_the_peers_secret_and_reads_no_secret() -> None:
    options = OPTION_SETS["mesh-config"]
    files = deploy_render.render(options, None)
    pod, agent = _agent_container(options)
    assert f"--mesh-config={deploy_render.AGENT_MESH_CONFIG}" in agent["args"]
    assert not any(arg.startswith(("--clustermesh", "--peer-tls-dir")) for arg in agent["args"])
    assert {"name": "mesh-config", "secret": {"secretName": deploy_render.PEERS_SECRET, "defaultMode": 0o440,
                                              "optional": True}} in pod["volumes"]
    assert [doc["metadata"]["name"] for doc in files[deploy_render.NAMESPACE_FILE]] == ["clustermesh"]
    resources = {resource for doc in files[deploy_render.RBAC_FILE] if "rules" in doc
                 for rule in doc["rules"] for resource in rule["resources"]}
    assert not resources & {"secrets", "clustermeshes"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_pvc_storage_claims_a_volume_and_recreates_the_pod() -> None:
    options = OPTION_SETS["loadbalancer-pvc"]
    claim, deployment, service = deploy_render.render(options, None)[deploy_render.APISERVER_FILE]
    assert claim["kind"] == "PersistentVolumeClaim"
    assert {"name": "etcd-data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} in (
        deployment["spec"]["template"]["spec"]["volumes"]
    )
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert service["spec"]["type"] == "LoadBalancer"


def test_rendering_twice_with_the_same_state_directory_yields_the_same_certificates(tmp_path: pathlib.Path) -> None:
    first = _render(tmp_path / "state")
    second = _render(tmp_path / "state")
    assert first == second
    assert first[deploy_render.SECRETS_FILE] == second[deploy_render.SECRETS_FILE]


def test_rotate_reissues_the_leaves_from_the_same_ca_and_force_replaces_the_ca(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    names = (deploy_render.SERVER_CERT_SECRET, deploy_render.ADMIN_CERT_SECRET, connect.CLUSTER_SECRET_NAME)
    before = {name: _secret_data(_render(state), name) for name in names}
    rotated_files = _render(state, rotate=True)
    rotated = {name: _secret_data(rotated_files, name) for name in names}
    for name in names:
        assert rotated[name]["ca.crt"] == before[name]["ca.crt"]
        assert rotated[name]["tls.crt"] != before[name]["tls.crt"]
        assert rotated[name]["tls.key"] != before[name]["tls.key"]
    described = connect.CLUSTER_SECRET_NAME
    assert rotated[described]["cluster.secret"] == before[described]["cluster.secret"]

    replaced = _secret_data(_render(state, force=True), deploy_render.SERVER_CERT_SECRET)
    assert replaced["ca.crt"] != before[deploy_render.SERVER_CERT_SECRET]["ca.crt"]


def test_a_new_endpoint_reissues_only_the_server_certificate(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state"
    before = _render(state)
    options = deploy_render.Options(cluster_name="cluster-a", cluster_id=1, endpoints=("https://198.51.100.4:32379",))
    material = deploy_render.prepare_material(state, options)
    after = deploy_render.render(options, material)

    assert [path.name for path in material.written] == ["server.crt", "server.key"]
    server = x509.load_pem_x509_certificate(material.server.cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "198.51.100.4" in map(str, names.get_values_for_type(x509.IPAddress))
    assert "clustermesh-apiserver.clustermesh.svc" in names.get_values_for_type(x509.DNSName)
    for name in (deploy_render.ADMIN_CERT_SECRET,):
        assert _secret_data(after, name) == _secret_data(before, name)
    assert _secret_data(after, deploy_render.SERVER_CERT_SECRET)["ca.crt"] == (
        _secret_data(before, deploy_render.SERVER_CERT_SECRET)["ca.crt"]
    )


def test_the_self_description_reads_back_through_connect(tmp_path: pathlib.Path) -> None:
    options = OPTION_SETS["loadbalancer-pvc"]
    files = _render(tmp_path / "state", options)
    [described] = [doc for doc in files[deploy_render.SECRETS_FILE]
                   if doc["metadata"]["name"] == connect.CLUSTER_SECRET_NAME]

    own = connect.trust_from_secret(described)

    assert (own.name, own.cluster_id, own.endpoints) == ("cluster-b", 2, ("https://203.0.113.10:2379",))
    assert own.pod_cidrs == options.pod_cidrs
    assert own.max_connected_clusters == 255
    assert _cn(own.cert) == "remote", "peers get the read-only user, nothing more"
    assert own.secret == trust.load_cluster_secret(tmp_path / "state" / trust.SECRET_FILE)
    assert described["metadata"]["namespace"] == options.namespace


def test_secrets_never_carry_the_ca_key(tmp_path: pathlib.Path) -> None:
    files = _render(tmp_path / "state")
    ca_key = (tmp_path / "state" / "ca.key").read_bytes()
    for secret in files[deploy_render.SECRETS_FILE]:
        assert ca_key not in _secret_data(files, secret["metadata"]["name"]).values()


def test_a_state_directory_of_another_cluster_is_refused(tmp_path: pathlib.Path) -> None:
    _render(tmp_path / "state")
    other = deploy_render.Options(cluster_name="cluster-b", cluster_id=2)
    with pytest.raises(errors.CertificateError, match="holds the certificates of cluster 'cluster-a'"):
        deploy_render.prepare_material(tmp_path / "state", other)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cluster_id": 0}, "ClusterID 0 is reserved"),
        ({"cluster_name": "Cluster_A"}, "invalid cluster name"),
        ({"namespace": "Not-A-Label"}, "--namespace"),
        ({"endpoints": ("http://203.0.113.1:2379",)}, "--endpoint"),
        ({"endpoints": ("https://203.0.113.1:2379/path",)}, "--endpoint"),
        ({"pod_cidrs": ("10.0.0.0/33",)}, "--pod-cidr"),
        ({"etcd_storage_size": "lots"}, "--etcd-storage-size"),
        ({"image": "has space"}, "--image"),
        ({"peer_namespace": "clustermesh"}, "--peer-namespace: must differ from --namespace"),
        ({"peer_namespace": "Not-A-Label"}, "--peer-namespace"),
        ({"namespace": "n" * 60}, "--peer-namespace: 'nnn"),
        ({"peer_namespace": "peers", "peer_source": deploy_render.PeerSource.MESH_CONFIG}, "applies only with"),
    ],
)
def test_invalid_options_are_refused(changes: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"cluster_name": "cluster-a", "cluster_id": 1, **changes}
    with pytest.raises(errors.ConfigError, match=message):
        deploy_render.Options(**values)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clustermesh", "deploy", "render", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_applyable_files_and_keeps_secrets_private(tmp_path: pathlib.Path) -> None:
    common = ("--cluster-name", "cluster-a", "--cluster-id", "1", "--state-dir", str(tmp_path / "state"))
    result = _cli(*common, "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(
        deploy_render.render(BASE_OPTIONS, None) | {deploy_render.SECRETS_FILE: []}
    )
    assert stat.S_IMODE((tmp_path / "out" / deploy_render.SECRETS_FILE).stat().st_mode) == 0o600
    assert "wrote " in result.stderr and "kubectl apply -f" in result.stderr

    streamed = _cli(*common)
    assert streamed.returncode == 0, streamed.stderr
    assert "wrote " not in streamed.stderr, "the second render keeps every certificate"
    documents = list(yaml.safe_load_all(streamed.stdout))
    paths = sorted((tmp_path / "out").glob("*.yaml"))
    on_disk = [document for path in paths for document in yaml.safe_load_all(path.read_text())]
    assert documents == on_disk


@pytest.mark.parametrize(
    "args",
    [
        ("--cluster-name", "cluster-a", "--cluster-id", "256"),
        ("--cluster-name", "cluster-a", "--cluster-id", "1", "--service-type", "ExternalName"),
        ("--cluster-name", "cluster-a", "--cluster-id", "1", "--etcd-storage", "hostpath"),
        ("--cluster-name", "cluster-a", "--cluster-id", "1", "--rotate", "--force"),
        ("--cluster-name", "cluster-a", "--cluster-id", "1", "--san", "not a name"),
        ("--cluster-name", "cluster-a", "--cluster-id", "1", "--peer-source", "files"),
        ("--cluster-name", "cluster-a", "--cluster-id", "1", "--peer-namespace", "clustermesh"),
    ],
)
def test_cli_exits_2_on_invalid_options(tmp_path: pathlib.Path, args: tuple[str, ...],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        code = cli_main.main(["deploy", "render", *args, "--state-dir", str(tmp_path / "state")])
        raise SystemExit(code)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip()
    assert not (tmp_path / "state").exists()


def test_cli_rotate_without_state_fails_with_a_hint(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main.main(["deploy", "render", "--cluster-name", "cluster-a", "--cluster-id", "1", "--rotate",
                          "--state-dir", str(tmp_path / "state")])
    assert code == 1
    assert "render once without --rotate" in capsys.readouterr().err
