"""Where a local mesh keeps everything under its directory, and how its clusters and nodes are numbered.

    DIR/
      mesh.json                          the running mesh, for scripts and drills (clustermesh.local_mesh.mesh_file)
      up.lock                            held by the `clustermesh up` that runs the mesh
      <cluster>/                         cluster-a, cluster-b, ... (cluster ids 1, 2, ...)
        certs/                           CA, server/admin/remote/local pairs, cluster.secret
        etcd/                            etcd's data (data/) and log (etcd.log); reused by the next `up`
        manifests/                       the cluster's "Kubernetes API": nodes.yaml, my-app.yaml, ...
        logs/                            apiserver.log, <node>.log, etcd.log (a link to etcd/etcd.log)
        agents/<node>/mesh-config/       the peer files `clustermesh connect` writes (Cilium's format)
        agents/<node>/agent.sock         the agent's gRPC API
        agents/<node>/wireguard.key      the node's WireGuard private key (its public key is on the Node)

Numbering is deterministic, so a second `up` on the same directory plans the same mesh: cluster i (from 1)
has id i, pod CIDR 10.i.0.0/16 and its nodes n (from 1) the pod CIDR 10.i.n.0/24 and the InternalIP
127.0.i.n, a loopback address of its own. Nothing here touches the file system except creating directories.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import string

from clustermesh import identity
from clustermesh.errors import ConfigError

DEFAULT_DIR = pathlib.Path(".clustermesh")
MESH_FILE = "mesh.json"
LOCK_FILE = "up.lock"

MAX_CLUSTERS = 250
"""Cluster ids must fit the second octet of the pod CIDRs (10.<id>.0.0/16) and the default id space."""
MAX_NODES = 250
"""Node numbers must fit the third octet of the node pod CIDRs (10.<id>.<n>.0/24)."""

# A unix socket path is at most 107 bytes on Linux (sun_path is 108 with the terminating NUL).
_UNIX_PATH_MAX = 107


def cluster_name(index: int) -> str:
    """The name of the index-th cluster (from 1): cluster-a .. cluster-z, cluster-aa, cluster-ab, ..."""
    if index < 1:
        raise ValueError(f"cluster index starts at 1, got {index}")
    letters = ""
    while index:
        index, rest = divmod(index - 1, 26)
        letters = string.ascii_lowercase[rest] + letters
    return f"cluster-{letters}"


def node_name(cluster: str, index: int) -> str:
    """The name of the index-th node (from 1) of cluster, e.g. cluster-a-node-1."""
    return f"{cluster}-node-{index}"


@dataclasses.dataclass(frozen=True)
class AgentPaths:
    """The files of one node's agent."""

    dir: pathlib.Path
    log: pathlib.Path

    @property
    def mesh_config(self) -> pathlib.Path:
        return self.dir / "mesh-config"

    @property
    def socket(self) -> pathlib.Path:
        return self.dir / "agent.sock"

    @property
    def wireguard_key(self) -> pathlib.Path:
        return self.dir / "wireguard.key"


@dataclasses.dataclass(frozen=True)
class ClusterPaths:
    """The directories and files of one cluster."""

    root: pathlib.Path

    @property
    def certs(self) -> pathlib.Path:
        return self.root / "certs"

    @property
    def etcd(self) -> pathlib.Path:
        return self.root / "etcd"

    @property
    def manifests(self) -> pathlib.Path:
        return self.root / "manifests"

    @property
    def logs(self) -> pathlib.Path:
        return self.root / "logs"

    @property
    def apiserver_log(self) -> pathlib.Path:
        return self.logs / "apiserver.log"

    @property
    def agents(self) -> pathlib.Path:
        return self.root / "agents"

    def agent(self, node: str) -> AgentPaths:
        """The paths of the agent on `node`."""
        return AgentPaths(dir=self.agents / node, log=self.logs / f"{node}.log")


@dataclasses.dataclass(frozen=True)
class NodePlan:
    """One node of a local cluster: its name, address and pod CIDR."""

    name: str
    index: int
    internal_ip: str
    pod_cidr: str


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """One cluster of a local mesh: identity, address plan and paths."""

    name: str
    cluster_id: int
    pod_cidr: str
    service_cidr: str
    nodes: tuple[NodePlan, ...]
    paths: ClusterPaths
    max_connected_clusters: int = int(identity.ClusterIDMode.DEFAULT)

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        return (self.pod_cidr,)

    def service_ip(self, index: int) -> str:
        """The index-th ClusterIP (from 10) of the cluster's service CIDR."""
        return str(ipaddress.ip_network(self.service_cidr)[index])


def plan(directory: pathlib.Path, *, clusters: int, nodes: int) -> tuple[ClusterPlan, ...]:
    """The deterministic plan of a mesh of `clusters` clusters with `nodes` nodes each, rooted at directory.

    ConfigError for counts out of range.
    """
    if not 1 <= clusters <= MAX_CLUSTERS:
        raise ConfigError(f"--clusters: expected 1..{MAX_CLUSTERS}, got {clusters}")
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError(f"--nodes: expected 1..{MAX_NODES}, got {nodes}")
    root = directory.absolute()
    result = []
    for cluster_index in range(1, clusters + 1):
        name = cluster_name(cluster_index)
        identity.validate_cluster(name, cluster_index)
        paths = ClusterPaths(root / name)
        node_plans = tuple(
            NodePlan(
                name=node_name(name, node_index),
                index=node_index,
                internal_ip=f"127.0.{cluster_index}.{node_index}",
                pod_cidr=f"10.{cluster_index}.{node_index}.0/24",
            )
            for node_index in range(1, nodes + 1)
        )
        result.append(
            ClusterPlan(
                name=name,
                cluster_id=cluster_index,
                pod_cidr=f"10.{cluster_index}.0.0/16",
                # Service CIDRs may overlap between clusters (ClusterIPs are cluster-local); distinct ones
                # keep `clustermesh services` readable.
                service_cidr=f"10.96.{cluster_index}.0/24",
                nodes=node_plans,
                paths=paths,
            )
        )
    return tuple(result)


def check_socket_paths(plans: tuple[ClusterPlan, ...]) -> None:
    """ConfigError if an agent's unix socket path would not fit in sun_path (the mesh directory is too deep)."""
    longest = max((plan.paths.agent(node.name).socket for plan in plans for node in plan.nodes),
                  key=lambda path: len(str(path).encode()))
    if len(str(longest).encode()) > _UNIX_PATH_MAX:
        raise ConfigError(
            f"the agents' unix sockets (e.g. {longest}) would be longer than {_UNIX_PATH_MAX} bytes: "
            "choose a shorter --dir"
        )


def make_directories(cluster: ClusterPlan) -> None:
    """Create the directories of a cluster and of its agents (private: they hold keys). Idempotent."""
    paths = cluster.paths
    for directory in (paths.root, paths.certs, paths.etcd, paths.manifests, paths.logs, paths.agents):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for node in cluster.nodes:
        agent = paths.agent(node.name)
        agent.dir.mkdir(mode=0o700, exist_ok=True)
        agent.mesh_config.mkdir(mode=0o700, exist_ok=True)
