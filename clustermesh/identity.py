"""How clusters and their security identities are numbered and named (reference §3).

A mesh cluster has a name and a cluster ID in 1..max-connected-clusters (255, or 511 in extended mode). The
cluster ID is encoded in the security identities the cluster allocates: the 24-bit numeric identity carries
the cluster ID in its top 8 (or 9) bits, so each cluster owns a disjoint range and a reader can tell which
cluster an identity belongs to. Identities below 256 are reserved and global (host, world, kube-dns, ...):
every cluster may use them.

This is the one place that validates cluster names and IDs; configuration loaders and the cluster-config
decoder both call it. Violations raise ConfigError with a message naming the bad value.
"""

# STABLE WIRE FORMAT: the identity layout is shared with Cilium's datapath and agents.

from __future__ import annotations

import enum
import re

from clustermesh.errors import ConfigError


class ClusterIDMode(enum.IntEnum):
    """The supported max-connected-clusters values; each fixes how many identity bits the cluster ID takes."""

    DEFAULT = 255
    EXTENDED = 511


CLUSTER_ID_MIN = 0
"""Cluster ID 0 means "not in a mesh"; a mesh member needs 1..max."""

MINIMAL_NUMERIC_IDENTITY = 256
"""The first identity a cluster may allocate; everything below is reserved."""

USER_RESERVED_NUMERIC_IDENTITY = 128
"""128..255 are reserved for users (fixed identities)."""

NUMERIC_IDENTITY_BITS = 24
"""Bits of a numeric identity carried on the wire (the tunnel header's VNI)."""

CLUSTER_NAME_MAX_LENGTH = 32
DEFAULT_CLUSTER_NAME = "default"
"""The name of a cluster outside any mesh; a mesh member must choose another."""

RESERVED: dict[int, str] = {
    0: "unknown",
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world-ipv4",
    10: "world-ipv6",
    11: "encrypted-overlay",
    # Well-known identities of cluster components, then a second copy for components in another namespace.
    100: "etcd-operator",
    101: "cilium-kvstore",
    102: "kube-dns",
    103: "eks-kube-dns",
    104: "core-dns",
    105: "cilium-operator",
    106: "eks-coredns",
    107: "cilium-etcd-operator",
    108: "etcd-operator-2",
    109: "cilium-kvstore-2",
    110: "kube-dns-2",
    111: "eks-kube-dns-2",
    112: "core-dns-2",
    113: "cilium-operator-2",
    114: "eks-coredns-2",
    115: "cilium-etcd-operator-2",
}
"""Names of the reserved and well-known identities, for display."""

HOST_IDENTITY = 1
REMOTE_NODE_IDENTITY = 6

# log2(max + 1) bits hold the cluster ID, at the top of the 24 bits: 8 bits → shift 16, 9 bits → shift 15.
_CLUSTER_ID_SHIFT: dict[int, int] = {ClusterIDMode.DEFAULT: 16, ClusterIDMode.EXTENDED: 15}

_CLUSTER_NAME = re.compile(r"([a-z0-9][-a-z0-9]*)?[a-z0-9]")


def validate_max_connected_clusters(value: int) -> ClusterIDMode:
    """The mode for a max-connected-clusters value; ConfigError unless it is 255 or 511."""
    _shift(value)
    return ClusterIDMode(value)


def _shift(max_clusters: int) -> int:
    # On the hot path (every ipcache record is range-checked), so a dict lookup rather than enum conversion.
    try:
        return _CLUSTER_ID_SHIFT[max_clusters]
    except KeyError:
        raise ConfigError(
            f"--max-connected-clusters={max_clusters} is invalid; supported values are [255, 511]"
        ) from None


def min_identity(cluster_id: int, max_clusters: int = ClusterIDMode.DEFAULT) -> int:
    """The first identity cluster_id allocates (256 for cluster ID 0, the non-mesh case)."""
    if cluster_id == CLUSTER_ID_MIN:
        return MINIMAL_NUMERIC_IDENTITY
    return cluster_id << _shift(max_clusters)


def max_identity(cluster_id: int, max_clusters: int = ClusterIDMode.DEFAULT) -> int:
    """The last identity cluster_id allocates."""
    return ((cluster_id + 1) << _shift(max_clusters)) - 1


def cluster_id_of(identity: int, max_clusters: int = ClusterIDMode.DEFAULT) -> int:
    """The cluster ID encoded in a numeric identity (0 for reserved identities)."""
    return (identity >> _shift(max_clusters)) & max_clusters


def is_reserved(identity: int) -> bool:
    """True for the reserved, well-known and user-reserved identities (< 256), which belong to no cluster."""
    return 0 <= identity < MINIMAL_NUMERIC_IDENTITY


def in_cluster_range(identity: int, cluster_id: int, max_clusters: int = ClusterIDMode.DEFAULT) -> bool:
    """True when a record of cluster_id may carry this identity: one of its own, or a reserved one."""
    if is_reserved(identity):
        return True
    return min_identity(cluster_id, max_clusters) <= identity <= max_identity(cluster_id, max_clusters)


def validate_cluster_id(cluster_id: int, max_clusters: int = ClusterIDMode.DEFAULT) -> int:
    """Return cluster_id if it may identify a mesh member (1..max_clusters); ConfigError otherwise."""
    mode = validate_max_connected_clusters(max_clusters)
    if cluster_id == CLUSTER_ID_MIN:
        raise ConfigError(f"ClusterID {CLUSTER_ID_MIN} is reserved")
    if cluster_id < CLUSTER_ID_MIN:
        raise ConfigError(f"ClusterID {cluster_id} is invalid: it must be positive")
    if cluster_id > mode:
        raise ConfigError(f"ClusterID > {int(mode)} is not supported")
    return cluster_id


def cluster_name_valid(name: str) -> bool:
    """True if name may name a mesh cluster: ≤32 of [a-z0-9-], alphanumeric at both ends."""
    return len(name) <= CLUSTER_NAME_MAX_LENGTH and _CLUSTER_NAME.fullmatch(name) is not None


def validate_cluster_name(name: str) -> str:
    """Return name if cluster_name_valid(name); ConfigError naming the value otherwise."""
    if not name:
        raise ConfigError("invalid cluster name '': must not be empty")
    if len(name) > CLUSTER_NAME_MAX_LENGTH:
        raise ConfigError(f"invalid cluster name {name!r}: must not be more than {CLUSTER_NAME_MAX_LENGTH} characters")
    if _CLUSTER_NAME.fullmatch(name) is None:
        raise ConfigError(
            f"invalid cluster name {name!r}: must consist of lower case alphanumeric characters and '-', "
            "and must start and end with an alphanumeric character"
        )
    return name


def validate_cluster(name: str, cluster_id: int, max_clusters: int = ClusterIDMode.DEFAULT) -> None:
    """Check a mesh member's own name and ID together; ConfigError on the first problem.

    Besides each value on its own, the non-mesh default name cannot be combined with a cluster ID.
    """
    validate_cluster_name(name)
    validate_cluster_id(cluster_id, max_clusters)
    if name == DEFAULT_CLUSTER_NAME:
        raise ConfigError(
            f"cannot use the default cluster name ({DEFAULT_CLUSTER_NAME!r}) with a cluster ID: "
            "choose a unique cluster name"
        )
