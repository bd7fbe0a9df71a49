"""The mesh a drill acts on: its clusters, their etcds and agents, and where to send faults, from a mesh file.

The mesh file is mesh.json (clustermesh.local_mesh.mesh_file): the one `clustermesh up` writes, or one an
operator writes by hand for a real deployment with the same keys. A drill reads each cluster's etcd with the
admin pair the file names, through `etcd.listen` when given (the etcd itself, also while its proxy is cut) and
`etcd.endpoints` otherwise; it reaches agents at `grpc` (unix socket or plaintext host:port) and `dns`; it acts
through `control` (clustermesh.local_mesh.control) and edits `manifests` for churn and backends-down.

Only reads the file; checking that a scenario has what it needs (a control endpoint, manifests) is the
scenario's business.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib

from clustermesh import tls
from clustermesh.errors import ConfigError
from clustermesh.etcd import client as etcd_client
from clustermesh.local_mesh import mesh_file

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The drill's own reads of the truth: quick to fail, so a dead etcd never stalls a comparison for long.
_ETCD_REQUEST_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class AgentTarget:
    """One agent: the cluster it runs in, its node, its gRPC API and DNS addresses."""

    cluster: str
    node: str
    grpc: str
    dns: str


@dataclasses.dataclass(frozen=True)
class ClusterTarget:
    """One cluster of the mesh."""

    name: str
    cluster_id: int
    max_connected_clusters: int
    pod_cidrs: tuple[Network, ...]
    etcd: etcd_client.EtcdConfig
    """Admin access to the etcd itself (bypassing a drill proxy when the file names one)."""
    manifests: pathlib.Path | None
    agents: tuple[AgentTarget, ...]

    def owns(self, ip: str) -> bool:
        """True if ip lies in one of the cluster's pod CIDRs."""
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self.pod_cidrs)


@dataclasses.dataclass(frozen=True)
class Target:
    """The whole mesh, as the file describes it."""

    directory: pathlib.Path
    clusters: tuple[ClusterTarget, ...]
    control: str
    agent_options: mesh_file.AgentOptions
    mesh: mesh_file.MeshFile

    def cluster(self, name: str) -> ClusterTarget:
        """The cluster called name; ConfigError listing the known ones otherwise."""
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise ConfigError(f"no cluster {name!r} in the mesh (clusters: {', '.join(c.name for c in self.clusters)})")

    @property
    def agents(self) -> tuple[AgentTarget, ...]:
        """Every agent, cluster by cluster."""
        return tuple(agent for cluster in self.clusters for agent in cluster.agents)

    def peers_of(self, cluster: str) -> tuple[str, ...]:
        """The clusters an agent of `cluster` follows: every other one."""
        return tuple(c.name for c in self.clusters if c.name != cluster)

    def cluster_of(self, ip: str) -> str | None:
        """The cluster whose pod CIDRs hold ip, or None."""
        for cluster in self.clusters:
            if cluster.owns(ip):
                return cluster.name
        return None


def load(directory: pathlib.Path) -> Target:
    """The mesh described by DIR/mesh.json; ConfigError if it is missing, malformed, stopped or has < 2 clusters."""
    mesh = mesh_file.load(directory)
    if mesh.state != "running":
        raise ConfigError(f"the mesh in {directory} is {mesh.state}: start it with `clustermesh up --dir {directory}`")
    if len(mesh.clusters) < 2:
        raise ConfigError(f"the mesh in {directory} has {len(mesh.clusters)} cluster(s): a drill needs at least 2")
    clusters = []
    for cluster in mesh.clusters:
        files = tls.TLSFiles(ca=pathlib.Path(cluster.etcd.ca), cert=pathlib.Path(cluster.etcd.cert),
                             key=pathlib.Path(cluster.etcd.key))
        endpoints = (cluster.etcd.listen,) if cluster.etcd.listen else tuple(cluster.etcd.endpoints)
        try:
            pod_cidrs = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cluster.pod_cidrs)
        except ValueError as exc:
            raise ConfigError(f"{directory}/mesh.json: cluster {cluster.name}: {exc}") from None
        clusters.append(ClusterTarget(
            name=cluster.name,
            cluster_id=cluster.id,
            max_connected_clusters=cluster.max_connected_clusters,
            pod_cidrs=pod_cidrs,
            etcd=etcd_client.EtcdConfig(endpoints=endpoints, tls=files, request_timeout=_ETCD_REQUEST_TIMEOUT),
            manifests=pathlib.Path(cluster.manifests) if cluster.manifests else None,
            agents=tuple(AgentTarget(cluster=cluster.name, node=a.node, grpc=a.grpc, dns=a.dns)
                         for a in cluster.agents),
        ))
    return Target(directory=directory.absolute(), clusters=tuple(clusters), control=mesh.control,
                  agent_options=mesh.agent_options, mesh=mesh)
