"""Which loopback ports a local mesh listens on: the previous run's when they are still free, else fresh ones.

Keeping ports across runs keeps every address a user has seen (the `dig` line, mesh.json, the peer files, hence
no reconnect churn) valid after a restart. A port is picked here and bound later by the daemon, so another
process can take it in between; the daemon then fails to start and says so — the window is short and the
alternative (passing bound sockets to children) is not something etcd or the daemons support.
"""

from __future__ import annotations

import dataclasses
import socket

from clustermesh.etcd import process
from clustermesh.local_mesh import layout, mesh_file

LOOPBACK = "127.0.0.1"


@dataclasses.dataclass
class ClusterPorts:
    """The TCP (and, for DNS, UDP) ports of one cluster's listeners."""

    etcd_client: int = 0
    etcd_peer: int = 0
    etcd_proxy: int = 0
    """The TCP proxy in front of etcd_client that every other client (peers' agents, the CLI) dials."""
    apiserver_grpc: int = 0
    apiserver_metrics: int = 0
    apiserver_health: int = 0
    agent_dns: dict[str, int] = dataclasses.field(default_factory=dict)
    agent_metrics: dict[str, int] = dataclasses.field(default_factory=dict)


def host_port(port: int) -> str:
    """The listen address of a loopback port, `127.0.0.1:PORT`."""
    return f"{LOOPBACK}:{port}"


def port_of(address: str) -> int:
    """The port of `host:port` or a URL ending in one; 0 when there is none."""
    _, _, port = address.rpartition(":")
    return int(port) if port.isdigit() else 0


def is_free(port: int, *, udp: bool = False) -> bool:
    """True if a listener could bind 127.0.0.1:port now (TCP, and UDP too when asked)."""
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # As the daemons bind (Go and asyncio listeners set SO_REUSEADDR): connections of the previous
                # run lingering in TIME_WAIT do not make the port busy, a listener does.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                return False
    return True


class PortPicker:
    """Hands out loopback ports for one run: a wanted port when still free, else a fresh one; never one twice."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def pick(self, wanted: int = 0, *, udp: bool = False) -> int:
        """`wanted` if non-zero and free, else a free port (TCP; TCP and UDP with udp=True)."""
        if wanted and wanted not in self._taken and is_free(wanted, udp=udp):
            self._taken.add(wanted)
            return wanted
        while True:
            port = process.free_port()
            if port not in self._taken and (not udp or is_free(port, udp=True)):
                self._taken.add(port)
                return port

    def assign(self, plan: layout.ClusterPlan, previous: mesh_file.Cluster | None) -> ClusterPorts:
        """Every port of a cluster, reusing those the previous run of the same cluster had (if any)."""
        old_agents = {agent.node: agent for agent in previous.agents} if previous is not None else {}

        def wanted(address: str | None) -> int:
            return port_of(address) if address else 0

        endpoint = previous.etcd.endpoints[0] if previous and previous.etcd.endpoints else None
        # A mesh file without `listen` predates the proxy: its endpoint was the etcd itself.
        listen = previous.etcd.listen if previous and previous.etcd.listen else None
        ports = ClusterPorts(
            etcd_client=self.pick(wanted(listen or endpoint)),
            etcd_peer=self.pick(wanted(previous.etcd.peer_url if previous else None)),
            etcd_proxy=self.pick(wanted(endpoint if listen else None)),
            apiserver_grpc=self.pick(wanted(previous.apiserver.grpc if previous else None)),
            apiserver_metrics=self.pick(wanted(previous.apiserver.metrics if previous else None)),
            apiserver_health=self.pick(wanted(previous.apiserver.health if previous else None)),
        )
        for node in plan.nodes:
            before = old_agents.get(node.name)
            ports.agent_dns[node.name] = self.pick(port_of(before.dns) if before else 0, udp=True)
            ports.agent_metrics[node.name] = self.pick(port_of(before.metrics) if before else 0)
        return ports
