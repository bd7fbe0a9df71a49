"""The etcd key schema of Cluster Mesh: the only module that builds or parses key strings.

Every key the mesh reads or writes is Cilium's (reference §1, §2): records under `cilium/state/<kind>/v1/...`,
their KVStoreMesh copies under `cilium/cache/<kind>/v1/<cluster>/...`, the per-cluster configuration, the
heartbeat and the sync canaries. Builders refuse path segments that are empty or contain `/`, because such
a segment would make a key ambiguous (cluster `a/b` vs cluster `a` with node `b/...`). Readers watch prefixes
that always end with `/`, so that cluster `a` never matches cluster `ab` (Cilium's watch store does the same).

This module knows paths only; what the values mean is the codec's business (clustermesh.codec).
"""

# STABLE WIRE FORMAT: every string in this module is part of Cilium's etcd contract. Changing one breaks
# interoperability with Cilium agents, clustermesh-apiservers and KVStoreMesh.

from __future__ import annotations

import enum
from typing import NamedTuple

BASE = "cilium"
STATE = "cilium/state"
CACHE = "cilium/cache"
HEARTBEAT_KEY = "cilium/.heartbeat"
CLUSTER_CONFIG_PREFIX = "cilium/cluster-config"
SYNCED_PREFIX = "cilium/synced"
# Used only by the externalworkload etcd role (reference §2.9, §4.3); not part of mesh sync.
NODE_REGISTER_PREFIX = "cilium/state/noderegister/v1"
INIT_LOCK_PATH = "cilium/.initlock"

_VERSION = "v1"
_IDENTITY_ID = "id"
_DEFAULT_ADDRESS_SPACE = "default"
_MAX_IDENTITY = 0xFFFF_FFFF


class Kind(enum.Enum):
    """A kind of record a cluster exports; the value is its path segment under `cilium/state/`."""

    NODES = "nodes"
    SERVICES = "services"
    SERVICE_EXPORTS = "serviceexports"
    IDENTITIES = "identities"
    IPCACHE = "ip"


class KeyType(enum.Enum):
    """What a key is: a record of some Kind, a cluster's configuration, the heartbeat or a sync canary."""

    RECORD = "record"
    CLUSTER_CONFIG = "cluster-config"
    HEARTBEAT = "heartbeat"
    SYNCED_CANARY = "synced-canary"


class ParsedKey(NamedTuple):
    """A key taken apart. Fields that the key does not carry are None.

    `kind` is the record's kind, or for a canary the kind whose export it announces. `cluster` is absent only
    from the heartbeat and from state identity and ipcache keys (those do not name their cluster). `name` is
    the node name, the service name, or the IP (`ip` or `ip/prefixlen`) of an ipcache entry.
    """

    type: KeyType
    kind: Kind | None = None
    cluster: str | None = None
    cached: bool = False
    namespace: str | None = None
    name: str | None = None
    identity: int | None = None


def _segment(value: str, what: str) -> str:
    if not value or "/" in value:
        raise ValueError(f"{what} must be a non-empty path segment without '/', got {value!r}")
    return value


def _identity_segment(numeric_id: int) -> str:
    if not 0 <= numeric_id <= _MAX_IDENTITY:
        raise ValueError(f"numeric identity must be a uint32, got {numeric_id}")
    return str(numeric_id)


def _ip_name(ip: str) -> str:
    # An ipcache key names a host IP, or `ip/prefixlen` when the entry carries a mask (Go's PrefixString()).
    if not ip or ip.count("/") > 1 or ip.startswith("/") or ip.endswith("/"):
        raise ValueError(f"ip must be an IP or IP/prefixlen, got {ip!r}")
    return ip


def _kind_base(kind: Kind, *, cached: bool) -> str:
    return f"{CACHE if cached else STATE}/{kind.value}/{_VERSION}"


def node_key(cluster: str, name: str) -> str:
    """`cilium/state/nodes/v1/<cluster>/<name>`."""
    return _cluster_scoped_key(Kind.NODES, cluster, name, cached=False)


def service_key(cluster: str, namespace: str, name: str) -> str:
    """`cilium/state/services/v1/<cluster>/<namespace>/<name>`."""
    return _cluster_scoped_key(Kind.SERVICES, cluster, namespace, name, cached=False)


def service_export_key(cluster: str, namespace: str, name: str) -> str:
    """`cilium/state/serviceexports/v1/<cluster>/<namespace>/<name>`."""
    return _cluster_scoped_key(Kind.SERVICE_EXPORTS, cluster, namespace, name, cached=False)


def identity_key(numeric_id: int) -> str:
    """`cilium/state/identities/v1/id/<numeric_id>`; the key names no cluster, the id range does."""
    return f"{STATE}/identities/{_VERSION}/{_IDENTITY_ID}/{_identity_segment(numeric_id)}"


def ip_key(ip: str) -> str:
    """`cilium/state/ip/v1/default/<ip>`; `ip` is a host IP, or `ip/prefixlen` for an entry with a mask."""
    return f"{STATE}/ip/{_VERSION}/{_DEFAULT_ADDRESS_SPACE}/{_ip_name(ip)}"


def cached_node_key(cluster: str, name: str) -> str:
    """KVStoreMesh copy of a node: `cilium/cache/nodes/v1/<cluster>/<name>`."""
    return _cluster_scoped_key(Kind.NODES, cluster, name, cached=True)


def cached_service_key(cluster: str, namespace: str, name: str) -> str:
    """KVStoreMesh copy of a service: `cilium/cache/services/v1/<cluster>/<namespace>/<name>`."""
    return _cluster_scoped_key(Kind.SERVICES, cluster, namespace, name, cached=True)


def cached_service_export_key(cluster: str, namespace: str, name: str) -> str:
    """KVStoreMesh copy of a service export: `cilium/cache/serviceexports/v1/<cluster>/<namespace>/<name>`."""
    return _cluster_scoped_key(Kind.SERVICE_EXPORTS, cluster, namespace, name, cached=True)


def cached_identity_key(cluster: str, numeric_id: int) -> str:
    """KVStoreMesh copy of an identity: `cilium/cache/identities/v1/<cluster>/id/<numeric_id>`."""
    return watch_prefix(Kind.IDENTITIES, cluster, cached=True) + _identity_segment(numeric_id)


def cached_ip_key(cluster: str, ip: str) -> str:
    """KVStoreMesh copy of an ipcache entry: `cilium/cache/ip/v1/<cluster>/<ip>` (no `default` segment)."""
    return watch_prefix(Kind.IPCACHE, cluster, cached=True) + _ip_name(ip)


def _cluster_scoped_key(kind: Kind, cluster: str, *names: str, cached: bool) -> str:
    # Nodes, services and service exports: `<base>/<cluster>/<name...>`, the same in state and cache.
    return "/".join(
        (_kind_base(kind, cached=cached), _segment(cluster, "cluster"), *(_segment(n, "name") for n in names))
    )


def cluster_config_key(cluster: str) -> str:
    """`cilium/cluster-config/<cluster>`: the cluster's id and capabilities."""
    return f"{CLUSTER_CONFIG_PREFIX}/{_segment(cluster, 'cluster')}"


def synced_prefix(cluster: str) -> str:
    """`cilium/synced/<cluster>/`: the prefix under which the cluster's sync canaries appear."""
    return f"{SYNCED_PREFIX}/{_segment(cluster, 'cluster')}/"


def synced_canary_key(cluster: str, kind: Kind, *, cached: bool = False) -> str:
    """The canary announcing that `cluster` finished its initial export of `kind`.

    It names the kind's base prefix, e.g. `cilium/synced/<c>/cilium/state/identities/v1` (not `.../id`), or
    `cilium/synced/<c>/cilium/cache/<kind>/v1` for data a KVStoreMesh cached (reference §2.3).
    """
    return synced_prefix(cluster) + _kind_base(kind, cached=cached)


def watch_prefix(kind: Kind, cluster: str, *, cached: bool) -> str:
    """The prefix a reader lists and watches for `cluster`'s records of `kind`; always ends with `/`.

    State identities and ipcache entries of every cluster share one prefix (their keys name no cluster), so
    for those the reader must tell clusters apart by identity range. Every record key is this prefix plus the
    record's name (node name, `<namespace>/<name>`, numeric identity, or IP).
    """
    _segment(cluster, "cluster")
    base = _kind_base(kind, cached=cached)
    if kind is Kind.IDENTITIES:
        return f"{base}/{cluster}/{_IDENTITY_ID}/" if cached else f"{base}/{_IDENTITY_ID}/"
    if kind is Kind.IPCACHE and not cached:
        return f"{base}/{_DEFAULT_ADDRESS_SPACE}/"
    return f"{base}/{cluster}/"


def subtree_prefix(path: str) -> str:
    """The prefix matching exactly the keys below `path` (e.g. `cilium/state` → `cilium/state/`)."""
    return path if path.endswith("/") else path + "/"


def prefix_range_end(prefix: bytes) -> bytes:
    """The etcd range end covering every key that starts with `prefix` (clientv3.GetPrefixRangeEnd).

    The last byte below 0xff is incremented and the rest dropped; a prefix of only 0xff bytes (or an empty
    one) has no end, which etcd spells `\\0`: "every key from here on".
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


_STATE_ROOT = subtree_prefix(STATE)
_CACHE_ROOT = subtree_prefix(CACHE)
_CLUSTER_CONFIG_ROOT = subtree_prefix(CLUSTER_CONFIG_PREFIX)
_SYNCED_ROOT = subtree_prefix(SYNCED_PREFIX)
_KIND_BY_SEGMENT = {kind.value: kind for kind in Kind}
_CANARY_BASES = {_kind_base(kind, cached=cached): (kind, cached) for kind in Kind for cached in (False, True)}


def parse_key(key: str) -> ParsedKey | None:
    """Take a key apart; None when it is not a well-formed key the mesh reads.

    None covers keys of other Cilium features (identity `value/` and `locks/` keys of kvstore identity mode,
    node registrations, endpoint slices) as well as malformed ones (empty segments, a non-canonical
    identity number), so a caller can show such keys raw without a try/except.
    """
    if key.startswith(_STATE_ROOT):
        return _parse_record_key(key[len(_STATE_ROOT) :], cached=False)
    if key.startswith(_CACHE_ROOT):
        return _parse_record_key(key[len(_CACHE_ROOT) :], cached=True)
    if key == HEARTBEAT_KEY:
        return ParsedKey(KeyType.HEARTBEAT)
    if key.startswith(_CLUSTER_CONFIG_ROOT):
        cluster = key[len(_CLUSTER_CONFIG_ROOT) :]
        return ParsedKey(KeyType.CLUSTER_CONFIG, None, cluster) if _is_segment(cluster) else None
    if key.startswith(_SYNCED_ROOT):
        cluster, _, base = key[len(_SYNCED_ROOT) :].partition("/")
        canary = _CANARY_BASES.get(base)
        if canary is None or not _is_segment(cluster):
            return None
        return ParsedKey(KeyType.SYNCED_CANARY, canary[0], cluster, canary[1])
    return None


def _is_segment(value: str) -> bool:
    return bool(value) and "/" not in value


def _parse_identity(text: str) -> int | None:
    # Only the canonical decimal form: `id/007` and `id/7` must not both name identity 7. The length bound
    # (a uint32 has at most 10 digits) also keeps int() away from its digit limit.
    if not 0 < len(text) <= 10 or not text.isascii() or not text.isdigit() or (len(text) > 1 and text[0] == "0"):
        return None
    value = int(text)
    return value if value <= _MAX_IDENTITY else None


def _parse_record_key(rest: str, *, cached: bool) -> ParsedKey | None:
    parts = rest.split("/")
    if len(parts) < 4 or parts[1] != _VERSION:
        return None
    kind = _KIND_BY_SEGMENT.get(parts[0])
    if kind is None:
        return None
    names = parts[2:]
    if kind is Kind.NODES:
        if len(names) != 2 or not all(names):
            return None
        return ParsedKey(KeyType.RECORD, kind, names[0], cached, None, names[1])
    if kind is Kind.SERVICES or kind is Kind.SERVICE_EXPORTS:
        if len(names) != 3 or not all(names):
            return None
        return ParsedKey(KeyType.RECORD, kind, names[0], cached, names[1], names[2])
    if kind is Kind.IDENTITIES:
        cluster: str | None = None
        if cached:
            cluster, names = names[0], names[1:]
        if len(names) != 2 or names[0] != _IDENTITY_ID or (cached and not cluster):
            return None
        numeric_id = _parse_identity(names[1])
        if numeric_id is None:
            return None
        return ParsedKey(KeyType.RECORD, kind, cluster, cached, None, None, numeric_id)
    # Kind.IPCACHE: the address space `default` in state keys, the cluster name in cached ones.
    space, ip = names[0], "/".join(names[1:])
    if not space or not ip or len(names) > 3 or not all(names[1:]):
        return None
    if cached:
        return ParsedKey(KeyType.RECORD, kind, space, cached, None, ip)
    if space != _DEFAULT_ADDRESS_SPACE:
        return None
    return ParsedKey(KeyType.RECORD, kind, None, cached, None, ip)
