"""Kubernetes objects as plain dicts: the kinds a source can deliver and an object's identity.

An object is the dict that JSON or YAML decoding gives (camelCase keys, `kind`, `apiVersion`, `metadata`),
whether it came from the API server or from a manifest file; nothing here converts it into typed models.
Identity is (kind, namespace, name): namespaced kinds without `metadata.namespace` are in "default", as
`kubectl apply` puts them; cluster-scoped kinds (Node, Namespace) have the namespace "". Translating objects
into wire records is the consumers' job, not this package's.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, NamedTuple

from clustermesh.errors import DecodeError

DEFAULT_NAMESPACE = "default"


class Kind(enum.StrEnum):
    """A kind of Kubernetes object a source can watch; the value is the object's `kind` field."""

    NODE = "Node"
    NAMESPACE = "Namespace"
    POD = "Pod"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    SERVICE_EXPORT = "ServiceExport"

    @property
    def namespaced(self) -> bool:
        """Whether objects of this kind live in a namespace."""
        return self not in (Kind.NODE, Kind.NAMESPACE)


class ObjectKey(NamedTuple):
    """The identity of an object: kind, namespace ("" for cluster-scoped kinds) and name."""

    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind}/{self.namespace}/{self.name}"
        return f"{self.kind}/{self.name}"


def parse_kinds(kinds: Iterable[Kind | str]) -> frozenset[Kind]:
    """Turn a kinds filter into `Kind`s; raises ValueError (a programmer error) if unknown or empty."""
    try:
        parsed = frozenset(Kind(kind) for kind in kinds)
    except ValueError as exc:
        raise ValueError(f"unknown kind in {kinds!r}; expected some of {[k.value for k in Kind]}") from exc
    if not parsed:
        raise ValueError("a source needs at least one kind")
    return parsed


def object_key(kind: Kind, obj: dict[str, Any]) -> ObjectKey:
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
