"""Peers that must be refused: a cluster ID that is invalid or taken, a misnamed peer file, another
maxConnectedClusters, pod CIDRs overlapping the local cluster's or another peer's.

Covers: ClusterIDs and PodCIDRs as bookkeeping (unit), a node's pod networks as claimed (the same networks
CIDR.network() gives, built faster, kept as integers), then real peers, each with its own etcd, refused with
the reason in statuses() (what `clustermesh status` shows), drained, retried, and accepted once the conflict
is gone. Excludes: record-level validation (test_peer_observer.py).
"""

from __future__ import annotations

import ipaddress
import pathlib

import hypothesis
import pytest
from hypothesis import strategies as st

from agent import cache as mesh_cache
from agent import cluster_ids, mesh, remote_cluster
from clustermesh import records
from clustermesh.keys import Kind
from tests.agent.peer_harness import (
    FAST,
    LOCAL,
    converged,
    node,
    peer_cluster,
    publish_basic,
    running_mesh,
    status_of,
)
from tests.helpers import eventually


def net(text: str) -> cluster_ids.Prefix:
    return cluster_ids.Prefix.of(ipaddress.ip_network(text))


def test_cluster_ids_reservation_rules() -> None:
    ids = cluster_ids.ClusterIDs(local_cluster="cluster-a", local_id=1, max_clusters=255)
    ids.reserve("cluster-b", 2)
    ids.reserve("cluster-b", 2)  # idempotent
    for cluster_id, message in [
        (0, "clusterID 0 is reserved"),
        (256, "out of range: the mesh allows 1..255"),
        (1, "assigned to the local cluster cluster-a"),
        (2, "already used by cluster cluster-b"),
    ]:
        with pytest.raises(cluster_ids.Conflict, match=message):
            ids.reserve("cluster-c", cluster_id)
    with pytest.raises(ValueError, match="release it first"):
        ids.reserve("cluster-b", 3)
    ids.release("cluster-b")
    ids.reserve("cluster-c", 2)
    assert ids.holder(2) == "cluster-c"


def test_pod_cidr_overlaps_name_both_clusters_and_cidrs() -> None:
    cidrs = cluster_ids.PodCIDRs(local_cluster="cluster-a", local_cidrs=["10.1.0.0/16", "fd00:1::/48"])
    assert cidrs.claim("cluster-b", "n1", [net("10.2.0.0/24"), net("fd00:2::/64")]) is None
    # Contained in the local /16, containing a peer's /24, equal to it, and IPv6.
    assert cidrs.conflict("cluster-c", [net("10.1.7.0/24")]) == (
        "pod CIDR 10.1.7.0/24 of cluster cluster-c overlaps 10.1.0.0/16 of cluster cluster-a (local pod CIDR)"
    )
    assert cidrs.conflict("cluster-c", [net("10.2.0.0/16")]) == (
        "pod CIDR 10.2.0.0/16 of cluster cluster-c overlaps 10.2.0.0/24 of cluster cluster-b (node n1)"
    )
    assert "10.2.0.0/24 of cluster cluster-b" in (cidrs.claim("cluster-c", "m1", [net("10.2.0.0/24")]) or "")
    assert "fd00:1::/48 of cluster cluster-a" in (cidrs.conflict("cluster-c", [net("fd00:1:0:5::/64")]) or "")
    # Same cluster never conflicts with itself; disjoint ranges never conflict.
    assert cidrs.claim("cluster-b", "n2", [net("10.2.0.128/25")]) is None
    assert cidrs.conflict("cluster-c", [net("10.3.0.0/24"), net("10.0.255.0/24"), net("fd00:3::/64")]) is None
    # A replaced claim frees the old range; releasing the cluster frees everything.
    assert cidrs.claim("cluster-b", "n1", [net("10.4.0.0/24")]) is None
    assert cidrs.conflict("cluster-c", [net("10.2.0.0/24")]) is not None  # n2 still holds 10.2.0.128/25
    assert cidrs.conflict("cluster-c", [net("10.2.0.0/25")]) is None
    cidrs.release_cluster("cluster-b")
    assert cidrs.conflict("cluster-c", [net("10.2.0.0/16"), net("10.4.0.0/24")]) is None


NETWORKS = st.one_of(
    st.builds(lambda address, length: ipaddress.ip_network((address, length), strict=False),
              st.integers(0x0A000000, 0x0A03FFFF), st.integers(12, 32)),
    st.builds(lambda address, length: ipaddress.ip_network((address << 96, length), strict=False),
              st.integers(0xFD000000, 0xFD03FFFF), st.integers(4, 128)),
)
CLAIMS = st.lists(
    st.tuples(st.sampled_from(["cluster-b", "cluster-c"]), st.sampled_from(["n1", "n2"]),
              st.lists(NETWORKS, max_size=3)),
    max_size=12,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(claims=CLAIMS, querier=st.sampled_from(["cluster-b", "cluster-c", "cluster-d"]),
                  queries=st.lists(NETWORKS, max_size=3))
def test_pod_cidr_checks_agree_with_pairwise_overlaps(
    claims: list[tuple[str, str, list[cluster_ids.Network]]], querier: str, queries: list[cluster_ids.Network]
) -> None:
    # A model: every held network, compared with every other by ipaddress; claims replace, conflicts change nothing.
    cidrs = cluster_ids.PodCIDRs(local_cluster="cluster-a", local_cidrs=["10.1.0.0/16"])
    held: dict[tuple[str, str], list[cluster_ids.Network]] = {("cluster-a", ""): [ipaddress.ip_network("10.1.0.0/16")]}

    def overlapping(cluster: str, network: cluster_ids.Network) -> list[str]:
        where = {("cluster-a", ""): "local pod CIDR"}
        return [
            f"{other} of cluster {owner} ({where.get((owner, node), f'node {node}')})"
            for (owner, node), networks in held.items() if owner != cluster
            for other in networks if other.version == network.version and other.overlaps(network)
        ]

    def check(cluster: str, networks: list[cluster_ids.Network], reason: str | None, suffix: str = "") -> bool:
        first = next((n for n in networks if overlapping(cluster, n)), None)
        if first is None:
            assert reason is None
            return True
        assert reason is not None
        named = reason.removeprefix(f"pod CIDR {first} of cluster {cluster} overlaps ").removesuffix(suffix)
        assert named in overlapping(cluster, first), reason
        return False

    for cluster, name, networks in claims:
        reason = cidrs.claim(cluster, name, [cluster_ids.Prefix.of(n) for n in networks])
        if check(cluster, networks, reason, f" (node {name})"):
            held[(cluster, name)] = networks
    check(querier, queries, cidrs.conflict(querier, [cluster_ids.Prefix.of(n) for n in queries]))
    for cluster in ("cluster-b", "cluster-c"):
        cidrs.release_cluster(cluster)
    held = {("cluster-a", ""): held[("cluster-a", "")]}
    check(querier, queries, cidrs.conflict(querier, [cluster_ids.Prefix.of(n) for n in queries]))


def make_mesh(**local: object) -> tuple[mesh.Mesh, mesh_cache.MeshCache]:
    cache = mesh_cache.MeshCache()
    return mesh.Mesh(mesh.LocalCluster(**{**LOCAL.__dict__, **local}), cache, options=FAST), cache


async def refused(agent_mesh: mesh.Mesh, name: str, reason: str) -> None:
    def check() -> bool:
        status = status_of(agent_mesh, name)
        assert reason in status.refused_reason, status
        assert status.status.startswith("refused: ") and not status.ready
        return True

    await eventually(check, timeout=10, description=f"{name} refused: {reason}")



@pytest.mark.parametrize("cidr", [
    records.CIDR.parse("10.2.0.0/24"), records.CIDR("10.2.0.77", bytes([255, 255, 255, 192])),
    records.CIDR.parse("fd00:2::/96"), records.CIDR("fe80::1%eth0", bytes([255] * 8 + [0] * 8)),
    records.CIDR.parse("0.0.0.0/0"),
], ids=str)
def test_pod_prefixes_are_what_cidr_network_gives(cidr: records.CIDR) -> None:
    prefixes = remote_cluster._pod_prefixes(records.Node(name="n", ipv4_alloc_cidr=cidr))
    assert prefixes == (cluster_ids.Prefix.of(cidr.network()),)
    assert str(prefixes[0]) == str(cidr.network())

async def test_local_id_zero_id_and_max_clusters_mismatch_are_refused(tmp_path: pathlib.Path) -> None:
    agent_mesh, cache = make_mesh()
    async with (
        peer_cluster(tmp_path, "cluster-b", 1) as b,
        peer_cluster(tmp_path, "cluster-c", 0) as c,
        peer_cluster(tmp_path, "cluster-d", 4) as d,
    ):
        await publish_basic(b, cidr_base="10.20")
        await publish_basic(c, cidr_base="10.30")
        await publish_basic(d, cidr_base="10.40")
        await d.publish_config(max_connected_clusters=511)
        agent_mesh.set_peers({p.name: p.peer_config() for p in (b, c, d)})
        async with running_mesh(agent_mesh):
            await refused(agent_mesh, "cluster-b", "clusterID 1 is assigned to the local cluster cluster-a")
            await refused(agent_mesh, "cluster-c", "invalid cluster config: ClusterID 0 is reserved")
            await refused(agent_mesh, "cluster-d", "mismatched MaxConnectedClusters; local=255, remote=511")
            assert all(cache.count(name, kind) == 0 for name in ("cluster-b", "cluster-c", "cluster-d")
                       for kind in Kind)
            # Refusals are retried: a fixed config is accepted without touching the mesh config.
            await d.publish_config()
            await eventually(lambda: status_of(agent_mesh, "cluster-d").ready, timeout=10)
            assert status_of(agent_mesh, "cluster-d").refused_reason == ""
            await converged(cache, d)


async def test_duplicate_id_is_refused_until_the_holder_leaves(tmp_path: pathlib.Path) -> None:
    agent_mesh, cache = make_mesh()
    async with peer_cluster(tmp_path, "cluster-b", 2) as b, peer_cluster(tmp_path, "cluster-c", 2) as c:
        await publish_basic(b, cidr_base="10.20")
        await publish_basic(c, cidr_base="10.30")
        agent_mesh.set_peers({"cluster-b": b.peer_config()})
        async with running_mesh(agent_mesh):
            await converged(cache, b)
            agent_mesh.set_peers({"cluster-b": b.peer_config(), "cluster-c": c.peer_config()})
            await refused(agent_mesh, "cluster-c", "clusterID 2 is already used by cluster cluster-b")
            assert status_of(agent_mesh, "cluster-c").cluster_id == 2
            assert status_of(agent_mesh, "cluster-b").ready
            agent_mesh.set_peers({"cluster-c": c.peer_config()})
            await eventually(lambda: status_of(agent_mesh, "cluster-c").ready, timeout=10)
            await converged(cache, c)
            assert all(cache.count("cluster-b", kind) == 0 for kind in Kind)


async def test_misnamed_peer_file_is_refused_as_a_name_mismatch(tmp_path: pathlib.Path) -> None:
    agent_mesh, cache = make_mesh()
    async with peer_cluster(tmp_path, "cluster-b", 2) as b:
        await publish_basic(b)
        agent_mesh.set_peers({"cluster-x": b.peer_config(name="cluster-x")})
        async with running_mesh(agent_mesh):
            await refused(
                agent_mesh, "cluster-x",
                f"cluster name mismatch: the etcd at {b.endpoint} publishes the cluster config of cluster-b, "
                "not of cluster-x",
            )
            assert cache.peers() == []


async def test_overlapping_pod_cidrs_are_refused_and_drained(tmp_path: pathlib.Path) -> None:
    agent_mesh, cache = make_mesh()
    async with (
        peer_cluster(tmp_path, "cluster-b", 2) as b,
        peer_cluster(tmp_path, "cluster-c", 3) as c,
        peer_cluster(tmp_path, "cluster-d", 4) as d,
    ):
        await publish_basic(b, cidr_base="10.20")
        await publish_basic(c, cidr_base="10.1")  # inside the local 10.1.0.0/16
        await publish_basic(d, cidr_base="10.40")
        agent_mesh.set_peers({p.name: p.peer_config() for p in (b, c, d)})
        async with running_mesh(agent_mesh):
            await refused(
                agent_mesh, "cluster-c",
                "pod CIDR 10.1.0.0/24 of cluster cluster-c overlaps 10.1.0.0/16 of cluster cluster-a "
                "(local pod CIDR) (node node-0)",
            )
            await converged(cache, b)
            await converged(cache, d)
            # A node appearing later that overlaps another peer's: that peer is refused and drained at once.
            await d.put(node("cluster-d", 4, "late", cidr="10.20.1.0/24"))
            await refused(
                agent_mesh, "cluster-d",
                "pod CIDR 10.20.1.0/24 of cluster cluster-d overlaps 10.20.1.0/24 of cluster cluster-b (node node-1)",
            )
            assert all(cache.count("cluster-d", kind) == 0 for kind in Kind)
            assert status_of(agent_mesh, "cluster-b").ready
            # Fixed at the source: accepted again on the next retry, with all its entries.
            await d.delete(node("cluster-d", 4, "late"))
            await eventually(lambda: status_of(agent_mesh, "cluster-d").ready, timeout=10)
            await converged(cache, d)
