"""Kubernetes objects as plain dicts: the kinds a source can deliver and an object's identity.

Kinds come in two enums. `Kind` is cluster state — what the apiserver publishes (it reads every member) and the
agent serves; `ConfigKind` configures the mesh itself (the ClusterMesh resource and the peer Secrets it
references) and only the agent's ClusterMesh watcher reads it. Sources take either, as `AnyKind`.

An object is the dict that JSON or YAML decoding gives (camelCase keys, `kind`, `apiVersion`, `metadata`),
whether it came from the API server or from a manifest file; nothing here converts it into typed models.
Identity is (kind, namespace, name): namespaced kinds without `metadata.namespace` are in "default", as
`kubectl apply` puts them; cluster-scoped kinds (Node, Namespace, ClusterMesh) have the namespace "".
Translating objects into wire records is the consumers' job, not this package's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, NamedTuple, TypeAlias

from clustermesh.errors import DecodeError

DEFAULT_NAMESPACE = "default"


class Kind(enum.StrEnum):
    """A kind of cluster-state object a source can watch; the value is the object's `kind` field."""

    NODE = "Node"
    NAMESPACE = "Namespace"
    POD = "Pod"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    SERVICE_EXPORT = "ServiceExport"

    @property
    def namespaced(self) -> bool:
        """Whether objects of this kind live in a namespace."""
        # A set lookup: comparing with each member of a tuple goes through str.__eq__ (once per object read).
        return self not in _CLUSTER_SCOPED


class ConfigKind(enum.StrEnum):
    """A kind of Kubernetes object that configures the mesh rather than describing the cluster.

    Kept out of `Kind`, every member of which is state the apiserver reads and publishes: a Secret is never that.
    """

    CLUSTER_MESH = "ClusterMesh"
    SECRET = "Secret"

    @property
    def namespaced(self) -> bool:
        """Whether objects of this kind live in a namespace."""
        return self is ConfigKind.SECRET


_CLUSTER_SCOPED = frozenset({Kind.NODE, Kind.NAMESPACE})

AnyKind: TypeAlias = Kind | ConfigKind
"""Any kind a source can deliver."""

_KINDS: dict[str, AnyKind] = {kind.value: kind for kind in (*Kind, *ConfigKind)}


class ObjectKey(NamedTuple):
    """The identity of an object: kind, namespace ("" for cluster-scoped kinds) and name."""

    kind: AnyKind
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind}/{self.namespace}/{self.name}"
        return f"{self.kind}/{self.name}"


def parse_kind(value: str) -> AnyKind:
    """The kind whose `kind` field is `value`; raises ValueError if there is none."""
    try:
        return _KINDS[value]
    except KeyError:
        raise ValueError(f"unknown kind {value!r}; expected one of {sorted(_KINDS)}") from None


def parse_kinds(kinds: Iterable[AnyKind | str]) -> frozenset[AnyKind]:
    """Turn a kinds filter into kinds; raises ValueError (a programmer error) if unknown or empty."""
    parsed = frozenset(parse_kind(kind) for kind in kinds)
    if not parsed:
        raise ValueError("a source needs at least one kind")
    return parsed


def object_key(kind: AnyKind, obj: dict[str, Any]) -> ObjectKey:
    """The identity of `obj` (whose `kind` is `kind`); raises DecodeError when its metadata is malformed."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise DecodeError(str(kind), "metadata is missing or not a mapping")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise DecodeError(str(kind), "metadata.name is missing or not a non-empty string")
    if not kind.namespaced:
        return ObjectKey(kind, "", name)
    namespace = metadata.get("namespace", DEFAULT_NAMESPACE)
    if not isinstance(namespace, str) or not namespace:
        raise DecodeError(f"{kind}/{name}", "metadata.namespace is not a non-empty string")
    return ObjectKey(kind, namespace, name)


def list_items(document: dict[str, Any]) -> list[Any]:
    """The items of a list document: `kind: List`, or a typed list such as `NodeList`.

    The API server omits `kind` and `apiVersion` on the items of a typed list (NodeList, PodList...); they are
    filled in from the list so that objects look the same as in a manifest or a watch event. Items that are
    not mappings are returned as they are, for the caller to reject. Raises DecodeError for a malformed list.
    """
    items = document.get("items") or []
    list_kind = document.get("kind")
    if not isinstance(items, list) or not isinstance(list_kind, str):
        raise DecodeError(str(list_kind), "a list document needs a kind and an items list")
    if list_kind != "List":
        item_kind = list_kind.removesuffix("List")
        api_version = document.get("apiVersion")
        for item in items:
            if isinstance(item, dict):
                item.setdefault("kind", item_kind)
                if api_version is not None:
                    item.setdefault("apiVersion", api_version)
    return items
