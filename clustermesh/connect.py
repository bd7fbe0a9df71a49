"""The trust exchange: check that two clusters may be peers, then tell each how to read the other's etcd.

One side of the exchange is a ClusterTrust: the cluster's mesh identity (name, id, maxConnectedClusters, pod
CIDRs) and what a peer needs to read its etcd, read-only: the etcd endpoints, the CA bundle that verifies
them, a client pair whose CN is `remote` issued by *that cluster's* CA (the etcd user of reference §4.3), and
the cluster's `cluster.secret` (clustermesh.trust). check_pair() refuses pairs that cannot share a mesh,
with every reason at once. Then each cluster is told about the other, in one of two forms:

- a local cluster (`clustermesh up`): Cilium's mesh-config format in each agent's mesh-config directory:
  one etcd client YAML named after the peer, and the peer's CA and remote pair beside it as
  `<peer>.etcd-client-ca.crt`, `<peer>.etcd-client.crt`, `<peer>.etcd-client.key` (Helm's per-cluster names,
  reference §4.1). write_peer_files() writes the certificates before the YAML that names them, each file
  atomically and only when its content changed, so an agent never sees a peer file whose certificates are
  missing, and re-running the exchange does not make agents reconnect.
- a Kubernetes cluster: a Secret `<peer>-secret` (keys cluster.id, cluster.name, cluster.secret, endpoints,
  ca.crt, tls.crt, tls.key) and the `ClusterMesh` resource (cilium.io/v2alpha1, cluster-scoped, named
  `default`) whose `spec.clusters[].{name, secret{name, namespace}}` lists the peers. trust_from_secret()
  reads such a Secret back, so a Secret turns into exactly the peer files a local exchange writes.

A Kubernetes cluster describes itself to the exchange with the Secret `clustermesh-cluster` in the mesh
namespace (cluster_secret()): the same keys as a peer Secret, plus `max-connected-clusters` and `pod-cidrs`.
`clustermesh deploy render` creates it; `clustermesh connect` only reads it.

The Kubernetes API calls themselves are clustermesh.kube.object_api's.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import itertools
import json
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from clustermesh import certs, identity, tls, trust
from clustermesh.errors import CertificateError, ConfigError

CLUSTER_MESH_API_VERSION = "cilium.io/v2alpha1"
CLUSTER_MESH_GROUP, CLUSTER_MESH_VERSION = CLUSTER_MESH_API_VERSION.split("/")
CLUSTER_MESH_KIND = "ClusterMesh"
CLUSTER_MESH_PLURAL = "clustermeshes"
CLUSTER_MESH_NAME = "default"
DEFAULT_NAMESPACE = "kube-system"
CLUSTER_SECRET_NAME = "clustermesh-cluster"
"""The Secret a Kubernetes cluster describes itself with (cluster_secret())."""
CLUSTER_MESH_CRD = pathlib.Path(__file__).parent / "schemas" / "clustermesh-crd.json"
"""The ClusterMesh CustomResourceDefinition (apiextensions.k8s.io/v1, JSON), with the OpenAPI schema of the resource."""

# Keys of a peer Secret (the seed's format) and the two the self-description adds.
KEY_ID = "cluster.id"
KEY_NAME = "cluster.name"
KEY_SECRET = "cluster.secret"
KEY_ENDPOINTS = "endpoints"
KEY_CA = "ca.crt"
KEY_CERT = "tls.crt"
KEY_KEY = "tls.key"
KEY_MAX_CLUSTERS = "max-connected-clusters"
KEY_POD_CIDRS = "pod-cidrs"
_PEER_KEYS = (KEY_ID, KEY_NAME, KEY_SECRET, KEY_ENDPOINTS, KEY_CA, KEY_CERT, KEY_KEY)

_LABELS = {"app.kubernetes.io/part-of": "clustermesh"}
_ENDPOINT_SCHEMES = ("https://", "http://", "unixs://", "unix://")


class Refused(ConfigError):
    """Raised when two clusters cannot be peers; `reasons` lists every problem found, one sentence each."""

    def __init__(self, a: str, b: str, reasons: Sequence[str]) -> None:
        super().__init__(f"refusing to connect {a} and {b}: " + "; ".join(reasons))
        self.reasons = tuple(reasons)


@dataclasses.dataclass(frozen=True)
class ClusterTrust:
    """One cluster's side of the exchange: identity plus read-only access to its etcd. Holds key material."""

    name: str
    cluster_id: int
    endpoints: tuple[str, ...]
    ca: bytes
    cert: bytes
    key: bytes
    secret: bytes
    max_connected_clusters: int = int(identity.ClusterIDMode.DEFAULT)
    pod_cidrs: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # Never print key material.
        return (f"ClusterTrust(name={self.name!r}, cluster_id={self.cluster_id}, endpoints={self.endpoints!r}, "
                f"max_connected_clusters={self.max_connected_clusters}, pod_cidrs={self.pod_cidrs!r})")


# ----------------------------------------------------------------------------------------------------
# Checks


def check_pair(a: ClusterTrust, b: ClusterTrust) -> None:
    """Refuse (Refused, with every reason) two clusters that cannot be peers; return None if they can.

    Refused: equal names, equal ids, an id out of 1..maxConnectedClusters (or an invalid name), different
    maxConnectedClusters, a pod CIDR of one overlapping a pod CIDR of the other.
    """
    reasons: list[str] = []
    for cluster in (a, b):
        try:
            identity.validate_cluster(cluster.name, cluster.cluster_id, cluster.max_connected_clusters)
        except ConfigError as exc:
            reasons.append(f"{cluster.name}: {exc}")
    if a.name == b.name:
        reasons.append(f"both clusters are named {a.name!r}: every cluster of a mesh needs its own name")
    if a.cluster_id == b.cluster_id:
        reasons.append(f"{a.name} and {b.name} both have cluster id {a.cluster_id}: every cluster of a mesh "
                       "needs its own id")
    if a.max_connected_clusters != b.max_connected_clusters:
        reasons.append(f"{a.name} has maxConnectedClusters {a.max_connected_clusters} but {b.name} has "
                       f"{b.max_connected_clusters}: every cluster of a mesh must use the same value")
    reasons += overlapping_cidrs(a, b)
    if reasons:
        raise Refused(a.name, b.name, reasons)


def overlapping_cidrs(a: ClusterTrust, b: ClusterTrust) -> list[str]:
    """One sentence for every pod CIDR of a that overlaps one of b (naming both clusters and both CIDRs)."""
    found = []
    for cidr_a, cidr_b in itertools.product(a.pod_cidrs, b.pod_cidrs):
        net_a, net_b = _network(a.name, cidr_a), _network(b.name, cidr_b)
        if net_a.version == net_b.version and net_a.overlaps(net_b):
            found.append(f"pod CIDR {cidr_a} of {a.name} overlaps pod CIDR {cidr_b} of {b.name}")
    return found


def _network(cluster: str, cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(f"{cluster}: pod CIDR {cidr!r} is not a CIDR") from None


# ----------------------------------------------------------------------------------------------------
# A local cluster's side


def local_trust(
    *,
    name: str,
    cluster_id: int,
    endpoints: Iterable[str],
    certs_dir: pathlib.Path,
    pod_cidrs: Iterable[str] = (),
    max_connected_clusters: int = int(identity.ClusterIDMode.DEFAULT),
) -> ClusterTrust:
    """The trust of a cluster whose certificates (clustermesh.certs layout) are in certs_dir.

    The `remote` pair is issued from the cluster's CA if the directory has none, and so is the cluster
    secret (clustermesh.trust). CertificateError if the CA or the pair cannot be read or do not match.
    """
    remote = certs.pair_files(certs_dir, certs.REMOTE_USER)
    if not (remote.cert.exists() and remote.key.exists()):
        remote = certs.issue_client_files(certs_dir, certs.REMOTE_USER)
    material = tls.load_verified(remote)
    return ClusterTrust(
        name=name,
        cluster_id=cluster_id,
        endpoints=tuple(endpoints),
        ca=material.ca,
        cert=material.cert,
        key=material.key,
        secret=trust.ensure_cluster_secret(certs_dir),
        max_connected_clusters=max_connected_clusters,
        pod_cidrs=tuple(pod_cidrs),
    )


# ----------------------------------------------------------------------------------------------------
# Peer files (Cilium's mesh-config format)


def peer_file_names(peer: str) -> tuple[str, str, str]:
    """The CA, certificate and key file names of a peer inside a mesh-config directory."""
    return f"{peer}.etcd-client-ca.crt", f"{peer}.etcd-client.crt", f"{peer}.etcd-client.key"


def peer_file(directory: pathlib.Path, peer: ClusterTrust) -> bytes:
    """The etcd client YAML naming peer's endpoints and its certificate files in directory (absolute paths,
    as Cilium's loader reads them relative to its working directory, not to the file)."""
    ca, cert, key = (str(directory.absolute() / name) for name in peer_file_names(peer.name))
    document = {"endpoints": list(peer.endpoints), "trusted-ca-file": ca, "cert-file": cert, "key-file": key}
    return yaml.safe_dump(document, sort_keys=False).encode()


def write_peer_files(directory: pathlib.Path, peer: ClusterTrust) -> bool:
    """Write (or update) peer's files in a mesh-config directory; True if anything changed. Idempotent.

    Certificates first, the YAML last (a reader never finds a peer file naming absent certificates); each
    file atomically, keys 0600. CertificateError if a file cannot be written.
    """
    if not identity.cluster_name_valid(peer.name):
        raise ConfigError(f"{peer.name!r} is not a cluster name: it cannot name a peer file")
    ca, cert, key = peer_file_names(peer.name)
    changed = False
    for name, content, mode in ((ca, peer.ca, 0o644), (cert, peer.cert, 0o644), (key, peer.key, 0o600),
                                (peer.name, peer_file(directory, peer), 0o644)):
        changed |= _write_if_changed(directory / name, content, mode)
    return changed


def remove_peer_files(directory: pathlib.Path, peer: str) -> bool:
    """Remove peer's files from a mesh-config directory (the YAML first); True if anything was there."""
    removed = False
    for name in (peer, *peer_file_names(peer)):
        try:
            (directory / name).unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed


def peer_names(directory: pathlib.Path) -> list[str]:
    """The peers a mesh-config directory names: files named like a cluster that contain `endpoints:`."""
    names = []
    for entry in sorted(directory.iterdir()):
        if identity.cluster_name_valid(entry.name) and entry.is_file() and b"endpoints:" in entry.read_bytes():
            names.append(entry.name)
    return names


def _write_if_changed(path: pathlib.Path, content: bytes, mode: int) -> bool:
    try:
        if path.read_bytes() == content and (os.stat(path).st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CertificateError(f"cannot read {path}: {exc.strerror}") from None
    certs.write_atomic(path, content, mode=mode)
    return True


# ----------------------------------------------------------------------------------------------------
# Kubernetes objects


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _trust_data(trust_: ClusterTrust) -> dict[str, str]:
    return {
        KEY_ID: _b64(str(trust_.cluster_id).encode()),
        KEY_NAME: _b64(trust_.name.encode()),
        KEY_SECRET: _b64(trust_.secret),
        KEY_ENDPOINTS: _b64(",".join(trust_.endpoints).encode()),
        KEY_CA: _b64(trust_.ca),
        KEY_CERT: _b64(trust_.cert),
        KEY_KEY: _b64(trust_.key),
    }


def peer_secret_name(peer: str) -> str:
    """The name of the Secret that describes `peer` to the clusters it is connected to."""
    return f"{peer}-secret"


def peer_secret(peer: ClusterTrust, *, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """The Secret `<peer>-secret` that tells a cluster how to reach peer (apply it in the other cluster)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": peer_secret_name(peer.name),
            "namespace": namespace,
            "labels": {**_LABELS, "clustermesh.io/peer": peer.name},
        },
        "type": "Opaque",
        "data": _trust_data(peer),
    }


def cluster_secret(own: ClusterTrust, *, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """The Secret `clustermesh-cluster` by which a Kubernetes cluster describes itself to the exchange."""
    data = _trust_data(own)
    data[KEY_MAX_CLUSTERS] = _b64(str(own.max_connected_clusters).encode())
    data[KEY_POD_CIDRS] = _b64(",".join(own.pod_cidrs).encode())
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": CLUSTER_SECRET_NAME, "namespace": namespace, "labels": dict(_LABELS)},
        "type": "Opaque",
        "data": data,
    }


def trust_from_secret(secret: dict[str, Any]) -> ClusterTrust:
    """The ClusterTrust a peer Secret (or a cluster's self-describing Secret) holds.

    Reads `data` (base64) and `stringData`. ConfigError naming the Secret and the key for a missing or
    malformed value; CertificateError if tls.crt and tls.key do not belong together.
    """
    metadata = secret.get("metadata") or {}
    where = f"Secret {metadata.get('namespace', '?')}/{metadata.get('name', '?')}"
    values: dict[str, bytes] = {}
    for key, encoded in (secret.get("data") or {}).items():
        try:
            values[key] = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise ConfigError(f"{where}: data[{key!r}] is not base64") from None
    for key, plain in (secret.get("stringData") or {}).items():
        values[key] = str(plain).encode()
    missing = [key for key in _PEER_KEYS if not values.get(key)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")

    def text(key: str) -> str:
        try:
            return values[key].decode().strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: {key} is not text") from None

    def number(key: str) -> int:
        value = text(key)
        if not value.isdigit():
            raise ConfigError(f"{where}: {key} must be a number, got {value[:20]!r}")
        return int(value)

    name = text(KEY_NAME)
    identity.validate_cluster_name(name)
    endpoints = tuple(part.strip() for part in text(KEY_ENDPOINTS).replace("\n", ",").split(",") if part.strip())
    for endpoint in endpoints:
        if not endpoint.startswith(_ENDPOINT_SCHEMES):
            raise ConfigError(f"{where}: endpoints: {endpoint[:80]!r} is not an https:// or unix:// URL")
    if not endpoints:
        raise ConfigError(f"{where}: endpoints is empty")
    try:
        cluster_secret_value = trust.parse_secret(values[KEY_SECRET])
    except ValueError as exc:
        raise ConfigError(f"{where}: {KEY_SECRET}: {exc}") from None
    material = tls.TLSMaterial(ca=values[KEY_CA], cert=values[KEY_CERT], key=values[KEY_KEY])
    try:
        tls.verify_pair(material)
    except CertificateError as exc:
        raise CertificateError(f"{where}: {exc}") from None
    pod_cidrs = tuple(p.strip() for p in text(KEY_POD_CIDRS).split(",") if p.strip()) if KEY_POD_CIDRS in values else ()
    return ClusterTrust(
        name=name,
        cluster_id=number(KEY_ID),
        endpoints=endpoints,
        ca=material.ca,
        cert=material.cert,
        key=material.key,
        secret=cluster_secret_value,
        max_connected_clusters=number(KEY_MAX_CLUSTERS) if values.get(KEY_MAX_CLUSTERS) else
        int(identity.ClusterIDMode.DEFAULT),
        pod_cidrs=pod_cidrs,
    )


def cluster_mesh(
    peers: Iterable[str], *, namespace: str = DEFAULT_NAMESPACE, existing: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ClusterMesh resource listing `peers` (each with its `<peer>-secret` in namespace).

    With `existing` (the resource as read from the cluster), its other peers are kept and its metadata
    (resourceVersion, labels) carried over, so applying the result adds peers without dropping any.
    """
    clusters: dict[str, dict[str, Any]] = {}
    if existing is not None:
        for entry in (existing.get("spec") or {}).get("clusters") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                clusters[entry["name"]] = entry
    for peer in peers:
        clusters[peer] = {"name": peer, "secret": {"name": peer_secret_name(peer), "namespace": namespace}}
    metadata: dict[str, Any] = {"name": CLUSTER_MESH_NAME, "labels": dict(_LABELS)}
    if existing is not None:
        kept = existing.get("metadata") or {}
        metadata = {key: kept[key] for key in ("name", "labels", "annotations", "resourceVersion") if key in kept}
        metadata.setdefault("name", CLUSTER_MESH_NAME)
    return {
        "apiVersion": CLUSTER_MESH_API_VERSION,
        "kind": CLUSTER_MESH_KIND,
        "metadata": metadata,
        "spec": {"clusters": [clusters[name] for name in sorted(clusters)]},
    }


def cluster_mesh_crd() -> dict[str, Any]:
    """The ClusterMesh CRD (CLUSTER_MESH_CRD) as a dict; its `spec.versions[0].schema.openAPIV3Schema` validates
    a ClusterMesh resource."""
    crd: dict[str, Any] = json.loads(CLUSTER_MESH_CRD.read_text())
    return crd


def dump_yaml(documents: Iterable[dict[str, Any]]) -> str:
    """Documents as multi-document YAML, ready for `kubectl apply -f -`."""
    return yaml.safe_dump_all(list(documents), sort_keys=False, explicit_start=True)


# ----------------------------------------------------------------------------------------------------
# Through the Kubernetes API (clustermesh.kube.object_api, imported when called: importing the kubernetes
# client costs most of a command's start-up time, and most uses of this module never talk to a cluster)


async def load_kubernetes_trust(kubeconfig: pathlib.Path | None, *, namespace: str = DEFAULT_NAMESPACE) -> ClusterTrust:
    """The trust a Kubernetes cluster describes itself with (Secret clustermesh-cluster); ConfigError otherwise."""
    from clustermesh.kube import object_api

    return trust_from_secret(await object_api.read_secret(kubeconfig, namespace, CLUSTER_SECRET_NAME))


async def kubernetes_documents(
    kubeconfig: pathlib.Path | None, peer: ClusterTrust, *, namespace: str = DEFAULT_NAMESPACE
) -> list[dict[str, Any]]:
    """What to apply in the cluster of kubeconfig to make `peer` its peer: the peer Secret and the
    ClusterMesh resource, merged with the one the cluster already has (if any)."""
    from clustermesh.kube import object_api

    existing = await object_api.read_cluster_object(
        kubeconfig, CLUSTER_MESH_GROUP, CLUSTER_MESH_VERSION, CLUSTER_MESH_PLURAL, CLUSTER_MESH_NAME
    )
    return [peer_secret(peer, namespace=namespace), cluster_mesh([peer.name], namespace=namespace, existing=existing)]


async def apply_kubernetes(kubeconfig: pathlib.Path | None, documents: Sequence[dict[str, Any]]) -> list[str]:
    """Create or replace each document (Secrets, the ClusterMesh) in the cluster; return what was applied."""
    from clustermesh.kube import object_api

    plurals = {CLUSTER_MESH_KIND: (CLUSTER_MESH_GROUP, CLUSTER_MESH_VERSION, CLUSTER_MESH_PLURAL)}
    return await object_api.apply(kubeconfig, documents, plurals=plurals)
