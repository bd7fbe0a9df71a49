"""A whole mesh on one machine (`clustermesh up`): per cluster a real etcd, an apiserver and agents.

    layout      where everything lives under DIR, and how clusters and nodes are numbered
    manifests   the Kubernetes objects of each cluster (nodes, the example global service my-app)
    ports       which loopback ports it listens on (the previous run's, when free)
    ownership   one `up` per directory: the lock, and the leftovers of a killed `up`
    daemon      one apiserver or agent as a child process (spawn, readiness, stop)
    probes      readiness probes (gRPC health, HTTP GET)
    status      the agents' view of the mesh over their gRPC API, and "synced"
    mesh_file   DIR/mesh.json, the contract with scripts and drills
    control     DIR/control.sock: how drills in other processes break and heal what `up` owns
    mesh        LocalMesh: start everything in order, keep it running, stop it in order

Everything other packages need is re-exported here.
"""

from clustermesh.local_mesh.control import ControlClient, ControlError
from clustermesh.local_mesh.daemon import Daemon, DaemonFailed
from clustermesh.local_mesh.layout import DEFAULT_DIR, ClusterPlan, NodePlan, plan
from clustermesh.local_mesh.mesh import (
    AgentOptions,
    ApiserverOptions,
    Config,
    Example,
    LocalMesh,
    NotSynced,
    RunningCluster,
)
from clustermesh.local_mesh.mesh_file import MeshFile
from clustermesh.local_mesh.mesh_file import load as load_mesh_file
from clustermesh.local_mesh.status import AgentReport, read_mesh, synced

__all__ = [
    "DEFAULT_DIR",
    "AgentOptions",
    "AgentReport",
    "ApiserverOptions",
    "ClusterPlan",
    "Config",
    "ControlClient",
    "ControlError",
    "Daemon",
    "DaemonFailed",
    "Example",
    "LocalMesh",
    "MeshFile",
    "NodePlan",
    "NotSynced",
    "RunningCluster",
    "load_mesh_file",
    "plan",
    "read_mesh",
    "synced",
]
