"""The agent's configuration: every setting of `clustermesh-agent`, validated as a whole before anything starts.

Owns the values and their rules (names and IDs as identity.py defines them, addresses that parse, TLS that
is complete and only where it applies, exactly one source of peers: the mesh-config directory or the
ClusterMesh resource); main.py turns flags into an AgentConfig and composes the components
from it. Each violation raises ConfigError with a message naming the flag, which main prints on one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import re

from clustermesh import identity, kube, tls
from clustermesh.errors import ConfigError

DEFAULT_LISTEN = "unix:/var/run/clustermesh/agent.sock"
"""Where the gRPC API listens unless told otherwise (also the default `--agent` of the `clustermesh` CLI)."""
DEFAULT_DNS_DOMAIN = "cluster.local"
DEFAULT_CLUSTERMESH_NAMESPACE = "kube-system"
"""Where peer Secrets are read from unless told otherwise: where `clustermesh connect` writes them by default."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class HostPort:
    """A TCP/UDP address to listen on; port 0 picks a free one."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class ListenAddress:
    """Where the gRPC API listens: a unix socket path, or a TCP address (which requires mTLS)."""

    unix_path: pathlib.Path | None = None
    tcp: HostPort | None = None

    def __post_init__(self) -> None:
        if (self.unix_path is None) == (self.tcp is None):
            raise ValueError("ListenAddress needs exactly one of unix_path and tcp")

    def __str__(self) -> str:
        return f"unix:{self.unix_path}" if self.unix_path is not None else str(self.tcp)


def parse_host_port(text: str, *, flag: str) -> HostPort:
    """`HOST:PORT` or `[IPv6]:PORT`; ConfigError naming the flag otherwise."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 0xFFFF:
        raise ConfigError(f"{flag}: expected HOST:PORT, got {text!r}")
    return HostPort(host, int(port_text))


def parse_listen(text: str) -> ListenAddress:
    """`unix:PATH` or `HOST:PORT`; ConfigError otherwise."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ConfigError(f"--listen: expected unix:PATH, got {text!r}")
        return ListenAddress(unix_path=pathlib.Path(path))
    return ListenAddress(tcp=parse_host_port(text, flag="--listen"))


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Every setting of one agent. Construction validates; an invalid value raises ConfigError."""

    cluster_name: str
    cluster_id: int
    node_name: str
    mesh_config: pathlib.Path | None = None
    clustermesh_resource: str | None = None
    """`kubernetes[:KUBECONFIG]`: peers from the ClusterMesh resources and their Secrets (instead of mesh_config)."""
    clustermesh_namespace: str = DEFAULT_CLUSTERMESH_NAMESPACE
    peer_tls_dir: pathlib.Path | None = None
    """Where the private directory for the peers' TLS files is created (with clustermesh_resource)."""
    local_source: str | None = None
    listen: ListenAddress = dataclasses.field(default_factory=lambda: parse_listen(DEFAULT_LISTEN))
    tls: tls.TLSFiles | None = None
    dns_listen: HostPort | None = None
    dns_domain: str = DEFAULT_DNS_DOMAIN
    metrics_listen: HostPort | None = None
    health_listen: HostPort | None = None
    cache_ttl: float = 0.0
    keepalive_interval: float = 5.0
    keepalive_timeout: float = 5.0
    max_connected_clusters: int = int(identity.ClusterIDMode.DEFAULT)
    pod_cidrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        identity.validate_cluster(self.cluster_name, self.cluster_id, self.max_connected_clusters)
        if not self.node_name or "/" in self.node_name:
            raise ConfigError(f"--node-name: {self.node_name!r} is not a node name")
        if (self.mesh_config is None) == (self.clustermesh_resource is None):
            raise ConfigError("exactly one of --mesh-config and --clustermesh-resource is required")
        if self.mesh_config is not None and not self.mesh_config.is_dir():
            raise ConfigError(f"--mesh-config: {self.mesh_config} is not a directory")
        if self.clustermesh_resource is not None:
            try:
                kube.parse_kubernetes_spec(self.clustermesh_resource)
            except ConfigError as exc:
                raise ConfigError(f"--clustermesh-resource: {exc}") from None
        if len(self.clustermesh_namespace) > 63 or not _DNS_LABEL.fullmatch(self.clustermesh_namespace):
            raise ConfigError(f"--clustermesh-namespace: {self.clustermesh_namespace!r} is not a namespace name")
        if self.peer_tls_dir is not None and not self.peer_tls_dir.is_dir():
            raise ConfigError(f"--peer-tls-dir: {self.peer_tls_dir} is not a directory")
        if self.local_source is not None:
            # Builds (and drops) the source only to check the spec; main builds the one it runs.
            kube.parse_source_spec(self.local_source, kinds=[kube.Kind.SERVICE])
        if self.listen.tcp is not None and self.tls is None:
            raise ConfigError(f"--listen {self.listen}: a TCP listener requires --tls-ca, --tls-cert and --tls-key")
        if self.listen.unix_path is not None and self.tls is not None:
            raise ConfigError("--tls-ca/--tls-cert/--tls-key apply only to a TCP --listen address")
        if self.tls is not None:
            for path in (self.tls.ca, self.tls.cert, self.tls.key):
                if not path.is_file():
                    raise ConfigError(f"--tls-*: no such file {path}")
        labels = self.dns_domain.lower().rstrip(".").split(".")
        if not all(_DNS_LABEL.fullmatch(label) for label in labels):
            raise ConfigError(f"--dns-domain: {self.dns_domain!r} is not a DNS domain")
        if self.cache_ttl < 0:
            raise ConfigError(f"--cache-ttl: must not be negative, got {self.cache_ttl}")
        for flag, value in (("--keepalive-interval", self.keepalive_interval),
                            ("--keepalive-timeout", self.keepalive_timeout)):
            if value <= 0:
                raise ConfigError(f"{flag}: must be positive, got {value}")
        for cidr in self.pod_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"--pod-cidr: {cidr!r} is not a CIDR") from None
