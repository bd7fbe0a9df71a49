"""Kubernetes sources: the only code that talks to the Kubernetes API or reads Kubernetes YAML.

Consumers build a source with `parse_source_spec(spec, kinds=...)` (or a source class directly) and run it in a task
they own; everything they need is re-exported here, except the Kubernetes API source itself
(`clustermesh.kube.kubernetes_api`): importing the kubernetes client costs most of a daemon's start-up time, so only
a process that talks to a live API server pays it (`clustermesh.kube.cluster_mesh`, the ClusterMesh resources and
their peer Secrets, imports it only when it runs; so does clustermesh.connect with `clustermesh.kube.object_api`,
the single-object reads and writes of the trust exchange). API errors are retried inside a source and never reach
its caller, so the KubeAPIError tree (clustermesh.kube.errors) is not part of this surface.
"""

from clustermesh.kube.event import SYNCED, Event, EventSink, EventType, SourceItem, Synced
from clustermesh.kube.manifests import ManifestSource
from clustermesh.kube.objects import AnyKind, ConfigKind, Kind, ObjectKey
from clustermesh.kube.source import Source, parse_kubernetes_spec, parse_source_spec

__all__ = [
    "SYNCED",
    "AnyKind",
    "ConfigKind",
    "Event",
    "EventSink",
    "EventType",
    "Kind",
    "ManifestSource",
    "ObjectKey",
    "Source",
    "SourceItem",
    "Synced",
    "parse_kubernetes_spec",
    "parse_source_spec",
]
