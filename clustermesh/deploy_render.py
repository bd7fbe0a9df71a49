"""Kubernetes manifests for one cluster of the mesh: everything `kubectl apply -f` needs, certificates included.

Owns the shape of a deployment (reference §0, adapted): a namespace; the `ClusterMesh` CRD; service accounts
and least-privilege RBAC; the apiserver Deployment — the official etcd image as a native sidecar (TLS,
`--client-cert-auth`, data on an emptyDir or a PVC), the `etcd-init` init container (`clustermesh etcd init`:
users, roles, auth; idempotent) and the `clustermesh-apiserver` container reading the Kubernetes API; the
Service peers reach etcd through; the agent DaemonSet with its DNS Service; and the Secrets: etcd's server
pair, the apiserver's admin pair, and `clustermesh-cluster`, the cluster's self-description that `clustermesh
connect` reads (connect.cluster_secret).

The agents learn their peers in one of two ways (PeerSource). By default from the ClusterMesh resource and the
peer Secrets it references, read live from the API: the peer Secrets then live in a namespace of their own
(`<namespace>-peers`), where the agents may list and watch Secrets and nothing else lives. A Role cannot name
Secrets that `connect` adds later (`resourceNames` are fixed when the Role is written, and an empty list means
every name), and the agents' own namespace holds the apiserver's admin and server keys, so the namespace is the
boundary; the agents still request each Secret by name only. The alternative mounts the Secret
`clustermesh-peers` as a mesh-config directory (Cilium's way): no Secret access at all, but the Secret is
rendered by hand after every change (`clustermesh deploy mesh-config`) and reaches the pods with the kubelet's
delay. These Python objects are the one source of the manifests: `clustermesh
deploy render` writes them, and deploy/kubernetes/ holds them rendered for the example cluster `cluster-a`
without Secrets (tests/deploy keeps both equal). The CRD itself is clustermesh/schemas/clustermesh-crd.json.

mesh_config_secret() closes the loop after `connect` for the mesh-config alternative: from the ClusterMesh
resource and the peer Secrets it references, the Secret the agents mount as their mesh-config directory.

Trust material lives in a state directory (clustermesh.certs layout, plus trust's `cluster.secret`): re-rendering
keeps it, so applying a new render changes no certificate unless asked to (`rotate` re-issues the leaves from
the same CA, `force` starts over with a new CA). The CA's key never leaves the state directory.

Does not own: the certificates themselves (clustermesh.certs), the cluster secret (clustermesh.trust), the
etcd policy (clustermesh.etcd.access), the peer Secret format (clustermesh.connect), talking to a cluster (the
operator runs kubectl).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import ipaddress
import pathlib
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import yaml
from cryptography import x509

from clustermesh import __version__, certs, connect, errors, identity, tls, trust

# --- names other tools rely on -------------------------------------------------------------------------

DEFAULT_NAMESPACE = "clustermesh"
APISERVER = "clustermesh-apiserver"
"""Name of the apiserver Deployment, its ServiceAccount, and the Service peers reach its etcd through."""
AGENT = "clustermesh-agent"
"""Name of the agent DaemonSet and its ServiceAccount."""
AGENT_DNS_SERVICE = "clustermesh-dns"
SERVER_CERT_SECRET = "clustermesh-apiserver-server-cert"
ADMIN_CERT_SECRET = "clustermesh-apiserver-admin-cert"
PEERS_SECRET = "clustermesh-peers"
"""The agents' mesh-config directory: one key per peer in Cilium's format (reference §4.1), as a Secret."""
PEER_NAMESPACE_SUFFIX = "-peers"
"""The peer Secrets' namespace is the deployment's namespace plus this, unless given."""
ETCD_CLIENT_PORT = 2379


# --- defaults ------------------------------------------------------------------------------------------

DEFAULT_IMAGE = f"clustermesh:{__version__}"
"""The tag docs/deploy.md builds the Dockerfile as; pass --image with your registry's copy."""
DEFAULT_ETCD_IMAGE = "gcr.io/etcd-development/etcd:v3.5.17"
"""The official etcd image, of the release line clustermesh tests against (3.5)."""
DEFAULT_STORAGE_SIZE = "1Gi"
DEFAULT_STATE_ROOT = pathlib.Path(".clustermesh") / "deploy"

# Ports inside the pods. The apiserver's are its own defaults (apiserver/config.py), spelled out so the
# probes and the container agree; etcd's metrics listener also serves /health for its probes.
_APISERVER_HEALTH_PORT = 9880
_APISERVER_METRICS_PORT = 9962
_ETCD_METRICS_PORT = 9963
_AGENT_METRICS_PORT = 9965
_AGENT_HEALTH_PORT = 9879
_AGENT_DNS_PORT = 5353
# The uid/gid the Dockerfile creates; the etcd image runs as it too so both can share the volumes.
_RUN_AS = 65532

_ETCD_VOLUME = "/var/run/etcd"
# A directory etcd creates itself, with the mode 0700 it wants (a volume's root is group-writable).
_ETCD_DATA = f"{_ETCD_VOLUME}/data"
_ETCD_SERVER_TLS = "/etc/clustermesh/etcd-server"
_ETCD_ADMIN_TLS = "/etc/clustermesh/etcd-admin"
AGENT_MESH_CONFIG = pathlib.Path("/var/lib/clustermesh/mesh-config")
"""Where the agent DaemonSet mounts the mesh-config Secret (its `--mesh-config` directory)."""
AGENT_PEER_TLS = pathlib.Path("/var/lib/clustermesh/peer-tls")
"""The agents' `--peer-tls-dir`: a memory-backed volume, so the peers' keys never reach the node's disk."""
_AGENT_RUN = "/var/run/clustermesh"
_KUBE_API_ACCESS = "/var/run/secrets/kubernetes.io/serviceaccount"
_LOCAL_ETCD = f"https://127.0.0.1:{ETCD_CLIENT_PORT}"

_HEADER = (
    "# Rendered by `clustermesh deploy render` (clustermesh {version}) for cluster {cluster} (id {cluster_id}).\n"
    "# Change the render options (the CRD: clustermesh/schemas/clustermesh-crd.json), not this file: docs/deploy.md.\n"
)

_DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


class ServiceType(enum.StrEnum):
    """How peers reach this cluster's etcd (the apiserver Service's type)."""

    CLUSTER_IP = "ClusterIP"
    LOAD_BALANCER = "LoadBalancer"
    NODE_PORT = "NodePort"


class PeerSource(enum.StrEnum):
    """Where the agents read their peers from (see the module docstring); the value names the agent's flag."""

    CLUSTER_MESH_RESOURCE = "clustermesh-resource"
    MESH_CONFIG = "mesh-config"


class EtcdStorage(enum.StrEnum):
    """Where etcd keeps its data: an emptyDir (Cilium's default; the apiserver re-publishes after a restart)
    or a PersistentVolumeClaim (identities and lease ids survive a rescheduled pod)."""

    EMPTY_DIR = "emptydir"
    PVC = "pvc"


@dataclasses.dataclass(frozen=True)
class Options:
    """What varies between clusters and deployments. Construction validates; ConfigError names the option."""

    cluster_name: str
    cluster_id: int
    max_connected_clusters: int = int(identity.ClusterIDMode.DEFAULT)
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    etcd_image: str = DEFAULT_ETCD_IMAGE
    service_type: ServiceType = ServiceType.CLUSTER_IP
    etcd_storage: EtcdStorage = EtcdStorage.EMPTY_DIR
    etcd_storage_size: str = DEFAULT_STORAGE_SIZE
    endpoints: tuple[str, ...] = ()
    """The etcd URLs peers dial (`https://HOST:PORT`); their hosts go into the server certificate.
    Default: the Service's in-cluster name, which only peers sharing this cluster's DNS can resolve."""
    sans: tuple[str, ...] = ()
    """More names or IPs for the server certificate (a second load balancer name, a DNS alias)."""
    pod_cidrs: tuple[str, ...] = ()
    peer_source: PeerSource = PeerSource.CLUSTER_MESH_RESOURCE
    peer_namespace: str | None = None
    """Where the peer Secrets live, with PeerSource.CLUSTER_MESH_RESOURCE (default `<namespace>-peers`)."""

    def __post_init__(self) -> None:
        identity.validate_max_connected_clusters(self.max_connected_clusters)
        identity.validate_cluster(self.cluster_name, self.cluster_id, self.max_connected_clusters)
        if len(self.namespace) > 63 or not _matches(_DNS_LABEL_PATTERN, self.namespace):
            raise errors.ConfigError(f"--namespace: {self.namespace!r} is not a DNS label")
        if self.peer_source is PeerSource.CLUSTER_MESH_RESOURCE:
            peers = self.peer_secrets_namespace
            if len(peers) > 63 or not _matches(_DNS_LABEL_PATTERN, peers):
                raise errors.ConfigError(f"--peer-namespace: {peers!r} is not a DNS label")
            if peers == self.namespace:
                raise errors.ConfigError(
                    f"--peer-namespace: must differ from --namespace: the agents may read every Secret in {peers}, "
                    "and the apiserver's keys are in --namespace"
                )
        elif self.peer_namespace is not None:
            raise errors.ConfigError("--peer-namespace applies only with --peer-source clustermesh-resource")
        for flag, image in (("--image", self.image), ("--etcd-image", self.etcd_image)):
            if not image or any(ch.isspace() for ch in image):
                raise errors.ConfigError(f"{flag}: {image!r} is not an image reference")
        for endpoint in self.endpoints:
            _endpoint_host(endpoint)
        for san in self.sans:
            certs.parse_san(san)
        for cidr in self.pod_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise errors.ConfigError(f"--pod-cidr: {cidr!r} is not a CIDR") from None
        if not _matches(_QUANTITY_PATTERN, self.etcd_storage_size):
            raise errors.ConfigError(f"--etcd-storage-size: {self.etcd_storage_size!r} is not a size such as 1Gi")


    @property
    def peer_secrets_namespace(self) -> str:
        """The namespace of the peer Secrets (`clustermesh connect --peer-namespace`)."""
        return self.peer_namespace or f"{self.namespace}{PEER_NAMESPACE_SUFFIX}"

    @property
    def peer_endpoints(self) -> tuple[str, ...]:
        """The etcd URLs this cluster hands to its peers (through `connect`)."""
        default = f"https://{APISERVER}.{self.namespace}.svc:{ETCD_CLIENT_PORT}"
        return self.endpoints or (default,)


def _matches(pattern: str, text: str) -> bool:
    return re.fullmatch(pattern, text) is not None


def _endpoint_host(endpoint: str) -> str:
    """The host of an `https://HOST[:PORT]` etcd URL; ConfigError naming the URL otherwise."""
    url = urllib.parse.urlsplit(endpoint)
    try:
        valid = url.scheme == "https" and url.hostname is not None and not url.path.strip("/") and (
            url.port is None or url.port > 0)
    except ValueError:
        valid = False
    if not valid or url.hostname is None:
        raise errors.ConfigError(f"--endpoint: {endpoint!r} is not an https://HOST[:PORT] URL")
    certs.parse_san(url.hostname)
    return url.hostname


# --- trust material ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
    """A PEM certificate and its PEM private key."""

    cert: bytes
    key: bytes


@dataclasses.dataclass(frozen=True)
class Material:
    """The trust material the rendered Secrets carry, and which state files this render wrote or kept."""

    ca: bytes
    server: Pair
    admin: Pair
    remote: Pair
    cluster_secret: bytes
    written: tuple[pathlib.Path, ...] = ()
    kept: tuple[pathlib.Path, ...] = ()


def server_sans(options: Options) -> tuple[str, ...]:
    """The names the etcd server certificate carries besides clustermesh.certs' own (loopback and
    `<cluster>.mesh.cilium.io`): the apiserver Service's in-cluster names, the endpoints' hosts, the --san."""
    service = f"{APISERVER}.{options.namespace}"
    in_cluster = (APISERVER, service, f"{service}.svc", f"{service}.svc.cluster.local")
    dialled = (_endpoint_host(endpoint) for endpoint in options.endpoints)
    return tuple(dict.fromkeys((*in_cluster, *dialled, *options.sans)))


def prepare_material(
    state_dir: pathlib.Path, options: Options, *, rotate: bool = False, force: bool = False
) -> Material:
    """Create or load the cluster's CA, pairs and cluster secret in state_dir; the material to render.

    Idempotent: what exists is kept, so two renders with the same state directory carry the same
    certificates. rotate=True re-issues every leaf from the existing CA (peers keep trusting the cluster);
    force=True replaces the CA and every leaf (peers must be connected again). A server certificate that
    lacks a wanted SAN is re-issued alone, from the same CA, keeping the names it had. The cluster secret is
    created once and never replaced here. Raise CertificateError when the directory belongs to another
    cluster or its material is unusable, ValueError when both rotate and force are asked for.
    """
    if rotate and force:
        raise ValueError("rotate and force are exclusive: force already replaces every certificate")
    cluster = options.cluster_name
    wanted = server_sans(options)
    _check_owner(state_dir, cluster)
    written: list[pathlib.Path] = []
    if rotate:
        if not (state_dir / "ca.crt").exists():
            raise errors.CertificateError(
                f"--rotate: {state_dir} holds no certificates yet; render once without --rotate to create them"
            )
        written += certs.rotate(state_dir, cluster).written
    result = certs.init_cluster(state_dir, cluster, sans=wanted, force=force)
    written += result.written
    present = _sans_of(result.server.cert)
    if not set(wanted) <= set(present):
        # init_cluster keeps an existing pair as it is; issue the server pair again from the same CA, with
        # every name it had plus the new ones.
        result.server.cert.unlink()
        result.server.key.unlink()
        reissued = certs.init_cluster(state_dir, cluster, sans=(*present, *wanted))
        written += reissued.written
    secret_existed = trust.secret_path(state_dir).exists()
    cluster_secret = trust.ensure_cluster_secret(state_dir)
    if not secret_existed:
        written.append(trust.secret_path(state_dir))
    everything = (result.ca, result.server.cert, result.server.key, result.admin.cert, result.admin.key,
                  result.remote.cert, result.remote.key, trust.secret_path(state_dir))
    return Material(
        ca=result.ca.read_bytes(),
        server=_pair(result.server),
        admin=_pair(result.admin),
        remote=_pair(result.remote),
        cluster_secret=cluster_secret,
        written=tuple(dict.fromkeys(written)),
        kept=tuple(path for path in everything if path not in written),
    )


def _pair(files: tls.TLSFiles) -> Pair:
    return Pair(cert=files.cert.read_bytes(), key=files.key.read_bytes())


def _check_owner(state_dir: pathlib.Path, cluster: str) -> None:
    """Refuse a state directory holding another cluster's certificates (their CNs name that cluster)."""
    admin = certs.pair_files(state_dir, "admin").cert
    if not admin.exists():
        return
    try:
        cert = x509.load_pem_x509_certificate(admin.read_bytes())
    except (OSError, ValueError) as exc:
        raise errors.CertificateError(f"cannot read {admin}: {exc}") from None
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    owner = str(names[0].value).removeprefix("admin-") if names else ""
    if owner != cluster:
        raise errors.CertificateError(
            f"{state_dir} holds the certificates of cluster {owner!r}, not {cluster!r}: use another --state-dir"
        )


def _sans_of(cert_path: pathlib.Path) -> tuple[str, ...]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return (*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress)))


# --- manifests -----------------------------------------------------------------------------------------

Manifest = dict[str, Any]

NAMESPACE_FILE = "00-namespace.yaml"
CRD_FILE = "01-crd.yaml"
RBAC_FILE = "02-rbac.yaml"
SECRETS_FILE = "03-secrets.yaml"
APISERVER_FILE = "10-apiserver.yaml"
AGENT_FILE = "20-agent.yaml"


def render(options: Options, material: Material | None) -> dict[str, list[Manifest]]:
    """Every manifest of one cluster, grouped by file name in `kubectl apply` order.

    Without material the Secrets are left out (the checked-in base manifests, or Secrets managed elsewhere
    under the same names and keys).
    """
    namespaces = [options.namespace]
    if options.peer_source is PeerSource.CLUSTER_MESH_RESOURCE:
        namespaces.append(options.peer_secrets_namespace)
    files = {
        NAMESPACE_FILE: [_namespace(name) for name in namespaces],
        CRD_FILE: [crd()],
        RBAC_FILE: rbac(options),
    }
    if material is not None:
        files[SECRETS_FILE] = secrets(options, material)
    files[APISERVER_FILE] = _apiserver(options)
    files[AGENT_FILE] = _agent(options)
    return files


def _labels(name: str, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component,
            "app.kubernetes.io/part-of": "clustermesh"}


def _metadata(name: str, options: Options | None, component: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if options is not None:
        metadata["namespace"] = options.namespace
    metadata["labels"] = _labels(name, component)
    return metadata


def _namespace(name: str) -> Manifest:
    metadata = _metadata(name, None, "namespace")
    # Every pod here runs unprivileged, as non-root, with a read-only root file system: enforce it.
    metadata["labels"]["pod-security.kubernetes.io/enforce"] = "restricted"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def crd() -> Manifest:
    """The ClusterMesh CustomResourceDefinition, exactly as clustermesh/schemas/clustermesh-crd.json holds it.

    That file is the one definition of the resource's schema: `connect` validates what it writes against it,
    and rendering it here means the cluster enforces the same rules.
    """
    return connect.cluster_mesh_crd()


# What each daemon reads from the Kubernetes API, and nothing else (the source kinds of apiserver/publisher.py
# and agent/local_services.py). tests/deploy records the daemons' requests and checks both directions.
_LIST_WATCH = ["list", "watch"]
APISERVER_RULES: tuple[Manifest, ...] = (
    {"apiGroups": [""], "resources": ["namespaces", "nodes", "pods", "services"], "verbs": _LIST_WATCH},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _LIST_WATCH},
    {"apiGroups": ["multicluster.x-k8s.io"], "resources": ["serviceexports"], "verbs": _LIST_WATCH},
)
AGENT_RULES: tuple[Manifest, ...] = (
    {"apiGroups": [""], "resources": ["namespaces", "services"], "verbs": _LIST_WATCH},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": _LIST_WATCH},
)
AGENT_CLUSTER_MESH_RULES: tuple[Manifest, ...] = (
    {"apiGroups": [connect.CLUSTER_MESH_GROUP], "resources": [connect.CLUSTER_MESH_PLURAL], "verbs": _LIST_WATCH},
)
"""With PeerSource.CLUSTER_MESH_RESOURCE, cluster-wide (the resource is cluster-scoped; it holds no secrets)."""
AGENT_PEER_SECRET_RULES: tuple[Manifest, ...] = (
    {"apiGroups": [""], "resources": ["secrets"], "verbs": _LIST_WATCH},
)
"""With PeerSource.CLUSTER_MESH_RESOURCE, in the peer Secrets' namespace only (see the module docstring)."""


def rbac(options: Options) -> list[Manifest]:
    """ServiceAccounts and the least-privilege roles of both daemons: read-only, only what each one watches."""
    documents: list[Manifest] = []
    agent_rules = AGENT_RULES
    if options.peer_source is PeerSource.CLUSTER_MESH_RESOURCE:
        agent_rules += AGENT_CLUSTER_MESH_RULES
    for name, component, rules in ((APISERVER, "apiserver", APISERVER_RULES), (AGENT, "agent", agent_rules)):
        documents.append({"apiVersion": "v1", "kind": "ServiceAccount",
                          "metadata": _metadata(name, options, component)})
        # Cluster-wide names: renders into two namespaces of one cluster must not collide.
        role_name = name if options.namespace == DEFAULT_NAMESPACE else f"{name}-{options.namespace}"
        documents.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": _metadata(role_name, None, component), "rules": [dict(rule) for rule in rules],
        })
        documents.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": _metadata(role_name, None, component),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": options.namespace}],
        })
    if options.peer_source is PeerSource.CLUSTER_MESH_RESOURCE:
        metadata = {"name": AGENT, "namespace": options.peer_secrets_namespace, "labels": _labels(AGENT, "agent")}
        documents.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(metadata),
            "rules": [dict(rule) for rule in AGENT_PEER_SECRET_RULES],
        })
        documents.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(metadata),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT},
            "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": options.namespace}],
        })
    return documents


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secrets(options: Options, material: Material) -> list[Manifest]:
    """The Secrets: etcd's server pair and the apiserver's admin pair (each with the CA certificate as
    `ca.crt`, never the CA's key), and the cluster's self-description that `clustermesh connect` reads
    (connect.cluster_secret: identity, endpoints, the read-only `remote` pair and the cluster secret)."""
    documents = []
    for name, pair in ((SERVER_CERT_SECRET, material.server), (ADMIN_CERT_SECRET, material.admin)):
        documents.append({
            "apiVersion": "v1", "kind": "Secret", "metadata": _metadata(name, options, "certificates"),
            "type": "kubernetes.io/tls",
            "data": {"ca.crt": _b64(material.ca), "tls.crt": _b64(pair.cert), "tls.key": _b64(pair.key)},
        })
    own = connect.ClusterTrust(
        name=options.cluster_name,
        cluster_id=options.cluster_id,
        endpoints=options.peer_endpoints,
        ca=material.ca,
        cert=material.remote.cert,
        key=material.remote.key,
        secret=material.cluster_secret,
        max_connected_clusters=options.max_connected_clusters,
        pod_cidrs=options.pod_cidrs,
    )
    described = connect.cluster_secret(own, namespace=options.namespace)
    described["metadata"]["labels"] = {**described["metadata"]["labels"],
                                       **_labels(connect.CLUSTER_SECRET_NAME, "certificates")}
    documents.append(described)
    return documents


_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": _RUN_AS, "runAsGroup": _RUN_AS, "fsGroup": _RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _secret_volume(name: str, secret: str, *, optional: bool = False) -> dict[str, Any]:
    source: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if optional:
        source["optional"] = True
    return {"name": name, "secret": source}


def _api_access_volume() -> dict[str, Any]:
    """The volume Kubernetes mounts into every container when automounting (kube-api-access), to mount into
    one container only: a bound service account token, the cluster's CA and the namespace."""
    return {"name": "kube-api-access", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}


def _resources(cpu: str, memory: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}}


def _http_probe(path: str, port: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def _etcd_container(options: Options) -> dict[str, Any]:
    # Reference §0: a single member, client-cert auth, listening on loopback for the pod and on the pod IP
    # for peers; peer traffic stays on loopback. Progress notifications keep idle watches' resume points fresh.
    peer_url = "http://127.0.0.1:2380"
    return {
        "name": "etcd",
        "image": options.etcd_image,
        # A native sidecar: started before etcd-init and the apiserver, stopped after them.
        "restartPolicy": "Always",
        "command": ["/usr/local/bin/etcd"],
        "args": [
            f"--name={APISERVER}",
            f"--data-dir={_ETCD_DATA}",
            f"--listen-client-urls={_LOCAL_ETCD},https://[$(POD_IP)]:{ETCD_CLIENT_PORT}",
            f"--advertise-client-urls=https://[$(POD_IP)]:{ETCD_CLIENT_PORT}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={APISERVER}={peer_url}",
            "--initial-cluster-token=$(POD_UID)",
            "--client-cert-auth",
            f"--trusted-ca-file={_ETCD_SERVER_TLS}/ca.crt",
            f"--cert-file={_ETCD_SERVER_TLS}/tls.crt",
            f"--key-file={_ETCD_SERVER_TLS}/tls.key",
            f"--listen-metrics-urls=http://0.0.0.0:{_ETCD_METRICS_PORT}",
            "--auto-compaction-retention=1",
            "--experimental-watch-progress-notify-interval=10s",
        ],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        ],
        "ports": [
            {"name": "etcd", "containerPort": ETCD_CLIENT_PORT, "protocol": "TCP"},
            {"name": "etcd-metrics", "containerPort": _ETCD_METRICS_PORT, "protocol": "TCP"},
        ],
        # etcd-init starts once this passes; /health counts a permission error as healthy, so it stays
        # meaningful after auth is enabled.
        "startupProbe": _http_probe("/health", "etcd-metrics", period=2, failures=60),
        "livenessProbe": _http_probe("/health", "etcd-metrics", period=10, failures=6),
        "resources": _resources("100m", "128Mi"),
        "securityContext": _RESTRICTED,
        "volumeMounts": [
            {"name": "etcd-data", "mountPath": _ETCD_VOLUME},
            {"name": "etcd-server-cert", "mountPath": _ETCD_SERVER_TLS, "readOnly": True},
        ],
    }


def _admin_flags(options: Options) -> list[str]:
    return [
        f"--cluster-name={options.cluster_name}",
        f"--etcd-endpoints={_LOCAL_ETCD}",
        f"--etcd-ca={_ETCD_ADMIN_TLS}/ca.crt",
        f"--etcd-cert={_ETCD_ADMIN_TLS}/tls.crt",
        f"--etcd-key={_ETCD_ADMIN_TLS}/tls.key",
    ]


def _apiserver(options: Options) -> list[Manifest]:
    etcd_init = {
        "name": "etcd-init",
        "image": options.image,
        "command": ["clustermesh", "--log-level=info", "etcd", "init"],
        "args": [*_admin_flags(options), "--timeout=300"],
        "resources": _resources("10m", "64Mi"),
        "securityContext": _RESTRICTED,
        "volumeMounts": [{"name": "etcd-admin-cert", "mountPath": _ETCD_ADMIN_TLS, "readOnly": True}],
    }
    apiserver = {
        "name": "apiserver",
        "image": options.image,
        "command": ["clustermesh-apiserver"],
        "args": [
            *_admin_flags(options),
            f"--cluster-id={options.cluster_id}",
            f"--max-connected-clusters={options.max_connected_clusters}",
            "--source=kubernetes",
            f"--health-listen=:{_APISERVER_HEALTH_PORT}",
            f"--metrics-listen=:{_APISERVER_METRICS_PORT}",
        ],
        "ports": [
            {"name": "health", "containerPort": _APISERVER_HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": _APISERVER_METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _http_probe("/readyz", "health", period=5, failures=3),
        "livenessProbe": _http_probe("/healthz", "health", period=10, failures=6),
        "resources": _resources("100m", "128Mi"),
        "securityContext": _RESTRICTED,
        "volumeMounts": [
            {"name": "etcd-admin-cert", "mountPath": _ETCD_ADMIN_TLS, "readOnly": True},
            {"name": "kube-api-access", "mountPath": _KUBE_API_ACCESS, "readOnly": True},
        ],
    }
    if options.etcd_storage is EtcdStorage.PVC:
        data_volume: dict[str, Any] = {"name": "etcd-data",
                                       "persistentVolumeClaim": {"claimName": f"{APISERVER}-etcd"}}
        # A ReadWriteOnce volume cannot be attached to the old and the new pod at once.
        strategy: dict[str, Any] = {"type": "Recreate"}
    else:
        data_volume = {"name": "etcd-data", "emptyDir": {}}
        strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    selector = {"app.kubernetes.io/name": APISERVER}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(APISERVER, options, "apiserver"),
        "spec": {
            # One etcd per pod: a second replica would be a second, independent etcd behind the Service.
            "replicas": 1,
            "strategy": strategy,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": _labels(APISERVER, "apiserver")},
                "spec": {
                    "serviceAccountName": APISERVER,
                    # Only the apiserver container talks to Kubernetes: etcd and etcd-init get no token.
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "initContainers": [_etcd_container(options), etcd_init],
                    "containers": [apiserver],
                    "volumes": [
                        data_volume,
                        _secret_volume("etcd-server-cert", SERVER_CERT_SECRET),
                        _secret_volume("etcd-admin-cert", ADMIN_CERT_SECRET),
                        _api_access_volume(),
                    ],
                },
            },
        },
    }
    service_spec: dict[str, Any] = {
        "type": str(options.service_type),
        "selector": selector,
        "ports": [{"name": "etcd", "port": ETCD_CLIENT_PORT, "targetPort": "etcd", "protocol": "TCP"}],
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(APISERVER, options, "apiserver"),
               "spec": service_spec}
    documents: list[Manifest] = []
    if options.etcd_storage is EtcdStorage.PVC:
        documents.append({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _metadata(f"{APISERVER}-etcd", options, "apiserver"),
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": options.etcd_storage_size}}},
        })
    return [*documents, deployment, service]


def _agent(options: Options) -> list[Manifest]:
    volumes: list[dict[str, Any]] = [{"name": "run", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "run", "mountPath": _AGENT_RUN}]
    if options.peer_source is PeerSource.CLUSTER_MESH_RESOURCE:
        peer_args = [
            "--clustermesh-resource=kubernetes",
            f"--clustermesh-namespace={options.peer_secrets_namespace}",
            f"--peer-tls-dir={AGENT_PEER_TLS}",
        ]
        volumes.append({"name": "peer-tls", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}})
        mounts.append({"name": "peer-tls", "mountPath": str(AGENT_PEER_TLS)})
    else:
        peer_args = [f"--mesh-config={AGENT_MESH_CONFIG}"]
        # Optional: the agents start, and serve local services, before the first peer is connected.
        volumes.append(_secret_volume("mesh-config", PEERS_SECRET, optional=True))
        mounts.append({"name": "mesh-config", "mountPath": str(AGENT_MESH_CONFIG), "readOnly": True})
    args = [
        f"--cluster-name={options.cluster_name}",
        f"--cluster-id={options.cluster_id}",
        f"--max-connected-clusters={options.max_connected_clusters}",
        "--node-name=$(NODE_NAME)",
        *peer_args,
        "--local-source=kubernetes",
        f"--listen=unix:{_AGENT_RUN}/agent.sock",
        f"--dns-listen=0.0.0.0:{_AGENT_DNS_PORT}",
        f"--metrics-listen=0.0.0.0:{_AGENT_METRICS_PORT}",
        f"--health-listen=0.0.0.0:{_AGENT_HEALTH_PORT}",
        *(f"--pod-cidr={cidr}" for cidr in options.pod_cidrs),
    ]
    container = {
        "name": "agent",
        "image": options.image,
        "command": ["clustermesh-agent"],
        "args": args,
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "ports": [
            {"name": "dns-udp", "containerPort": _AGENT_DNS_PORT, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": _AGENT_DNS_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": _AGENT_METRICS_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": _AGENT_HEALTH_PORT, "protocol": "TCP"},
        ],
        # /readyz does not follow the peers' health (agent/health.py): a peer that is down must not take this
        # node's DNS endpoint away while the agent answers from last-known state and the other peers.
        "readinessProbe": _http_probe("/readyz", "health", period=10, failures=3),
        "livenessProbe": _http_probe("/healthz", "health", period=20, failures=3),
        "resources": _resources("50m", "128Mi"),
        "securityContext": _RESTRICTED,
        "volumeMounts": mounts,
    }
    selector = {"app.kubernetes.io/name": AGENT}
    daemon_set = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _metadata(AGENT, options, "agent"),
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": _labels(AGENT, "agent")},
                "spec": {
                    "serviceAccountName": AGENT,
                    "securityContext": _pod_security(),
                    # Every node, control-plane and tainted ones included.
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    # Pods ask the agent on their own node: internalTrafficPolicy Local keeps DNS on the node.
    dns_service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _metadata(AGENT_DNS_SERVICE, options, "agent"),
        "spec": {
            "type": "ClusterIP",
            "internalTrafficPolicy": "Local",
            "selector": selector,
            "ports": [
                {"name": "dns-udp", "port": 53, "targetPort": "dns-udp", "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "targetPort": "dns-tcp", "protocol": "TCP"},
            ],
        },
    }
    return [daemon_set, dns_service]


# --- the agents' peers --------------------------------------------------------------------------------


def mesh_config_secret(
    documents: Iterable[Any], *, namespace: str = DEFAULT_NAMESPACE, mount: pathlib.Path = AGENT_MESH_CONFIG
) -> Manifest:
    """The agents' mesh-config Secret (PEERS_SECRET, Cilium's format) for the peers a ClusterMesh declares.

    `documents` are Kubernetes objects as `kubectl get -o yaml` prints them (List documents are unpacked): the
    cluster's ClusterMesh resource and the peer Secrets it references (`clustermesh connect` writes both). The
    result holds, per declared peer, the etcd client YAML named after the peer and its CA and `remote` pair,
    with the paths of the files once the Secret is mounted at `mount` (absolute, as Cilium's agent needs
    them; reference §4.1): what a local exchange writes into a mesh-config directory. A reference without a
    namespace means `namespace`. Raise ConfigError when there is not exactly one ClusterMesh, or a referenced
    Secret is absent, malformed or names another cluster than its entry; CertificateError when its pair does
    not match.
    """
    meshes: list[Manifest] = []
    secrets_by_name: dict[tuple[str, str], Manifest] = {}
    for document in _unpack(documents):
        if document.get("kind") == connect.CLUSTER_MESH_KIND:
            meshes.append(document)
        elif document.get("kind") == "Secret":
            metadata = document.get("metadata") or {}
            secrets_by_name[(str(metadata.get("namespace", namespace)), str(metadata.get("name")))] = document
    if len(meshes) != 1:
        raise errors.ConfigError(
            f"expected one {connect.CLUSTER_MESH_KIND} resource among the input, found {len(meshes)}: pass "
            f"`kubectl get {connect.CLUSTER_MESH_PLURAL} {connect.CLUSTER_MESH_NAME} -o yaml`"
        )
    data: dict[str, str] = {}
    for entry in (meshes[0].get("spec") or {}).get("clusters") or []:
        reference = entry.get("secret") or {}
        where = (str(reference.get("namespace") or namespace), str(reference.get("name")))
        secret = secrets_by_name.get(where)
        if secret is None:
            raise errors.ConfigError(
                f"peer {entry.get('name')!r}: Secret {where[0]}/{where[1]} is not among the input; "
                f"pass `kubectl -n {where[0]} get secret {where[1]} -o yaml` too"
            )
        peer = connect.trust_from_secret(secret)
        if peer.name != entry.get("name"):
            raise errors.ConfigError(
                f"peer {entry.get('name')!r}: Secret {where[0]}/{where[1]} describes cluster {peer.name!r}"
            )
        ca, cert, key = connect.peer_file_names(peer.name)
        data[peer.name] = _b64(connect.peer_file(mount, peer))
        data[ca], data[cert], data[key] = _b64(peer.ca), _b64(peer.cert), _b64(peer.key)
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": PEERS_SECRET, "namespace": namespace, "labels": _labels(PEERS_SECRET, "agent")},
        "type": "Opaque",
        "data": dict(sorted(data.items())),
    }


def _unpack(documents: Iterable[Any]) -> Iterator[Manifest]:
    for document in documents:
        if not isinstance(document, dict):
            continue
        if str(document.get("kind", "")).endswith("List") and isinstance(document.get("items"), list):
            yield from (item for item in document["items"] if isinstance(item, dict))
        else:
            yield document


# --- output --------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Plain YAML: a value shared by several manifests is written out each time, never as an anchor."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(documents: Iterable[Manifest]) -> str:
    """Documents as multi-document YAML, in order, keys in the order they were built."""
    return "".join(
        "---\n" + yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
        for document in documents
    )


def header(options: Options) -> str:
    """The comment that opens every rendered file."""
    return _HEADER.format(version=__version__, cluster=options.cluster_name, cluster_id=options.cluster_id)


def write(directory: pathlib.Path, files: Mapping[str, Sequence[Manifest]], options: Options) -> list[pathlib.Path]:
    """Write each file of `files` into directory (created if needed); Secrets with mode 0600. Returns the paths.

    Files are replaced atomically, so a concurrent `kubectl apply` never reads half a file. Other files in the
    directory are left alone. Raise CertificateError (clustermesh.certs' file error) if a file cannot be written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.ConfigError(f"-o: cannot create {directory}: {exc.strerror}") from None
    paths = []
    for name, documents in files.items():
        path = directory / name
        mode = 0o600 if name == SECRETS_FILE else 0o644
        certs.write_atomic(path, (header(options) + dump(documents)).encode(), mode=mode)
        paths.append(path)
    return paths
