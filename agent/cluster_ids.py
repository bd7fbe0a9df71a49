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


class Claim(NamedTuple):
    """One allocation CIDR held by a node of a cluster (node "" is the local cluster's own pod CIDR)."""

    cluster: str
    node: str
    network: Network

    def describe(self, local_cluster: str) -> str:
        """`10.1.0.0/24 of cluster b (node n1)`, or `... (local pod CIDR)` for the local cluster."""
        where = "local pod CIDR" if self.cluster == local_cluster and not self.node else f"node {self.node}"
        return f"{self.network} of cluster {self.cluster} ({where})"


class _Level:
    """The claims of one address family and prefix length, by network address, with the addresses sorted."""

    def __init__(self) -> None:
        self.by_start: dict[int, list[Claim]] = {}
        self.starts: list[int] = []

    def add(self, start: int, claim: Claim) -> None:
        claims = self.by_start.get(start)
        if claims is None:
            self.by_start[start] = [claim]
            bisect.insort(self.starts, start)
        else:
            claims.append(claim)

    def remove(self, start: int, claim: Claim) -> None:
        claims = self.by_start[start]
        claims.remove(claim)
        if not claims:
            del self.by_start[start]
            del self.starts[bisect.bisect_left(self.starts, start)]


class PodCIDRs:
    """Allocation CIDRs of the local cluster and of every peer's nodes, checked for overlaps across clusters.

    Two networks overlap when one contains the other. Claims are indexed per (family, prefix length), so a
    check costs one lookup per shorter length present (a containing network) and one range scan per longer
    length present (contained networks): a mesh of 25k nodes checks a node in microseconds. Overlaps within
    one cluster are not this class's concern.
    """

    def __init__(self, *, local_cluster: str, local_cidrs: Iterable[str] = ()) -> None:
        self.local_cluster = local_cluster
        self._levels: dict[tuple[int, int], _Level] = {}
        self._by_node: dict[tuple[str, str], tuple[Network, ...]] = {}
        networks = []
        for text in local_cidrs:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise errors.ConfigError(f"local pod CIDR {text!r} is invalid: {exc}") from None
        self._add(local_cluster, "", tuple(networks))

    def __repr__(self) -> str:
        clusters = sorted({cluster for cluster, _ in self._by_node})
        return f"<PodCIDRs nodes={len(self._by_node)} clusters={clusters}>"

    def conflict(self, cluster: str, networks: Iterable[Network]) -> str | None:
        """How the first of `networks` overlaps a claim of another cluster, or None if none does."""
        for network in networks:
            other = self._overlapping(cluster, network)
            if other is not None:
                return (
                    f"pod CIDR {network} of cluster {cluster} overlaps {other.describe(self.local_cluster)}"
                )
        return None

    def claim(self, cluster: str, node: str, networks: Iterable[Network]) -> str | None:
        """Record the node's networks, replacing its previous claim; or return the conflict and change nothing."""
        wanted = tuple(networks)
        if self._by_node.get((cluster, node)) == wanted:
            return None
        reason = self.conflict(cluster, wanted)
        if reason is not None:
            return f"{reason} (node {node})"
        self.release(cluster, node)
        self._add(cluster, node, wanted)
        return None

    def release(self, cluster: str, node: str) -> None:
        """Forget the node's claim. Idempotent."""
        for network in self._by_node.pop((cluster, node), ()):
            self._level(network).remove(int(network.network_address), Claim(cluster, node, network))

    def release_cluster(self, cluster: str) -> None:
        """Forget every claim of the cluster's nodes. Idempotent."""
        for owner, node in [key for key in self._by_node if key[0] == cluster]:
            self.release(owner, node)

    def _add(self, cluster: str, node: str, networks: tuple[Network, ...]) -> None:
        if not networks:
            return
        self._by_node[(cluster, node)] = networks
        for network in networks:
            self._level(network).add(int(network.network_address), Claim(cluster, node, network))

    def _level(self, network: Network) -> _Level:
        key = (network.version, network.prefixlen)
        level = self._levels.get(key)
        if level is None:
            level = self._levels[key] = _Level()
        return level

    def _overlapping(self, cluster: str, network: Network) -> Claim | None:
        bits = network.max_prefixlen
        start = int(network.network_address)
        end = int(network.broadcast_address)
        for (version, length), level in self._levels.items():
            if version != network.version or not level.starts:
                continue
            if length <= network.prefixlen:
                # At most one network of this length contains ours: the one our address falls in.
                shift = bits - length
                for claim in level.by_start.get(start >> shift << shift, ()):
                    if claim.cluster != cluster:
                        return claim
                continue
            # Networks of this length inside ours start within [start, end].
            index = bisect.bisect_left(level.starts, start)
            while index < len(level.starts) and level.starts[index] <= end:
                for claim in level.by_start[level.starts[index]]:
                    if claim.cluster != cluster:
                        return claim
                index += 1
        return None
