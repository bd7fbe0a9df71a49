"""The local cluster's services as global-service merging needs them, read from `--local-source`.

Owns: turning the local Services, EndpointSlices and Namespaces (delivered by a clustermesh.kube source) into
one `LocalService` per namespace/name: whether it is global, shared, its affinity, its ClusterIPs and ports,
and its backends with their state. Does not own: peers' services (agent/cache.py), how local and remote
backends are combined (agent/services.py), or talking to Kubernetes (clustermesh.kube).

The rules are Cilium's (reference §8, §7): a Service is global when annotated `service.cilium.io/global: "true"`
(or the older `io.cilium/global-service`) and its namespace is global (`clustermesh.cilium.io/global` on the
Namespace, default global); `shared` defaults to true for a global service; `service.cilium.io/affinity` is
local, remote or none (anything else is none, as Cilium logs and ignores it). Backends come from the
EndpointSlices labelled `kubernetes.io/service-name`: a ready endpoint (ready unset counts as ready) is ACTIVE,
one that is terminating but still serving is TERMINATING, any other is left out. ExternalName services have no
backends to merge and are ignored.

Every mutation happens in the task running `run()`, on the event loop; `get()` is a dict lookup of a view
rebuilt when one of its objects changes, so DNS and gRPC answers never wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import ipaddress
import logging
from collections.abc import Iterator
from typing import Any

from clustermesh import kube

log = logging.getLogger(__name__)

KINDS = (kube.Kind.SERVICE, kube.Kind.ENDPOINT_SLICE, kube.Kind.NAMESPACE)

GLOBAL_ANNOTATIONS = ("service.cilium.io/global", "io.cilium/global-service")
SHARED_ANNOTATIONS = ("service.cilium.io/shared", "io.cilium/shared-service")
AFFINITY_ANNOTATIONS = ("service.cilium.io/affinity", "io.cilium/service-affinity")
GLOBAL_NAMESPACE_ANNOTATION = "clustermesh.cilium.io/global"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class Affinity(enum.StrEnum):
    """Which cluster's backends a global service prefers (reference §8)."""

    LOCAL = "local"
    REMOTE = "remote"
    NONE = "none"


class BackendState(enum.StrEnum):
    """A backend's state: ACTIVE takes new connections; TERMINATING only finishes what it has."""

    ACTIVE = "active"
    TERMINATING = "terminating"


@dataclasses.dataclass(frozen=True, slots=True)
class Port:
    """A named port: for a frontend the Service port, for a backend the endpoint's (target) port."""

    name: str
    port: int
    protocol: str


@dataclasses.dataclass(frozen=True, slots=True)
class LocalBackend:
    """One local endpoint address with its ports."""

    ip: str
    ports: tuple[Port, ...]
    state: BackendState


@dataclasses.dataclass(frozen=True)
class LocalService:
    """A local Service merged with its EndpointSlices and its Namespace's global flag."""

    namespace: str
    name: str
    global_: bool
    shared: bool
    affinity: Affinity
    cluster_ips: tuple[str, ...]
    ports: tuple[Port, ...]
    backends: tuple[LocalBackend, ...]


@dataclasses.dataclass(frozen=True)
class _ServiceSpec:
    global_annotation: bool
    shared: bool
    affinity: Affinity
    cluster_ips: tuple[str, ...]
    ports: tuple[Port, ...]


@dataclasses.dataclass(frozen=True)
class _Slice:
    service: str
    backends: tuple[LocalBackend, ...]


class LocalServices:
    """The local services of one source, kept current while `run()` runs.

    Only `run()` mutates; readers call `get()`, `names()` and `has_namespace()` from the event loop.
    """

    def __init__(self, source: kube.Source, *, default_global_namespace: bool = True) -> None:
        missing = set(KINDS) - source.kinds
        if missing:
            raise ValueError(f"the local source must deliver {sorted(missing)} too")
        self._source = source
        self._default_global_namespace = default_global_namespace
        self._specs: dict[tuple[str, str], _ServiceSpec] = {}
        # (namespace, slice name) -> slice; a service's backends are the union of its slices.
        self._slices: dict[tuple[str, str], _Slice] = {}
        self._slices_of: dict[tuple[str, str], set[str]] = {}
        self._global_namespaces: dict[str, bool] = {}
        self._views: dict[tuple[str, str], LocalService] = {}
        self._running = False
        self.synced = False
        """Whether the source delivered its initial state (answers before that may miss services)."""

    def __repr__(self) -> str:
        return f"<LocalServices services={len(self._views)} slices={len(self._slices)} synced={self.synced}>"

    def get(self, namespace: str, name: str) -> LocalService | None:
        """The local service namespace/name, or None if there is no such Service."""
        return self._views.get((namespace, name))

    def names(self) -> Iterator[tuple[str, str]]:
        """(namespace, name) of every local service."""
        return iter(list(self._views))

    def has_namespace(self, namespace: str) -> bool:
        """Whether some local service lives in namespace."""
        return any(ns == namespace for ns, _ in self._views)

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Follow the source until cancelled; sets `ready` once the initial state is in.

        Raises RuntimeError if already running; errors of the source (e.g. ConfigError for a missing manifest
        directory) propagate. A new run starts from nothing, as the source re-delivers everything.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        self._reset()
        try:
            await self._source.run(self._apply, ready=ready)
        finally:
            self._running = False

    def _reset(self) -> None:
        self._specs.clear()
        self._slices.clear()
        self._slices_of.clear()
        self._global_namespaces.clear()
        self._views.clear()
        self.synced = False

    async def _apply(self, item: kube.SourceItem) -> None:
        if item is kube.SYNCED:
            self.synced = True
            log.info("event=local_services.synced services=%d", len(self._views))
            return
        key = item.key
        deleted = item.type is kube.EventType.DELETE
        if key.kind is kube.Kind.NAMESPACE:
            if deleted:
                self._global_namespaces.pop(key.name, None)
            else:
                self._global_namespaces[key.name] = _namespace_global(item.obj, self._default_global_namespace)
            for namespace, name in [k for k in self._specs if k[0] == key.name]:
                self._rebuild(namespace, name)
        elif key.kind is kube.Kind.SERVICE:
            spec = None if deleted else _parse_service(item.obj, str(key))
            if spec is None:
                self._specs.pop((key.namespace, key.name), None)
            else:
                self._specs[(key.namespace, key.name)] = spec
            self._rebuild(key.namespace, key.name)
        elif key.kind is kube.Kind.ENDPOINT_SLICE:
            self._apply_slice(key, None if deleted else _parse_slice(item.obj, str(key)))

    def _apply_slice(self, key: kube.ObjectKey, parsed: _Slice | None) -> None:
        slice_key = (key.namespace, key.name)
        previous = self._slices.pop(slice_key, None)
        if previous is not None:
            owners = self._slices_of.get((key.namespace, previous.service), set())
            owners.discard(key.name)
            if not owners:
                self._slices_of.pop((key.namespace, previous.service), None)
            self._rebuild(key.namespace, previous.service)
        if parsed is not None:
            self._slices[slice_key] = parsed
            self._slices_of.setdefault((key.namespace, parsed.service), set()).add(key.name)
            self._rebuild(key.namespace, parsed.service)

    def _rebuild(self, namespace: str, name: str) -> None:
        spec = self._specs.get((namespace, name))
        if spec is None:
            self._views.pop((namespace, name), None)
            return
        namespace_global = self._global_namespaces.get(namespace, self._default_global_namespace)
        global_ = spec.global_annotation and namespace_global
        slices = [self._slices[(namespace, s)] for s in sorted(self._slices_of.get((namespace, name), ()))]
        self._views[(namespace, name)] = LocalService(
            namespace=namespace,
            name=name,
            global_=global_,
            shared=global_ and spec.shared,
            affinity=spec.affinity,
            cluster_ips=spec.cluster_ips,
            ports=spec.ports,
            backends=_merge_backends(slices),
        )


def _annotation(obj: dict[str, Any], names: tuple[str, ...]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    for name in names:
        value = annotations.get(name)
        if isinstance(value, str):
            return value.strip().lower()
    return None


def _namespace_global(obj: dict[str, Any], default: bool) -> bool:
    value = _annotation(obj, (GLOBAL_NAMESPACE_ANNOTATION,))
    if value is None:
        return default
    return value == "true"


def _parse_service(obj: dict[str, Any], what: str) -> _ServiceSpec | None:
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict) or spec.get("type") == "ExternalName":
        return None
    global_annotation = _annotation(obj, GLOBAL_ANNOTATIONS) == "true"
    shared_value = _annotation(obj, SHARED_ANNOTATIONS)
    affinity_value = _annotation(obj, AFFINITY_ANNOTATIONS) or Affinity.NONE.value
    try:
        affinity = Affinity(affinity_value)
    except ValueError:
        log.warning("event=local_services.invalid_affinity object=%s value=%s", what, affinity_value[:64])
        affinity = Affinity.NONE
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return _ServiceSpec(
        global_annotation=global_annotation,
        # Cilium: an explicit value must be "true"; absent, "default is true if GlobalService is set".
        shared=global_annotation if shared_value is None else shared_value == "true",
        affinity=affinity,
        cluster_ips=tuple(ip for ip in cluster_ips if isinstance(ip, str) and _is_ip(ip)),
        ports=tuple(_ports(spec.get("ports"), what)),
    )


def _parse_slice(obj: dict[str, Any], what: str) -> _Slice | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL)
    if not isinstance(service, str) or not service:
        return None
    ports = tuple(_ports(obj.get("ports"), what))
    backends = []
    for endpoint in obj.get("endpoints") or ():
        if not isinstance(endpoint, dict):
            continue
        state = _endpoint_state(endpoint.get("conditions") or {})
        if state is None:
            continue
        for address in endpoint.get("addresses") or ():
            if isinstance(address, str) and _is_ip(address):
                backends.append(LocalBackend(str(ipaddress.ip_address(address)), ports, state))
            else:
                log.warning("event=local_services.invalid_address object=%s address=%.64r", what, address)
    return _Slice(service, tuple(backends))


def _endpoint_state(conditions: dict[str, Any]) -> BackendState | None:
    # Kubernetes: an unset `ready` means ready; `serving` without `ready` is a terminating endpoint that still
    # answers, which Cilium keeps as Terminating so established connections can finish.
    if conditions.get("ready") is not False:
        return BackendState.ACTIVE
    if conditions.get("terminating") is True and conditions.get("serving") is True:
        return BackendState.TERMINATING
    return None


def _ports(items: Any, what: str) -> Iterator[Port]:
    for item in items or ():
        if not isinstance(item, dict):
            continue
        port = item.get("port")
        if not isinstance(port, int) or not 0 < port <= 0xFFFF:
            log.warning("event=local_services.invalid_port object=%s port=%.64r", what, port)
            continue
        name = item.get("name") or ""
        protocol = item.get("protocol") or "TCP"
        yield Port(str(name), port, str(protocol).upper())


def _merge_backends(slices: list[_Slice]) -> tuple[LocalBackend, ...]:
    """One backend per IP: ports of every slice naming it, ACTIVE if any slice says so."""
    merged: dict[str, LocalBackend] = {}
    for one in slices:
        for backend in one.backends:
            previous = merged.get(backend.ip)
            if previous is None:
                merged[backend.ip] = backend
                continue
            ports = previous.ports + tuple(p for p in backend.ports if p not in previous.ports)
            state = BackendState.ACTIVE if BackendState.ACTIVE in (previous.state, backend.state) else previous.state
            merged[backend.ip] = LocalBackend(backend.ip, ports, state)
    return tuple(merged[ip] for ip in sorted(merged, key=_ip_sort_key))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ip_sort_key(text: str) -> tuple[int, int]:
    address = ipaddress.ip_address(text)
    return address.version, int(address)
