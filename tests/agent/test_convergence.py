"""Randomized: churn on two peers plus random faults, and after every round the cache equals both etcds.

Each round writes a random batch of puts, updates and deletes of every kind to each peer, then applies a
random fault to a random peer — etcd killed and restarted, SIGSTOPped for a random while, partitioned behind
its proxy (with churn and sometimes a compaction meanwhile), compacted under live watches, or nothing — and
churns again. After the round converges the agent's cache must hold exactly the peers' valid records: zero
stale, zero missing, no value out of date. The seed is fixed so a failure reproduces; set
CLUSTERMESH_CONVERGENCE_SEED to explore others.
Excludes: bad records and conflicts (their own tests).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import random

from agent import cache as mesh_cache
from agent import mesh
from clustermesh.aio import tcp_proxy
from clustermesh.keys import Kind
from tests.agent.peer_harness import (
    FAST,
    LOCAL,
    Peer,
    Published,
    converged,
    identity,
    ip_entry,
    node,
    peer_cluster,
    publish_basic,
    running_mesh,
    service,
    status_of,
)
from tests.helpers import eventually

SEED = int(os.environ.get("CLUSTERMESH_CONVERGENCE_SEED", "20240611"))
ROUNDS = 40
FAULTS = ("kill", "pause", "partition", "compact", "none")


class Churn:
    """Random changes to one peer's export, drawn from a small name space so that updates and deletes hit."""

    def __init__(self, peer: Peer, octet: int, rng: random.Random) -> None:
        self.peer = peer
        self.octet = octet
        self.rng = rng

    def _record(self, kind: Kind, slot: int) -> Published:
        peer, octet, version = self.peer, self.octet, self.rng.randrange(1000)
        if kind is Kind.NODES:
            return node(peer.name, peer.cluster_id, f"n{slot}", cidr=f"10.{octet}.{slot}.0/24",
                        ip=f"172.{octet}.0.{version % 250 + 1}")
        if kind is Kind.SERVICES:
            return service(peer.name, peer.cluster_id, f"ns{slot % 3}", f"s{slot}",
                           [f"10.{octet}.200.{(version + i) % 250 + 1}" for i in range(slot % 4 + 1)])
        base = (peer.cluster_id << 16) + 1000
        if kind is Kind.IDENTITIES:
            return identity(peer.name, base + slot, f"app{version}")
        return ip_entry(f"10.{octet}.201.{slot}", base + version % 20)

    async def step(self, count: int) -> None:
        # The last change of each (kind, slot) wins: etcd refuses a transaction naming a key twice.
        changes: dict[tuple[Kind, int], tuple[bool, Published]] = {}
        for _ in range(count):
            kind = self.rng.choice([Kind.NODES, Kind.SERVICES, Kind.IDENTITIES, Kind.IPCACHE])
            slot = self.rng.randrange(20)
            changes[(kind, slot)] = (self.rng.random() < 0.35, self._record(kind, slot))
        puts = [record for delete, record in changes.values() if not delete]
        # Several transactions, so a watch sees the batch over several revisions.
        for start in range(0, len(puts), 7):
            await self.peer.put(*puts[start : start + 7])
        await self.peer.delete(*(record for delete, record in changes.values() if delete))


async def fault(kind: str, peer: Peer, churn: Churn, rng: random.Random, agent_mesh: mesh.Mesh) -> None:
    proxy = peer.proxy
    assert proxy is not None
    if kind == "kill":
        await peer.etcd.kill()
        await asyncio.sleep(rng.uniform(0, 0.3))  # let the agent fail over to backoff, or not
        await peer.restart()
        await churn.step(rng.randrange(5, 20))
    elif kind == "pause":
        await peer.etcd.pause()
        if rng.random() < 0.5:  # sometimes long enough to be noticed, sometimes not
            await eventually(lambda: not status_of(agent_mesh, peer.name).connected, timeout=5)
        peer.etcd.resume()
        await churn.step(rng.randrange(5, 20))
    elif kind == "partition":
        proxy.set_mode(rng.choice([tcp_proxy.Mode.REJECT, tcp_proxy.Mode.BLACKHOLE]))
        await churn.step(rng.randrange(5, 30))
        if rng.random() < 0.5:
            await peer.compact()
        await churn.step(rng.randrange(5, 10))
        proxy.set_mode(tcp_proxy.Mode.FORWARD)
    elif kind == "compact":
        await churn.step(rng.randrange(5, 20))
        await peer.compact()


async def test_random_churn_and_faults_always_converge(tmp_path: pathlib.Path) -> None:
    rng = random.Random(SEED)
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(LOCAL, cache, options=FAST)
    async with (
        peer_cluster(tmp_path, "cluster-b", 2, proxied=True) as b,
        peer_cluster(tmp_path, "cluster-c", 3, proxied=True) as c,
    ):
        await publish_basic(b, cidr_base="10.40", nodes=0)
        await publish_basic(c, cidr_base="10.50", nodes=0)
        churns = {b.name: Churn(b, 20, rng), c.name: Churn(c, 30, rng)}
        agent_mesh.set_peers({b.name: b.peer_config(), c.name: c.peer_config()})
        async with running_mesh(agent_mesh):
            for round_ in range(ROUNDS):
                for churn in churns.values():
                    await churn.step(rng.randrange(10, 40))
                victim = rng.choice([b, c])
                chosen = rng.choice(FAULTS)
                await fault(chosen, victim, churns[victim.name], rng, agent_mesh)
                for churn in churns.values():
                    await churn.step(rng.randrange(0, 15))
                for peer in (b, c):
                    try:
                        await converged(cache, peer, timeout=15)
                    except AssertionError as exc:
                        raise AssertionError(f"seed {SEED} round {round_} fault {chosen} on {victim.name}") from exc
        assert sum(status_of(agent_mesh, p.name).failures for p in (b, c)) >= 1
