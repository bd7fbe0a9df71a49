"""What a peer claims that no other cluster of the mesh may hold: its cluster ID and its pod CIDRs.

A cluster ID names a cluster inside every security identity it allocates (reference §3), so two clusters
with one ID would confuse every policy decision: ClusterIDs reserves each peer's ID and refuses 0, an ID
above max-connected-clusters, the local cluster's ID, and an ID another peer holds (Cilium's
ClusterIDsManager, pkg/clustermesh/idsmgr.go, with its messages). Pod CIDRs are ours (Cilium does not check
them): overlapping pod address ranges make routes and ipcache entries ambiguous, so PodCIDRs records the
allocation CIDRs of every peer's nodes and says which claim overlaps which, naming both clusters and both
CIDRs.

Both are plain bookkeeping, mutated from the event loop by the peers' connections; refusing, draining and
retrying are the connection's business (agent/remote_cluster.py).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from clustermesh import errors

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Conflict(errors.ConfigError):
    """Raised when a peer claims a cluster ID that is invalid or already held; the message says which."""


class ClusterIDs:
    """The cluster IDs held by the local cluster and by each accepted peer."""

    def __init__(self, *, local_cluster: str, local_id: int, max_clusters: int) -> None:
        self.local_cluster = local_cluster
        self.local_id = local_id
        self.max_clusters = max_clusters
        self._holders: dict[int, str] = {}

    def __repr__(self) -> str:
        held = ", ".join(f"{cluster_id}={cluster}" for cluster_id, cluster in sorted(self._holders.items()))
        return f"<ClusterIDs local={self.local_cluster}:{self.local_id} {{{held}}}>"

    def holder(self, cluster_id: int) -> str | None:
        """The peer holding cluster_id, if any."""
        return self._holders.get(cluster_id)

    def reserve(self, cluster: str, cluster_id: int) -> None:
        """Reserve cluster_id for the peer; Conflict unless it is free, in range and not the local ID.

        Reserving the ID the peer already holds is a no-op; a peer holds one ID at a time (release() first).
        """
        if cluster_id == 0:
            raise Conflict("clusterID 0 is reserved")
        if not 0 < cluster_id <= self.max_clusters:
            raise Conflict(f"clusterID {cluster_id} is out of range: the mesh allows 1..{self.max_clusters}")
        if cluster_id == self.local_id:
            raise Conflict(f"clusterID {cluster_id} is assigned to the local cluster {self.local_cluster}")
        holder = self._holders.get(cluster_id)
        if holder == cluster:
            return
        if holder is not None:
            raise Conflict(f"clusterID {cluster_id} is already used by cluster {holder}")
        if cluster in self._holders.values():
            raise ValueError(f"{cluster} already holds a cluster ID; release it first")
        self._holders[cluster_id] = cluster

    def release(self, cluster: str) -> None:
        """Forget the peer's reservation, if it has one. Idempotent."""
        for cluster_id, holder in list(self._holders.items()):
            if holder == cluster:
                del self._holders[cluster_id]


class Prefix(NamedTuple):
    """An IP network as integers: its family (4 or 6), its first address and its prefix length.

    What PodCIDRs stores and compares: an `ipaddress` network costs ~500 bytes (it caches its addresses and
    mask in a `__dict__`), and a mesh holds one per node of every peer. str() is the network's usual text.
    """

    version: int
    start: int
    length: int

    @classmethod
    def of(cls, network: Network) -> Prefix:
        """The prefix of an `ipaddress` network."""
        return cls(network.version, int(network.network_address), network.prefixlen)

    def __str__(self) -> str:
        network_type = ipaddress.IPv4Network if self.version == 4 else ipaddress.IPv6Network
        return str(network_type((self.start, self.length)))


Owner = tuple[str, str]
"""(cluster, node) of a claim; node "" is the local cluster's own pod CIDRs."""


class Claim(NamedTuple):
    """One allocation CIDR held by a node of a cluster (node "" is the local cluster's own pod CIDR)."""

    cluster: str
    node: str
    prefix: Prefix

    def describe(self, local_cluster: str) -> str:
        """`10.1.0.0/24 of cluster b (node n1)`, or `... (local pod CIDR)` for the local cluster."""
        where = "local pod CIDR" if self.cluster == local_cluster and not self.node else f"node {self.node}"
        return f"{self.prefix} of cluster {self.cluster} ({where})"


def _key(version: int, start: int, length: int) -> int:
    # A claimed prefix as one int: a tuple or network per claim would cost more than the rest of the index.
    # Within one level (family and length) keys order as the start addresses do, so a level's sorted keys are
    # its networks in address order.
    return (start << 8 | length) << 1 | (version == 6)


def _prefix(key: int) -> Prefix:
    return Prefix(6 if key & 1 else 4, key >> 9, key >> 1 & 0xFF)


class _Level:
    """The claims of one address family and prefix length: their owners by key, and the keys sorted."""

    def __init__(self) -> None:
        self.owners: dict[int, tuple[Owner, ...]] = {}
        self.keys: list[int] = []

    def add(self, key: int, owner: Owner) -> None:
        owners = self.owners.get(key)
        if owners is None:
            self.owners[key] = (owner,)
            bisect.insort(self.keys, key)
        else:
            self.owners[key] = (*owners, owner)

    def remove(self, key: int, owner: Owner) -> None:
        owners = self.owners[key]
        index = owners.index(owner)
        if len(owners) > 1:
            self.owners[key] = owners[:index] + owners[index + 1 :]
        else:
            del self.owners[key]
            del self.keys[bisect.bisect_left(self.keys, key)]


class PodCIDRs:
    """Allocation CIDRs of the local cluster and of every peer's nodes, checked for overlaps across clusters.

    Two networks overlap when one contains the other. Claims are indexed per (family, prefix length), so a
    check costs one lookup per shorter length present (a containing network) and one range scan per longer
    length present (contained networks): a mesh of 25k nodes checks a node in microseconds. Overlaps within
    one cluster are not this class's concern. Claims are kept as ints: ~250 bytes a node, against ~850 with
    `ipaddress` networks and a tuple per claim.
    """

    def __init__(self, *, local_cluster: str, local_cidrs: Iterable[str] = ()) -> None:
        self.local_cluster = local_cluster
        self._levels: dict[tuple[int, int], _Level] = {}
        self._by_node: dict[Owner, tuple[int, ...]] = {}
        prefixes = []
        for text in local_cidrs:
            try:
                prefixes.append(Prefix.of(ipaddress.ip_network(text, strict=False)))
            except ValueError as exc:
                raise errors.ConfigError(f"local pod CIDR {text!r} is invalid: {exc}") from None
        self._add((local_cluster, ""), tuple(prefixes))

    def __repr__(self) -> str:
        clusters = sorted({cluster for cluster, _ in self._by_node})
        return f"<PodCIDRs nodes={len(self._by_node)} clusters={clusters}>"

    def conflict(self, cluster: str, prefixes: Iterable[Prefix]) -> str | None:
        """How the first of `prefixes` overlaps a claim of another cluster, or None if none does."""
        for prefix in prefixes:
            other = self._overlapping(cluster, prefix)
            if other is not None:
                return f"pod CIDR {prefix} of cluster {cluster} overlaps {other.describe(self.local_cluster)}"
        return None

    def claim(self, cluster: str, node: str, prefixes: Iterable[Prefix]) -> str | None:
        """Record the node's prefixes, replacing its previous claim; or return the conflict and change nothing."""
        wanted = tuple(prefixes)
        if self._by_node.get((cluster, node)) == tuple(_key(*prefix) for prefix in wanted):
            return None
        reason = self.conflict(cluster, wanted)
        if reason is not None:
            return f"{reason} (node {node})"
        self.release(cluster, node)
        self._add((cluster, node), wanted)
        return None

    def release(self, cluster: str, node: str) -> None:
        """Forget the node's claim. Idempotent."""
        owner = (cluster, node)
        for key in self._by_node.pop(owner, ()):
            prefix = _prefix(key)
            self._levels[(prefix.version, prefix.length)].remove(key, owner)

    def release_cluster(self, cluster: str) -> None:
        """Forget every claim of the cluster's nodes. Idempotent."""
        for owner, node in [key for key in self._by_node if key[0] == cluster]:
            self.release(owner, node)

    def _add(self, owner: Owner, prefixes: tuple[Prefix, ...]) -> None:
        if not prefixes:
            return
        # The owner tuple is kept once: as this key and in each level holding one of its prefixes.
        self._by_node[owner] = claimed = tuple(_key(*prefix) for prefix in prefixes)
        for prefix, key in zip(prefixes, claimed, strict=True):
            level_id = (prefix.version, prefix.length)
            level = self._levels.get(level_id)
            if level is None:
                level = self._levels[level_id] = _Level()
            level.add(key, owner)

    def _overlapping(self, cluster: str, prefix: Prefix) -> Claim | None:
        version, start, length = prefix
        bits = 32 if version == 4 else 128
        end = start | ((1 << (bits - length)) - 1)
        for (level_version, level_length), level in self._levels.items():
            if level_version != version or not level.keys:
                continue
            if level_length <= length:
                # At most one network of this length contains ours: the one our address falls in.
                shift = bits - level_length
                key = _key(version, start >> shift << shift, level_length)
                for owner in level.owners.get(key, ()):
                    if owner[0] != cluster:
                        return Claim(*owner, _prefix(key))
                continue
            # Networks of this length inside ours start within [start, end].
            index = bisect.bisect_left(level.keys, _key(version, start, level_length))
            last = _key(version, end, level_length)
            while index < len(level.keys) and level.keys[index] <= last:
                key = level.keys[index]
                for owner in level.owners[key]:
                    if owner[0] != cluster:
                        return Claim(*owner, _prefix(key))
                index += 1
        return None
