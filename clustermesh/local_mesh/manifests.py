"""The Kubernetes objects of a local cluster: its Nodes, and the example global service `my-app`.

Each cluster's `manifests/` directory stands in for its Kubernetes API (the apiserver and the agents read it
with `--source manifests:DIR`), so what is written here is what a real cluster would hold: Nodes with an
InternalIP, `spec.podCIDRs` and the WireGuard public key annotation Cilium's agent sets; a Namespace; a
Service annotated `service.cilium.io/global: "true"` with a ClusterIP and port 80 → 8080 named `http`; its
Pods, scheduled round-robin on the nodes, with IPs from their node's pod CIDR and status Running; and an
EndpointSlice listing them ready, as the endpoint-slice controller would.

Files are written atomically (temp file + rename) so a watcher never reads half a file: `nodes.yaml` follows
the plan on every `up`; `my-namespace.yaml` and `my-app.yaml` are written only when absent, so edits a user
made (scaling my-app, say) survive a restart. write_example_app() rewrites my-app.yaml on purpose, for tests
and scripts that scale it.
"""

from __future__ import annotations

import base64
import ipaddress
import pathlib
import uuid
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from clustermesh import certs
from clustermesh.errors import ConfigError
from clustermesh.local_mesh import layout

NAMESPACE = "my-namespace"
APP = "my-app"
DEFAULT_REPLICAS = 2
MAX_REPLICAS = 200
SERVICE_PORT = 80
TARGET_PORT = 8080
PORT_NAME = "http"

NODES_FILE = "nodes.yaml"
NAMESPACE_FILE = f"{NAMESPACE}.yaml"
APP_FILE = f"{APP}.yaml"

GLOBAL_ANNOTATION = "service.cilium.io/global"
WIREGUARD_PUB_KEY_ANNOTATION = "network.cilium.io/wg-pub-key"
_SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.45"
# Pods take host numbers from here up in their node's /24, leaving the low ones to the node's own addresses.
_FIRST_POD_HOST = 10
_UID_NAMESPACE = uuid.UUID("6f1c3d52-8c5e-4c47-9a51-3b7c1c0d2a10")


# ----------------------------------------------------------------------------------------------------
# WireGuard node keys


def ensure_wireguard_key(path: pathlib.Path) -> str:
    """The base64 public key of the node's X25519 private key at path, created (mode 0600) if absent.

    CertificateError if the file cannot be written; ConfigError if an existing one is not a WireGuard key.
    """
    if path.exists():
        try:
            raw = base64.b64decode(path.read_bytes().strip(), validate=True)
            private = x25519.X25519PrivateKey.from_private_bytes(raw)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{path}: not a WireGuard private key (base64 of 32 bytes): {exc}") from None
    else:
        private = x25519.X25519PrivateKey.generate()
        raw = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        certs.write_atomic(path, base64.b64encode(raw) + b"\n", mode=0o600)
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(public).decode("ascii")


# ----------------------------------------------------------------------------------------------------
# Objects


def node(cluster: layout.ClusterPlan, plan: layout.NodePlan, *, wireguard_pub_key: str = "") -> dict[str, Any]:
    """The Node object of one planned node."""
    annotations = {WIREGUARD_PUB_KEY_ANNOTATION: wireguard_pub_key} if wireguard_pub_key else {}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": plan.name,
            "uid": _uid(cluster.name, "Node", plan.name),
            "labels": {
                "kubernetes.io/hostname": plan.name,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/zone": cluster.name,
            },
            "annotations": annotations,
        },
        "spec": {"podCIDR": plan.pod_cidr, "podCIDRs": [plan.pod_cidr]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": plan.internal_ip},
                {"type": "Hostname", "address": plan.name},
            ],
        },
    }


def namespace() -> dict[str, Any]:
    """The example app's Namespace (global by default: no clustermesh.cilium.io/global annotation needed)."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def pod_ip(cluster: layout.ClusterPlan, replica: int) -> tuple[layout.NodePlan, str]:
    """The node and IP of the replica-th pod (from 0): round-robin over the nodes, numbered up per node."""
    plan = cluster.nodes[replica % len(cluster.nodes)]
    host = _FIRST_POD_HOST + replica // len(cluster.nodes)
    return plan, str(ipaddress.ip_network(plan.pod_cidr)[host])


def example_app(cluster: layout.ClusterPlan, *, replicas: int = DEFAULT_REPLICAS) -> list[dict[str, Any]]:
    """The Service, Pods and EndpointSlice of my-app in one cluster; ValueError for a replica count out of range."""
    if not 0 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be 0..{MAX_REPLICAS}, got {replicas}")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": APP,
            "namespace": NAMESPACE,
            "uid": _uid(cluster.name, "Service", APP),
            "annotations": {GLOBAL_ANNOTATION: "true"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster.service_ip(10),
            "clusterIPs": [cluster.service_ip(10)],
            "selector": {"app": APP},
            "ports": [{"name": PORT_NAME, "port": SERVICE_PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}],
        },
    }
    pods = []
    endpoints = []
    for replica in range(replicas):
        plan, ip = pod_ip(cluster, replica)
        name = f"{APP}-{replica}"
        pods.append({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": _uid(cluster.name, "Pod", name),
                "labels": {"app": APP},
            },
            "spec": {
                "nodeName": plan.name,
                "containers": [{
                    "name": "app",
                    "image": _IMAGE,
                    "args": ["netexec", f"--http-port={TARGET_PORT}"],
                    "ports": [{"name": PORT_NAME, "containerPort": TARGET_PORT, "protocol": "TCP"}],
                }],
            },
            "status": {
                "phase": "Running",
                "hostIP": plan.internal_ip,
                "podIP": ip,
                "podIPs": [{"ip": ip}],
            },
        })
        endpoints.append({
            "addresses": [ip],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": plan.name,
            "targetRef": {"kind": "Pod", "name": name, "namespace": NAMESPACE},
        })
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{APP}-1",
            "namespace": NAMESPACE,
            "labels": {_SERVICE_NAME_LABEL: APP},
        },
        "addressType": "IPv4",
        "ports": [{"name": PORT_NAME, "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    }
    return [service, *pods, endpoint_slice]


def _uid(cluster: str, kind: str, name: str) -> str:
    # Stable across restarts, as a real object's uid is while it exists.
    return str(uuid.uuid5(_UID_NAMESPACE, f"{cluster}/{kind}/{name}"))


# ----------------------------------------------------------------------------------------------------
# Files


def dump(documents: list[dict[str, Any]]) -> bytes:
    """Documents as one multi-document YAML file."""
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True).encode()


def _write_if_changed(path: pathlib.Path, content: bytes) -> bool:
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    certs.write_atomic(path, content, mode=0o644)
    return True


def write_nodes(cluster: layout.ClusterPlan, wireguard_keys: dict[str, str]) -> bool:
    """Write nodes.yaml for the plan (node name → WireGuard public key); True if the file changed."""
    documents = [node(cluster, plan, wireguard_pub_key=wireguard_keys.get(plan.name, "")) for plan in cluster.nodes]
    return _write_if_changed(cluster.paths.manifests / NODES_FILE, dump(documents))


def write_example_app(cluster: layout.ClusterPlan, *, replicas: int = DEFAULT_REPLICAS) -> pathlib.Path:
    """(Re)write my-app.yaml with `replicas` pods; return its path. The apiserver picks the change up live."""
    path = cluster.paths.manifests / APP_FILE
    _write_if_changed(path, dump(example_app(cluster, replicas=replicas)))
    return path


def ensure_example(cluster: layout.ClusterPlan) -> None:
    """Write the example Namespace and my-app files unless they exist (a user's edits are kept)."""
    namespace_file = cluster.paths.manifests / NAMESPACE_FILE
    if not namespace_file.exists():
        _write_if_changed(namespace_file, dump([namespace()]))
    if not (cluster.paths.manifests / APP_FILE).exists():
        write_example_app(cluster)
