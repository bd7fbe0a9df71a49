"""Services and their EndpointSlices → global services (`cilium/state/services/v1/<cluster>/<ns>/<name>`).

A service is exported when it is global (`service.cilium.io/global: "true"`), shared (`service.cilium.io/shared`,
default true for a global service), not an ExternalName service, and its namespace is global (annotation
`clustermesh.cilium.io/global`, default configurable, true by default) — the rules of Cilium's apiserver
(reference §7, §8, annotations read with their legacy `io.cilium/...` aliases). The record's frontends are
the ClusterIPs with the service ports; its backends are the addresses of ready endpoints of every
EndpointSlice of the service, with the slice's (target) ports; it is always `includeExternal` and `shared`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from apiserver import fields
from clustermesh import records

GLOBAL_ANNOTATIONS = ("service.cilium.io/global", "io.cilium/global-service")
SHARED_ANNOTATIONS = ("service.cilium.io/shared", "io.cilium/shared-service")
NAMESPACE_GLOBAL_ANNOTATION = "clustermesh.cilium.io/global"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_NO_CLUSTER_IP = frozenset({"", "None"})
_FQDN = "FQDN"


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    """What a global service record needs from a Service object."""

    namespace: str
    name: str
    exported: bool
    """Global, shared and not ExternalName (the namespace is checked separately)."""
    frontends: dict[str, records.PortConfiguration]
    labels: dict[str, str]
    selector: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class Slice:
    """The ready backends one EndpointSlice contributes to its service."""

    namespace: str
    service: str
    backends: dict[str, records.PortConfiguration]
    hostnames: dict[str, str]


def _annotation(annotations: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((annotations[name] for name in names if name in annotations), None)


def service(obj: Mapping[str, Any]) -> Service:
    """The parts of a Service object a global service is made of; DecodeError if it is malformed."""
    metadata = fields.mapping(obj, "metadata")
    spec = fields.mapping(obj, "spec")
    annotations = fields.string_map(metadata, "annotations", "metadata.annotations") or {}
    is_global = (_annotation(annotations, GLOBAL_ANNOTATIONS) or "").lower() == "true"
    shared = _annotation(annotations, SHARED_ANNOTATIONS)
    is_shared = is_global if shared is None else shared.lower() == "true"
    ports: records.PortConfiguration = {}
    for index, entry in enumerate(fields.items(spec, "ports", "spec.ports")):
        path = f"spec.ports[{index}]"
        protocol = fields.string(entry, "protocol", f"{path}.protocol", default="TCP")
        ports[fields.string(entry, "name", f"{path}.name")] = records.L4Addr(protocol, fields.port(entry, "port", path))
    cluster_ips = fields.strings(spec, "clusterIPs", "spec.clusterIPs")
    if not cluster_ips:
        cluster_ips = [fields.string(spec, "clusterIP", "spec.clusterIP")]
    frontends = {
        fields.ip(text, f"spec.clusterIPs[{index}]"): ports
        for index, text in enumerate(cluster_ips)
        if text not in _NO_CLUSTER_IP
    }
    return Service(
        namespace=fields.string(metadata, "namespace", "metadata.namespace", default="default"),
        name=fields.string(metadata, "name", "metadata.name"),
        exported=is_global and is_shared and fields.string(spec, "type", "spec.type") != "ExternalName",
        frontends=frontends,
        labels=fields.string_map(metadata, "labels", "metadata.labels") or {},
        selector=fields.string_map(spec, "selector", "spec.selector") or {},
    )


def endpoint_slice(obj: Mapping[str, Any]) -> Slice | None:
    """The ready backends of an EndpointSlice; None if it belongs to no service or lists FQDNs."""
    metadata = fields.mapping(obj, "metadata")
    labels = fields.string_map(metadata, "labels", "metadata.labels") or {}
    owner = labels.get(SERVICE_NAME_LABEL)
    if not owner or fields.string(obj, "addressType", "addressType") == _FQDN:
        return None
    ports: records.PortConfiguration = {}
    for index, entry in enumerate(fields.items(obj, "ports", "ports")):
        path = f"ports[{index}]"
        # A null port means "all ports" (a selector-less service without ports): nothing to balance to.
        if entry.get("port") is not None:
            protocol = fields.string(entry, "protocol", f"{path}.protocol", default="TCP")
            ports[fields.string(entry, "name", f"{path}.name")] = records.L4Addr(
                protocol, fields.port(entry, "port", path)
            )
    backends: dict[str, records.PortConfiguration] = {}
    hostnames: dict[str, str] = {}
    for index, entry in enumerate(fields.items(obj, "endpoints", "endpoints")):
        path = f"endpoints[{index}]"
        ready = fields.mapping(entry, "conditions").get("ready")
        # Kubernetes: "a nil value indicates an unknown state ... consumers should interpret it as ready".
        if ready is False:
            continue
        hostname = fields.string(entry, "hostname", f"{path}.hostname")
        for a_index, text in enumerate(fields.strings(entry, "addresses", f"{path}.addresses")):
            address = fields.ip(text, f"{path}.addresses[{a_index}]")
            backends[address] = ports
            if hostname:
                hostnames[address] = hostname
    return Slice(
        namespace=fields.string(metadata, "namespace", "metadata.namespace", default="default"),
        service=owner,
        backends=backends,
        hostnames=hostnames,
    )


def namespace_global(obj: Mapping[str, Any], *, default: bool) -> bool:
    """Whether a Namespace object's services are exported (annotation, else `default`)."""
    annotations = fields.string_map(fields.mapping(obj, "metadata"), "annotations", "metadata.annotations") or {}
    value = annotations.get(NAMESPACE_GLOBAL_ANNOTATION)
    return default if value is None else value.lower() == "true"


def cluster_service(
    svc: Service, slices: Iterable[Slice], *, cluster: str, cluster_id: int
) -> records.ClusterService:
    """The global service record of `svc` with the backends of `slices` (ports of one IP merged)."""
    backends: dict[str, records.PortConfiguration] = {}
    hostnames: dict[str, str] = {}
    for part in slices:
        for address, ports in part.backends.items():
            backends[address] = {**backends[address], **ports} if address in backends else ports
        hostnames.update(part.hostnames)
    return records.ClusterService(
        cluster=cluster,
        namespace=svc.namespace,
        name=svc.name,
        frontends=svc.frontends,
        backends=backends,
        hostnames=hostnames or None,
        labels=svc.labels,
        selector=svc.selector,
        include_external=True,
        shared=True,
        cluster_id=cluster_id,
    )
