"""Typed reads of Kubernetes object fields: the one place that checks what a field of an object dict holds.

Objects arrive as plain dicts (from YAML files or the API server's JSON) and anything can be missing or of
the wrong type. The conversions read them through these functions: an absent optional field gives its
default, a present field of the wrong shape raises DecodeError whose key is the field's path (e.g.
`status.podIPs[1].ip`), so the caller can report the object and the field and skip the object.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any

from clustermesh.errors import DecodeError

_MAX_PORT = 0xFFFF


def mapping(obj: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The mapping at a dotted path; {} when any part is absent or null."""
    if "." not in path:
        # One member (metadata, spec, status: several per object): skip the walk.
        value = obj.get(path)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise DecodeError(path, f"expected a mapping, got {type(value).__name__}")
        return value
    current: Any = obj
    walked: list[str] = []
    for part in path.split("."):
        walked.append(part)
        current = current.get(part) if current is not None else None
        if current is None:
            return {}
        if not isinstance(current, dict):
            raise DecodeError(".".join(walked), f"expected a mapping, got {type(current).__name__}")
    return current


def items(obj: Mapping[str, Any], field: str, path: str) -> list[dict[str, Any]]:
    """The list of mappings under `field` (absent or null: []); `path` names the field in errors."""
    value = obj.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError(path, f"expected a list, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise DecodeError(f"{path}[{index}]", f"expected a mapping, got {type(item).__name__}")
    return value


def strings(obj: Mapping[str, Any], field: str, path: str) -> list[str]:
    """The list of strings under `field` (absent or null: [])."""
    value = obj.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DecodeError(path, "expected a list of strings")
    return value


def string(obj: Mapping[str, Any], field: str, path: str, *, default: str = "") -> str:
    """The string under `field`; `default` when absent or null."""
    value = obj.get(field)
    if value is None:
        return default
    if not isinstance(value, str):
        raise DecodeError(path, f"expected a string, got {type(value).__name__}")
    return value


def string_map(obj: Mapping[str, Any], field: str, path: str) -> dict[str, str] | None:
    """The string-to-string map under `field` (labels, annotations, selectors); None when absent."""
    value = obj.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DecodeError(path, f"expected a mapping, got {type(value).__name__}")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise DecodeError(f"{path}[{key!r}]", "expected string keys and values")
    return value


def port(obj: Mapping[str, Any], field: str, path: str) -> int:
    """A required TCP/UDP/SCTP port number (1..65535)."""
    value = obj.get(field)
    # bool is an int in Python; YAML `port: yes` must not become port 1.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= _MAX_PORT:
        raise DecodeError(path, f"expected a port number 1..{_MAX_PORT}, got {value!r}")
    return value


def ip(text: str, path: str) -> str:
    """`text` as Go's net.IP.String() prints it: compressed IPv6, IPv4-mapped IPv6 as dotted IPv4.

    The key of an ipcache entry and the map keys of a service are this text, so two spellings of one address
    must not become two keys.
    """
    # Fast path for the common case, a canonical dotted quad (inet_pton is ~10x faster than ipaddress);
    # anything else, including IPv4 with leading zeros, takes the strict path below.
    try:
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text:
            return text
    except OSError:
        pass
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise DecodeError(path, f"{text[:64]!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise DecodeError(path, f"{text[:64]!r} has a zone, which no key may carry")
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)
