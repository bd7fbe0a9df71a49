"""ServiceExports (MCS API) and their Services → service export records (reference §2.8).

`cilium/state/serviceexports/v1/<cluster>/<ns>/<name>` exists while both a ServiceExport and the Service of
the same name exist and the service is not an ExternalName service. Its spec comes from the Service (ports,
ClusterSetIP or Headless, session affinity) and from the ServiceExport (creation time, exported labels and
annotations), as Cilium's MCS-API controller builds it. A ServiceExport without a creationTimestamp (a
manifest file written by hand) is stamped with the Unix epoch: a stable stand-in, so that restarts do not
rewrite the key, and one every reader accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from apiserver import fields
from clustermesh import records
from clustermesh.errors import DecodeError

EPOCH = "1970-01-01T00:00:00Z"
_HEADLESS = "None"


@dataclasses.dataclass(frozen=True, slots=True)
class Export:
    """What a record needs from a ServiceExport object."""

    namespace: str
    name: str
    created: str
    labels: dict[str, str] | None
    annotations: dict[str, str] | None


@dataclasses.dataclass(frozen=True, slots=True)
class ExportedService:
    """What a record needs from the Service being exported."""

    ports: tuple[records.ServicePort, ...]
    headless: bool
    session_affinity: str
    session_affinity_config: records.SessionAffinityConfig | None


def export(obj: Mapping[str, Any]) -> Export:
    """The parts of a ServiceExport object a record is made of; DecodeError if it is malformed."""
    metadata = fields.mapping(obj, "metadata")
    spec = fields.mapping(obj, "spec")
    return Export(
        namespace=fields.string(metadata, "namespace", "metadata.namespace", default="default"),
        name=fields.string(metadata, "name", "metadata.name"),
        created=fields.string(metadata, "creationTimestamp", "metadata.creationTimestamp") or EPOCH,
        labels=fields.string_map(spec, "exportedLabels", "spec.exportedLabels"),
        annotations=fields.string_map(spec, "exportedAnnotations", "spec.exportedAnnotations"),
    )


def exported_service(obj: Mapping[str, Any]) -> ExportedService | None:
    """The exportable spec of a Service object; None for an ExternalName service (never exported)."""
    spec = fields.mapping(obj, "spec")
    if fields.string(spec, "type", "spec.type") == "ExternalName":
        return None
    ports = []
    for index, entry in enumerate(fields.items(spec, "ports", "spec.ports")):
        path = f"spec.ports[{index}]"
        app_protocol = entry.get("appProtocol")
        if app_protocol is not None and not isinstance(app_protocol, str):
            raise DecodeError(f"{path}.appProtocol", "expected a string")
        ports.append(
            records.ServicePort(
                name=fields.string(entry, "name", f"{path}.name"),
                protocol=fields.string(entry, "protocol", f"{path}.protocol", default="TCP"),
                app_protocol=app_protocol,
                port=fields.port(entry, "port", path),
            )
        )
    timeout = fields.mapping(spec, "sessionAffinityConfig.clientIP").get("timeoutSeconds")
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)):
        raise DecodeError("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "expected an integer")
    config = None
    if spec.get("sessionAffinityConfig") is not None:
        client_ip = None
        if fields.mapping(spec, "sessionAffinityConfig").get("clientIP") is not None:
            client_ip = records.ClientIPConfig(timeout_seconds=timeout)
        config = records.SessionAffinityConfig(client_ip=client_ip)
    return ExportedService(
        ports=tuple(ports),
        headless=fields.string(spec, "clusterIP", "spec.clusterIP") == _HEADLESS,
        session_affinity=fields.string(spec, "sessionAffinity", "spec.sessionAffinity"),
        session_affinity_config=config,
    )


def service_export(export: Export, service: ExportedService, *, cluster: str) -> records.ServiceExport:
    """The service export record of `export` for the exported `service`."""
    return records.ServiceExport(
        cluster=cluster,
        name=export.name,
        namespace=export.namespace,
        annotations=export.annotations,
        labels=export.labels,
        export_creation_timestamp=export.created,
        ports=service.ports,
        type="Headless" if service.headless else "ClusterSetIP",
        session_affinity=service.session_affinity,
        session_affinity_config=service.session_affinity_config,
    )
