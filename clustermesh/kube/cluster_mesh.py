"""The ClusterMesh resources and the peer Secrets they reference, followed live on the Kubernetes API.

A `ClusterMesh` (cilium.io/v2alpha1, cluster-scoped; `clustermesh connect` writes the one named `default`) lists
the peers a cluster wants, `spec.clusters[].{name, secret{name, namespace}}`. ClusterMeshWatcher lists and
watches every ClusterMesh and takes the union of their entries. For each Secret they reference it runs a source
of its own that lists and watches that one Secret by name (a `metadata.name` field selector, see
kubernetes_api): it never lists the Secrets of a namespace, so RBAC can confine it to the Secrets it is pointed
at, the way the kubelet watches each Secret a pod mounts. Those sources are started and stopped as the resources
change, in one reconcile step (stop the references no longer wanted, then start the new ones).

Secrets are read from one namespace only (`namespace`, also the default of a reference without one): a
reference elsewhere is refused rather than attempted, so that whoever may edit a ClusterMesh cannot point the
agents at other Secrets even where RBAC is wider than it should be.

After every change the callback gets every declared peer (except the local cluster's own entry) with its Secret
as the API server returned it, or why there is none: the Secret does not exist, is outside the namespace, two
resources give the peer different Secrets, or it has not been read yet. A reference that changed keeps the
peer's previous state until its new Secret has been read, so a rename never drops a peer in between. What the
Secret means is for the consumer (clustermesh.peer_secrets); objects are shared, read-only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from clustermesh import identity
from clustermesh.aio import tasks
from clustermesh.kube import event, objects

if TYPE_CHECKING:
    from clustermesh.kube import kubernetes_api

log = logging.getLogger(__name__)


class SecretRef(NamedTuple):
    """A Secret a ClusterMesh entry points at."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclasses.dataclass(frozen=True)
class PeerSecret:
    """One declared peer: the Secret that describes it (as read from the API), or, when there is none, why."""

    cluster: str
    secret: dict[str, Any] | None = None
    problem: str = ""


OnChange = Callable[[dict[str, PeerSecret]], Awaitable[None]]


def declared_peers(
    meshes: Mapping[str, dict[str, Any]], *, namespace: str, local_cluster: str
) -> dict[str, SecretRef | str]:
    """Every peer the ClusterMesh objects (keyed by name) declare: the reference of its Secret, or a problem.

    A reference without a namespace means `namespace`; one in another namespace is a problem, and so is a peer
    that two resources give different Secrets. The local cluster's entry is left out, as Cilium ignores its own
    configuration. Entries that do not name a valid cluster and a Secret are logged and left out (the CRD's
    schema rejects them, but objects stored before it was installed may hold them).
    """
    found: dict[str, tuple[str, SecretRef]] = {}
    conflicts: dict[str, str] = {}
    for mesh_name in sorted(meshes):
        spec = meshes[mesh_name].get("spec")
        entries = spec.get("clusters") if isinstance(spec, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            parsed = _entry(mesh_name, entry, namespace)
            if parsed is None or parsed[0] == local_cluster:
                continue
            cluster, ref = parsed
            earlier = found.setdefault(cluster, (mesh_name, ref))
            if earlier[1] != ref:
                conflicts[cluster] = (
                    f"ClusterMesh {earlier[0]} and {mesh_name} give it different Secrets ({earlier[1]} and {ref})"
                )
    declared: dict[str, SecretRef | str] = {}
    for cluster, (_, ref) in sorted(found.items()):
        if cluster in conflicts:
            declared[cluster] = conflicts[cluster]
        elif ref.namespace != namespace:
            declared[cluster] = (
                f"Secret {ref} is outside namespace {namespace}, the only one peer Secrets are read from"
            )
        else:
            declared[cluster] = ref
    return declared


def _entry(mesh_name: str, entry: Any, namespace: str) -> tuple[str, SecretRef] | None:
    cluster = entry.get("name") if isinstance(entry, dict) else None
    secret = entry.get("secret") if isinstance(entry, dict) else None
    secret_name = secret.get("name") if isinstance(secret, dict) else None
    secret_namespace = secret.get("namespace", namespace) if isinstance(secret, dict) else None
    if not (isinstance(cluster, str) and identity.cluster_name_valid(cluster)):
        log.warning("event=cluster_mesh.entry.invalid clustermesh=%s reason=%r", mesh_name,
                    "name is not a cluster name")
        return None
    if not (isinstance(secret_name, str) and secret_name and isinstance(secret_namespace, str) and secret_namespace):
        log.warning("event=cluster_mesh.entry.invalid clustermesh=%s cluster=%s reason=%r", mesh_name, cluster,
                    "secret.name (and secret.namespace, when given) must be non-empty strings")
        return None
    return cluster, SecretRef(secret_namespace, secret_name)


@dataclasses.dataclass(eq=False)
class _SecretWatch:
    """One referenced Secret: the task of its source and what that source delivered (its sink is the writer)."""

    ref: SecretRef
    wake: asyncio.Event
    task: asyncio.Task[None] | None = None
    secret: dict[str, Any] | None = None
    listed: bool = False

    async def sink(self, item: event.SourceItem) -> None:
        if item is event.SYNCED:
            self.listed = True
        elif item.type is event.EventType.UPSERT:
            self.secret = item.obj
        else:
            self.secret = None
        self.wake.set()


class ClusterMeshWatcher:
    """Follows the ClusterMesh resources and their peer Secrets (see the module docstring).

    `on_change(peers)` is awaited from run()'s task with every declared peer, keyed by cluster name: once the
    resources and every Secret they reference have been read, then after every change of that set. Changes
    that arrive while it runs coalesce: the next call gets the latest state, never a backlog. Fields are
    mutated by run()'s task, except what the sources' sinks deliver (they only record it and wake run()).
    """

    def __init__(
        self,
        kubeconfig: Path | None,
        *,
        namespace: str,
        local_cluster: str,
        on_change: OnChange,
        options: kubernetes_api.KubernetesAPIOptions | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.local_cluster = local_cluster
        self.options = options
        self._on_change = on_change
        self._meshes: dict[str, dict[str, Any]] = {}
        self._meshes_listed = False
        self._meshes_changed = False
        self._declared: dict[str, SecretRef | str] = {}
        self._watches: dict[SecretRef, _SecretWatch] = {}
        self._delivered: dict[str, PeerSecret] | None = None
        self._wake = asyncio.Event()
        self._running = False

    def __repr__(self) -> str:
        return (f"<ClusterMeshWatcher namespace={self.namespace} meshes={sorted(self._meshes)} "
                f"peers={sorted(self._declared)} secrets={sorted(map(str, self._watches))} running={self._running}>")

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Read the resources and their Secrets, deliver, set `ready`, then follow changes until cancelled.

        API errors are retried inside the sources (and logged there); a Secret that cannot be read keeps
        `ready` unset. Raises ConfigError if the Kubernetes configuration cannot be loaded, RuntimeError if
        already running; an exception from on_change propagates. Cancellation stops every source and waits
        for them.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        meshes = self._source(objects.ConfigKind.CLUSTER_MESH)
        self._running = True
        # A new run reads everything again, from nothing.
        self._meshes, self._meshes_listed, self._declared, self._delivered = {}, False, {}, None
        mesh_task = asyncio.create_task(meshes.run(self._on_mesh), name="watch ClusterMesh resources")
        mesh_task.add_done_callback(lambda _: self._wake.set())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                _raise_if_ended(mesh_task, *(watch.task for watch in self._watches.values()))
                if self._meshes_changed:
                    self._meshes_changed = False
                    self._declared = declared_peers(
                        self._meshes, namespace=self.namespace, local_cluster=self.local_cluster
                    )
                    await self._reconcile()
                if not self._meshes_listed or (
                    self._delivered is None and not all(watch.listed for watch in self._watches.values())
                ):
                    continue
                peers = self._peers()
                if peers != self._delivered:
                    self._delivered = peers
                    log.info("event=cluster_mesh.changed peers=%s", ",".join(peers) or "none")
                    await self._on_change(dict(peers))
                if ready is not None and not ready.is_set():
                    ready.set()
        finally:
            running = [mesh_task, *(watch.task for watch in self._watches.values() if watch.task is not None)]
            self._watches.clear()
            await tasks.stop(running)
            self._running = False

    async def _on_mesh(self, item: event.SourceItem) -> None:
        if item is event.SYNCED:
            self._meshes_listed = True
        elif item.type is event.EventType.UPSERT:
            self._meshes[item.key.name] = item.obj
        else:
            self._meshes.pop(item.key.name, None)
        self._meshes_changed = True
        self._wake.set()

    async def _reconcile(self) -> None:
        """Run one source per referenced Secret: stop those no longer referenced, then start the new ones."""
        wanted = {ref for ref in self._declared.values() if isinstance(ref, SecretRef)}
        redundant = [self._watches.pop(ref) for ref in list(self._watches) if ref not in wanted]
        if redundant:
            await tasks.stop([watch.task for watch in redundant if watch.task is not None])
            log.info("event=cluster_mesh.secret.unwatched secrets=%s", ",".join(str(w.ref) for w in redundant))
        for ref in sorted(wanted - self._watches.keys()):
            watch = _SecretWatch(ref, self._wake)
            source = self._source(objects.ConfigKind.SECRET, ref)
            watch.task = asyncio.create_task(source.run(watch.sink), name=f"watch Secret {ref}")
            watch.task.add_done_callback(lambda _: self._wake.set())
            self._watches[ref] = watch
            log.info("event=cluster_mesh.secret.watched secret=%s", ref)

    def _peers(self) -> dict[str, PeerSecret]:
        previous = self._delivered or {}
        peers: dict[str, PeerSecret] = {}
        for cluster, ref in self._declared.items():
            if isinstance(ref, str):
                peers[cluster] = PeerSecret(cluster, problem=ref)
                continue
            watch = self._watches[ref]
            if not watch.listed:
                peers[cluster] = previous.get(cluster) or PeerSecret(cluster, problem=f"Secret {ref} not read yet")
            elif watch.secret is None:
                peers[cluster] = PeerSecret(cluster, problem=f"Secret {ref} not found")
            else:
                peers[cluster] = PeerSecret(cluster, secret=watch.secret)
        return peers

    def _source(self, kind: objects.ConfigKind, ref: SecretRef | None = None) -> kubernetes_api.KubernetesAPISource:
        # Imported here: the kubernetes client is slow to import, and only an agent reading the API needs it.
        from clustermesh.kube import kubernetes_api

        return kubernetes_api.KubernetesAPISource(
            self.kubeconfig, kinds=[kind], namespace=ref.namespace if ref else None, name=ref.name if ref else None,
            options=self.options,
        )


def _raise_if_ended(*running: asyncio.Task[None] | None) -> None:
    """Sources run until cancelled: one that ended failed (its exception), or has a bug (RuntimeError)."""
    for task in running:
        if task is not None and task.done():
            if not task.cancelled() and task.exception() is not None:
                task.result()
            raise RuntimeError(f"{task.get_name()} ended unexpectedly")
