"""The example app's manifest (my-app.yaml) of one cluster, under a drill's control, restored byte for byte after.

In a local mesh a cluster's `manifests/` directory is its Kubernetes API, so this is how a drill changes what a
cluster runs: it rewrites my-app.yaml (atomically; the apiserver and the cluster's agents follow the file live).
One AppManifest is the only writer of the file during a drill, and its state says what the file holds:

- generation: churn. Each step replaces every pod with a new one (new name, new IP on the same node) and cycles
  the replica count through base, base+1, base+2: every step deletes endpoints, so a lost delete shows.
- ready: backends-down. False keeps the pods (and their ipcache entries) but marks every endpoint not ready,
  as failing readiness probes would: the service has no local backend left.
- affinity: the `service.cilium.io/affinity` annotation (backends-down sets `local`).

expectation() says what the apiserver must publish for the file as it is now; restore() puts the original bytes
back. Not for real deployments (there the Kubernetes API is the source; see docs/drills.md).
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import yaml

from clustermesh import certs
from clustermesh.drill import target
from clustermesh.errors import ConfigError
from clustermesh.local_mesh import layout, manifests

AFFINITY_ANNOTATION = "service.cilium.io/affinity"
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
# Generations move every pod this many hosts up its node's /24, wrapping before the pods would run past its top.
_HOST_STEP = 3
_LAST_HOST = 250
_UID_NAMESPACE = uuid.UUID("0d1c7f6e-3b8a-4f61-9c55-6b2e1b7d9a01")


@dataclasses.dataclass(frozen=True)
class AppExpectation:
    """What the cluster's etcd must hold for the app: its pods' ipcache entries and the service's backends.

    `known_ips` are every pod IP the file held during the drill: an ipcache entry for one of them that is not
    expected is stale (a lost delete).
    """

    cluster: str
    namespace: str
    service: str
    pod_ips: frozenset[str]
    backend_ips: frozenset[str]
    known_ips: frozenset[str]


def _documents(data: bytes) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(data) if isinstance(doc, dict)]


def _pods(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc.get("kind") == "Pod"]


class AppManifest:
    """my-app.yaml of one cluster of a local mesh; see the module docstring. Mutated by one task at a time."""

    def __init__(self, plan: layout.ClusterPlan, original: bytes) -> None:
        self.plan = plan
        self.path = plan.paths.manifests / manifests.APP_FILE
        self.original = original
        self.base_replicas = max(1, min(len(_pods(_documents(original))), manifests.MAX_REPLICAS - 2))
        self.generation = 0
        self.ready = True
        self.affinity: str | None = None
        self.writes = 0
        self._current = original
        self._known_ips = frozenset(self._pod_ips(_documents(original)))

    def __repr__(self) -> str:
        return (f"<AppManifest {self.plan.name} generation={self.generation} ready={self.ready} "
                f"affinity={self.affinity} writes={self.writes}>")

    @classmethod
    def open(cls, mesh: target.Target, cluster: str) -> AppManifest:
        """The app manifest of `cluster`; ConfigError unless the mesh is a local one with the example app."""
        found = mesh.cluster(cluster)
        if found.manifests is None:
            raise ConfigError(f"{cluster} has no manifests directory in the mesh file: churn and backends-down edit "
                              "the example app of a local mesh (`clustermesh up`)")
        nodes = max(len(c.agents) for c in mesh.clusters)
        plans = {plan.name: plan for plan in layout.plan(mesh.directory, clusters=len(mesh.clusters), nodes=nodes)}
        plan = plans.get(cluster)
        if plan is None or plan.paths.manifests != found.manifests or len(plan.nodes) != len(found.agents):
            raise ConfigError(f"{cluster}'s manifests are not laid out as `clustermesh up` lays them out")
        try:
            original = (found.manifests / manifests.APP_FILE).read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{cluster} runs no example app ({found.manifests / manifests.APP_FILE} is missing): "
                              "start the mesh with `clustermesh up --example my-app`") from None
        return cls(plan, original)

    # --- changes ----------------------------------------------------------------------------------------

    def step(self) -> None:
        """The next churn generation: every pod replaced, the replica count cycled; written at once."""
        self.generation += 1
        self._write()

    def set_ready(self, ready: bool) -> None:
        """Mark every endpoint ready (or not, keeping the pods); written at once."""
        self.ready = ready
        self._write()

    def set_affinity(self, affinity: str | None) -> None:
        """Annotate the Service with this affinity (None: no annotation); written at once."""
        self.affinity = affinity
        self._write()

    def restore(self) -> None:
        """Put the original bytes back (if anything was written). Idempotent."""
        if self._current != self.original:
            certs.write_atomic(self.path, self.original, mode=0o644)
            self._current = self.original
        self.generation, self.ready, self.affinity = 0, True, None

    # --- what the file means ----------------------------------------------------------------------------

    def expectation(self) -> AppExpectation:
        """What the apiserver must publish for the file as it is now."""
        documents = _documents(self._current)
        backends = {
            address
            for doc in documents if doc.get("kind") == "EndpointSlice"
            for endpoint in doc.get("endpoints") or ()
            if (endpoint.get("conditions") or {}).get("ready", True) is not False
            for address in endpoint.get("addresses") or ()
        }
        return AppExpectation(
            cluster=self.plan.name, namespace=manifests.NAMESPACE, service=manifests.APP,
            pod_ips=frozenset(self._pod_ips(documents)), backend_ips=frozenset(backends),
            known_ips=self._known_ips,
        )

    @staticmethod
    def _pod_ips(documents: list[dict[str, Any]]) -> set[str]:
        ips: set[str] = set()
        for pod in _pods(documents):
            status = pod.get("status") or {}
            if status.get("phase") in _TERMINAL_PHASES:
                continue
            ips.update(entry["ip"] for entry in status.get("podIPs") or () if entry.get("ip"))
            if status.get("podIP"):
                ips.add(status["podIP"])
        return ips

    def _render(self) -> list[dict[str, Any]]:
        replicas = self.base_replicas + self.generation % 3 if self.generation else self.base_replicas
        service, *pods, endpoint_slice = manifests.example_app(self.plan, replicas=replicas)
        if self.affinity is not None:
            service["metadata"].setdefault("annotations", {})[AFFINITY_ANNOTATION] = self.affinity
        nodes = len(self.plan.nodes)
        # manifests.pod_ip numbers a node's pods from host 10 up; the largest generation adds two pods.
        span = max(1, _LAST_HOST - 10 - (self.base_replicas + 2 + nodes - 1) // nodes)
        shift = self.generation * _HOST_STEP % span
        for replica, (pod, endpoint) in enumerate(zip(pods, endpoint_slice["endpoints"], strict=True)):
            _, ip = manifests.pod_ip(self.plan, replica + shift * nodes)
            if self.generation:
                name = f"{manifests.APP}-g{self.generation}-{replica}"
                pod["metadata"]["name"] = name
                pod["metadata"]["uid"] = str(uuid.uuid5(_UID_NAMESPACE, f"{self.plan.name}/{name}"))
                endpoint["targetRef"]["name"] = name
            pod["status"]["podIP"] = ip
            pod["status"]["podIPs"] = [{"ip": ip}]
            endpoint["addresses"] = [ip]
            endpoint["conditions"] = {"ready": self.ready, "serving": self.ready, "terminating": False}
        return [service, *pods, endpoint_slice]

    def _write(self) -> None:
        documents = self._render()
        data = manifests.dump(documents)
        certs.write_atomic(self.path, data, mode=0o644)
        self._current = data
        self._known_ips |= self._pod_ips(documents)
        self.writes += 1
