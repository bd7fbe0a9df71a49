"""The Kubernetes objects the apiserver knows, parsed, and which exported records each change affects.

The publisher feeds every source event to apply(); the inventory parses the object with the conversion
modules (nodes, endpoints, services, service_exports), keeps only the parsed form, maintains the reverse
indexes (pods by node and namespace, services by namespace, EndpointSlices by service) and marks dirty the
records whose inputs changed: a node's record and, when its InternalIP changes, its pods' ipcache entries;
a namespace's services and pods when it turns global or not; a service when it, its namespace or one of
its slices changes; a service export when it or its service changes. take_dirty() hands those over;
take_settled() hands over, before the source's initial sync is complete, the dirty records that no object
still to come is expected to change (see Inventory.take_settled).

An object that fails to parse is reported (`event=object.invalid`, with the field and the reason), counted
per kind, and treated as absent, so whatever it exported before is withdrawn: its current state is known
and exports nothing valid. Used from the publisher's task only; no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from apiserver import endpoints, nodes, service_exports, services
from clustermesh import kube, records
from clustermesh.errors import DecodeError

log = logging.getLogger(__name__)

_K = TypeVar("_K")


class Ref(NamedTuple):
    """A namespaced object's namespace and name."""

    namespace: str
    name: str


@dataclasses.dataclass
class Dirty:
    """Records to recompute: node names, pods, services and service exports."""

    nodes: set[str] = dataclasses.field(default_factory=set)
    pods: set[Ref] = dataclasses.field(default_factory=set)
    services: set[Ref] = dataclasses.field(default_factory=set)
    exports: set[Ref] = dataclasses.field(default_factory=set)


class Inventory:
    """Parsed objects by kind, with the indexes that say what a change affects; see the module docstring."""

    def __init__(self, *, cluster: str, cluster_id: int, default_global_namespace: bool) -> None:
        self.cluster = cluster
        self.cluster_id = cluster_id
        self.default_global_namespace = default_global_namespace
        self.nodes: dict[str, records.Node] = {}
        self.node_ips: dict[str, str] = {}
        """Each node's InternalIP (nodes.internal_ip), the HostIP of its pods' ipcache entries."""
        self.pods: dict[Ref, endpoints.Endpoint] = {}
        self.services: dict[Ref, services.Service] = {}
        self.exported_services: dict[Ref, service_exports.ExportedService] = {}
        self.slices: dict[Ref, services.Slice] = {}
        self.exports: dict[Ref, service_exports.Export] = {}
        self.invalid: dict[kube.AnyKind, int] = dict.fromkeys(kube.Kind, 0)
        self.events: dict[kube.AnyKind, int] = dict.fromkeys(kube.Kind, 0)
        self._global: dict[str, bool] = {}
        self._pods_by_node: dict[str, set[Ref]] = {}
        self._pods_by_namespace: dict[str, set[Ref]] = {}
        self._services_by_namespace: dict[str, set[Ref]] = {}
        self._slices_by_service: dict[Ref, set[Ref]] = {}
        self._dirty = Dirty()
        # Dirty pods take_settled() held back, until their Namespace or Node is seen (or take_dirty()).
        self._waiting: set[Ref] = set()
        self._handlers: dict[kube.AnyKind, Callable[[kube.ObjectKey, dict[str, Any] | None], None]] = {
            kube.Kind.NODE: self._node,
            kube.Kind.NAMESPACE: self._namespace,
            kube.Kind.POD: self._pod,
            kube.Kind.SERVICE: self._service,
            kube.Kind.ENDPOINT_SLICE: self._slice,
            kube.Kind.SERVICE_EXPORT: self._export,
        }

    def __repr__(self) -> str:
        return (
            f"<Inventory nodes={len(self.nodes)} pods={len(self.pods)} services={len(self.services)} "
            f"slices={len(self.slices)} exports={len(self.exports)} invalid={sum(self.invalid.values())}>"
        )

    def apply(self, event: kube.Event) -> None:
        """Take in one source event and mark what it affects dirty."""
        key = event.key
        self.events[key.kind] += 1
        handler = self._handlers[key.kind]
        obj = event.obj if event.type is kube.EventType.UPSERT else None
        try:
            _check_names(key)
            handler(key, obj)
        except DecodeError as exc:
            self.invalid[key.kind] += 1
            log.warning("event=object.invalid object=%s field=%s reason=%s", key, exc.key, json.dumps(exc.reason))
            handler(key, None)

    def take_dirty(self) -> Dirty:
        """What changed since the last call."""
        dirty, self._dirty = self._dirty, Dirty()
        dirty.pods |= self._waiting
        self._waiting = set()
        return dirty

    def take_settled(self) -> Dirty:
        """The dirty nodes, and the dirty pods whose Namespace and Node have been seen; the rest stays dirty.

        For publishing while the source's initial state is still arriving. A node's record depends on its Node
        alone. A pod's entries depend on its namespace being global (the Namespace's annotation) and on its
        node's InternalIP: once both objects have been seen, what comes later in the initial state does not
        change them, whereas a pod published before them could be written with a default that the Namespace
        or Node then corrects (a wasted write, or an identity allocated for nothing). Either way the result is
        correct: a later change of either marks the pod dirty again. Services wait for the whole initial
        state (their backends come from slices that may arrive later).
        """
        dirty = self._dirty
        settled = Dirty(nodes=dirty.nodes, pods=set())
        dirty.nodes = set()
        for ref in dirty.pods:
            pod = self.pods.get(ref)
            if pod is None or (pod.namespace in self._global and pod.node in self.node_ips):
                settled.pods.add(ref)
                self._waiting.discard(ref)
            else:
                self._waiting.add(ref)
        dirty.pods = set()
        return settled

    def _wake(self, pods: set[Ref] | None) -> None:
        """Make the waiting pods among `pods` dirty again: their Namespace or Node has just been seen."""
        if pods and self._waiting:
            self._dirty.pods.update(self._waiting.intersection(pods))

    def is_global(self, namespace: str) -> bool:
        """Whether the namespace's services and pods are exported."""
        return self._global.get(namespace, self.default_global_namespace)

    def slices_of(self, service: Ref) -> list[services.Slice]:
        """The parsed EndpointSlices of a service, by slice name."""
        return [self.slices[ref] for ref in sorted(self._slices_by_service.get(service, ()))]

    # Each handler parses first (which may raise) and only then changes state, so that a failed parse leaves
    # the previous state for the follow-up call with obj=None to withdraw.

    def _node(self, key: kube.ObjectKey, obj: dict[str, Any] | None) -> None:
        parsed = None if obj is None else nodes.node_record(obj, cluster=self.cluster, cluster_id=self.cluster_id)
        previous = self.nodes.pop(key.name, None)
        host_before = self.node_ips.pop(key.name, None)
        host_after = None
        if parsed is not None:
            self.nodes[key.name] = parsed
            host_after = self.node_ips[key.name] = nodes.internal_ip(parsed)
        if parsed != previous:
            self._dirty.nodes.add(key.name)
        if host_before != host_after:
            # Also wakes the pods that waited for their node (take_settled).
            self._dirty.pods.update(self._pods_by_node.get(key.name, ()))

    def _namespace(self, key: kube.ObjectKey, obj: dict[str, Any] | None) -> None:
        before = self.is_global(key.name)
        if obj is not None and key.name not in self._global:
            self._wake(self._pods_by_namespace.get(key.name))
        if obj is None:
            self._global.pop(key.name, None)
        else:
            self._global[key.name] = services.namespace_global(obj, default=self.default_global_namespace)
        if self.is_global(key.name) != before:
            self._dirty.services.update(self._services_by_namespace.get(key.name, ()))
            self._dirty.pods.update(self._pods_by_namespace.get(key.name, ()))

    def _pod(self, key: kube.ObjectKey, obj: dict[str, Any] | None) -> None:
        parsed = None if obj is None else endpoints.endpoint(obj, cluster=self.cluster)
        ref = Ref(key.namespace, key.name)
        previous = self.pods.pop(ref, None)
        if previous is not None:
            _unindex(self._pods_by_node, previous.node, ref)
            _unindex(self._pods_by_namespace, previous.namespace, ref)
        if parsed is not None:
            self.pods[ref] = parsed
            self._pods_by_node.setdefault(parsed.node, set()).add(ref)
            self._pods_by_namespace.setdefault(parsed.namespace, set()).add(ref)
        if parsed != previous:
            self._dirty.pods.add(ref)

    def _service(self, key: kube.ObjectKey, obj: dict[str, Any] | None) -> None:
        parsed = None if obj is None else services.service(obj)
        exported = None if obj is None else service_exports.exported_service(obj)
        ref = Ref(key.namespace, key.name)
        self.services.pop(ref, None)
        self.exported_services.pop(ref, None)
        if parsed is None:
            _unindex(self._services_by_namespace, ref.namespace, ref)
        else:
            self.services[ref] = parsed
            self._services_by_namespace.setdefault(ref.namespace, set()).add(ref)
        if exported is not None:
            self.exported_services[ref] = exported
        self._dirty.services.add(ref)
        self._dirty.exports.add(ref)

    def _slice(self, key: kube.ObjectKey, obj: dict[str, Any] | None) -> None:
        parsed = None if obj is None else services.endpoint_slice(obj)
        ref = Ref(key.namespace, key.name)
        previous = self.slices.pop(ref, None)
        if previous is not None:
            owner = Ref(previous.namespace, previous.service)
            _unindex(self._slices_by_service, owner, ref)
            self._dirty.services.add(owner)
        if parsed is not None:
            self.slices[ref] = parsed
            owner = Ref(parsed.namespace, parsed.service)
            self._slices_by_service.setdefault(owner, set()).add(ref)
            self._dirty.services.add(owner)

    def _export(self, key: kube.ObjectKey, obj: dict[str, Any] | None) -> None:
        parsed = None if obj is None else service_exports.export(obj)
        ref = Ref(key.namespace, key.name)
        self.exports.pop(ref, None)
        if parsed is not None:
            self.exports[ref] = parsed
        self._dirty.exports.add(ref)


def _check_names(key: kube.ObjectKey) -> None:
    # Names become etcd key segments; the API server never sends a '/' in one, a hand-written manifest might.
    if "/" not in key.namespace and "/" not in key.name:
        return  # once per event: the common case builds nothing
    for what, value in (("metadata.namespace", key.namespace), ("metadata.name", key.name)):
        if "/" in value:
            raise DecodeError(what, f"{value[:64]!r} contains '/'")


def _unindex(index: dict[_K, set[Ref]], owner: _K, ref: Ref) -> None:
    members = index.get(owner)
    if members is not None:
        members.discard(ref)
        if not members:
            del index[owner]
