"""The mesh as its agents see it: every agent's GetStatus over its gRPC API, and whether the mesh is synced.

A local mesh is synced when every agent answers and reports every other cluster as a peer that is ready
(connected, configuration retrieved, every kind synced). This is what `clustermesh up` waits for before it
says the mesh is ready, what its live table shows, and what tests and drills poll.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

import grpc

from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.local_mesh import mesh_file

DEFAULT_TIMEOUT = 2.0


@dataclasses.dataclass(frozen=True)
class AgentReport:
    """One agent's answer to GetStatus, or why there is none."""

    cluster: str
    node: str
    address: str
    expected_peers: tuple[str, ...]
    status: agent_pb2.AgentStatus | None = None
    error: str = ""

    @property
    def peers(self) -> dict[str, agent_pb2.PeerStatus]:
        """The agent's peers by name (empty without an answer)."""
        return {peer.name: peer for peer in self.status.peers} if self.status is not None else {}

    @property
    def ready_peers(self) -> int:
        """How many of the expected peers are ready."""
        peers = self.peers
        return sum(1 for name in self.expected_peers if name in peers and peers[name].ready)

    @property
    def synced(self) -> bool:
        """True when the agent answered and every expected peer is ready."""
        return self.status is not None and self.ready_peers == len(self.expected_peers)

    def waiting_for(self) -> str:
        """One line saying what this agent still lacks (empty when synced)."""
        if self.status is None:
            return f"{self.node}: no answer ({self.error})"
        peers = self.peers
        missing = []
        for name in self.expected_peers:
            peer = peers.get(name)
            if peer is None:
                missing.append(f"{name}: not configured")
            elif not peer.ready:
                detail = peer.refused_reason or peer.last_error or peer.status or "not ready"
                missing.append(f"{name}: {detail}")
        return f"{self.node}: " + "; ".join(missing) if missing else ""


async def read_agent(
    cluster: str, node: str, address: str, expected_peers: Iterable[str], *, timeout: float = DEFAULT_TIMEOUT
) -> AgentReport:
    """GetStatus of the agent at address (`unix:PATH`, plaintext); never raises for an agent that is down."""
    expected = tuple(expected_peers)
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            status = await agent_pb2_grpc.AgentStub(channel).GetStatus(agent_pb2.GetStatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return AgentReport(cluster, node, address, expected, error=f"{exc.code().name}: {exc.details()}")
    return AgentReport(cluster, node, address, expected, status=status)


async def read_mesh(mesh: mesh_file.MeshFile, *, timeout: float = DEFAULT_TIMEOUT) -> list[AgentReport]:
    """Every agent's report, in mesh order; each agent is expected to have every other cluster as a peer."""
    names = [cluster.name for cluster in mesh.clusters]
    calls = [
        read_agent(cluster.name, agent.node, agent.grpc, [name for name in names if name != cluster.name],
                   timeout=timeout)
        for cluster in mesh.clusters
        for agent in cluster.agents
    ]
    return list(await asyncio.gather(*calls))


def synced(reports: Iterable[AgentReport]) -> bool:
    """True when every report is synced."""
    return all(report.synced for report in reports)
