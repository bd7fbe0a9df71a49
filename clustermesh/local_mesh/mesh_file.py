"""`DIR/mesh.json`: what a running local mesh is made of, for scripts, drills and the next `up`.

    {"version": 1, "dir": ..., "state": "running" | "stopped", "pid": <pid of `clustermesh up`>,
     "control": "unix:DIR/control.sock",
     "agent_options": {"keepalive_interval", "keepalive_timeout", "cache_ttl"},
     "apiserver_options": {"heartbeat_interval"},
     "clusters": [{"name", "id", "max_connected_clusters", "pod_cidrs", "dir", "certs", "secret", "manifests",
                   "etcd": {"endpoints", "listen", "ca", "cert", "key", "pid", "peer_url", "data", "log"},
                   "apiserver": {"grpc", "metrics", "health", "pid", "log"},
                   "agents": [{"node", "ip", "grpc", "dns", "metrics", "pid", "mesh_config", "log"}]}]}

Addresses are `host:port` or `unix:/path`; `etcd.cert`/`etcd.key` are the admin pair (full access), and every
path is absolute. `etcd.endpoints` is what clients and the peers' agents dial; in a local mesh that is a TCP
proxy in front of the etcd, which drills can cut (a partition), while `etcd.listen` is the etcd itself (what
the cluster's own apiserver dials, and what a drill reads the truth from while the proxy is cut); `listen` is
empty when the endpoints are the etcd itself. `control` is the endpoint drills act through
(clustermesh.local_mesh.control); empty when there is none. `agent_options` and `apiserver_options` are the
daemon flags `up` passed, null meaning the daemon's default. The file is rewritten whole (temp file + rename)
whenever a pid changes, and kept after the mesh stops with `"state": "stopped"` and the last pids, so a script
can check that they are gone; the next `up` reads it to reuse the ports. Readers must ignore keys they do not
know; writers only ever add keys.
"""

# STABLE FILE FORMAT: scripts, drills and documentation read these key names.

from __future__ import annotations

import pathlib
from typing import Literal

import msgspec

from clustermesh import certs
from clustermesh.errors import ConfigError
from clustermesh.local_mesh import layout

VERSION = 1

State = Literal["running", "stopped"]


class Etcd(msgspec.Struct, kw_only=True):
    """A cluster's etcd: client endpoints, the admin credentials, and the process."""

    endpoints: list[str]
    listen: str = ""
    ca: str
    cert: str
    key: str
    pid: int | None = None
    peer_url: str = ""
    data: str = ""
    log: str = ""


class Apiserver(msgspec.Struct, kw_only=True):
    """A cluster's apiserver: its listeners and process."""

    grpc: str
    metrics: str
    health: str = ""
    pid: int | None = None
    log: str = ""


class Agent(msgspec.Struct, kw_only=True):
    """One node's agent: gRPC API, DNS and metrics addresses, and the process."""

    node: str
    grpc: str
    dns: str
    metrics: str
    pid: int | None = None
    ip: str = ""
    mesh_config: str = ""
    log: str = ""


class Cluster(msgspec.Struct, kw_only=True):
    """One cluster of the mesh."""

    name: str
    id: int
    max_connected_clusters: int = 255
    pod_cidrs: list[str]
    dir: str = ""
    certs: str = ""
    secret: str = ""
    manifests: str = ""
    etcd: Etcd
    apiserver: Apiserver
    agents: list[Agent]


class AgentOptions(msgspec.Struct, kw_only=True):
    """The agent flags that decide how a failure shows (seconds); None is the agent's default."""

    keepalive_interval: float | None = None
    keepalive_timeout: float | None = None
    cache_ttl: float | None = None


class ApiserverOptions(msgspec.Struct, kw_only=True):
    """The apiserver flags that decide how a failure shows (seconds); None is the apiserver's default."""

    heartbeat_interval: float | None = None


class MeshFile(msgspec.Struct, kw_only=True):
    """The whole file."""

    version: int = VERSION
    dir: str = ""
    state: State = "running"
    pid: int | None = None
    control: str = ""
    agent_options: AgentOptions = msgspec.field(default_factory=AgentOptions)
    apiserver_options: ApiserverOptions = msgspec.field(default_factory=ApiserverOptions)
    clusters: list[Cluster]

    def cluster(self, name: str) -> Cluster:
        """The cluster called name; ConfigError listing the known ones otherwise."""
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        known = ", ".join(c.name for c in self.clusters) or "none"
        raise ConfigError(f"no cluster {name!r} in the mesh (clusters: {known})")

    def pids(self) -> list[int]:
        """Every process id the file names (etcds, apiservers, agents)."""
        found: list[int | None] = []
        for cluster in self.clusters:
            found += [cluster.etcd.pid, cluster.apiserver.pid, *(agent.pid for agent in cluster.agents)]
        return [pid for pid in found if pid is not None]


def path(directory: pathlib.Path) -> pathlib.Path:
    """Where the mesh file of a mesh directory is."""
    return directory / layout.MESH_FILE


def load(directory: pathlib.Path) -> MeshFile:
    """Read DIR/mesh.json; ConfigError if it is missing or malformed (naming the file and the problem)."""
    file = path(directory)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file} not found: is {directory} a mesh directory made by `clustermesh up`?") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    return decode(data, source=str(file))


def load_optional(directory: pathlib.Path) -> MeshFile | None:
    """Like load(), but None when the directory has no mesh file yet."""
    if not path(directory).exists():
        return None
    return load(directory)


def decode(data: bytes, *, source: str = "mesh.json") -> MeshFile:
    """Parse the JSON of a mesh file; ConfigError naming the bad field otherwise."""
    try:
        return msgspec.json.decode(data, type=MeshFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc}") from None


def encode(mesh: MeshFile) -> bytes:
    """The JSON text of a mesh file, indented for people, keys in declaration order."""
    return msgspec.json.format(msgspec.json.encode(mesh), indent=2) + b"\n"


def to_builtins(mesh: MeshFile) -> dict[str, object]:
    """The mesh file as JSON-ready builtins (what `-o json` prints)."""
    value: dict[str, object] = msgspec.to_builtins(mesh)
    return value


def write(directory: pathlib.Path, mesh: MeshFile) -> None:
    """Replace DIR/mesh.json atomically; CertificateError (from the atomic writer) if it cannot be written."""
    certs.write_atomic(path(directory), encode(mesh), mode=0o644)
