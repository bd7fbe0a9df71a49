"""`clustermesh-agent` (also `python -m agent`): the composition root of the agent process.

Parses the flags into an AgentConfig, builds the shared read model (MeshCache), the peer set (Mesh) fed by the
peer source — the mesh-config directory watcher, or the ClusterMesh resources and their Secrets — the local
services (when `--local-source` is given), the resolver, and the servers; then runs each long-running component
as a named root task in one TaskGroup. SIGTERM and SIGINT only set the stop event; when it is set, or when any
root task ends (a root that returns is a bug, one that raises is a failure), every root is cancelled and awaited.
They need no stopping order: the servers read memory only, and stopping the mesh closes its etcd connections
without draining the cache (a restart is not a removal).

Readiness comes in two strengths. gRPC health turns SERVING once every root is ready, the mesh included (every
configured peer settled): what `clustermesh up` and scripts wait for. `/readyz` (`--health-listen`) is ready once
every root but the mesh is: the servers listen, the local source and the initial peer configuration were read;
it is what Kubernetes routes DNS by, and a peer that is down must not take a node out of service.

Exit codes: 0 after a signal, 1 when a component failed, 2 for invalid flags (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NoReturn

import clustermesh
from agent import cache as mesh_cache
from agent import config, dns_server, grpc_server, health, local_services, mesh, metrics, services
from clustermesh import http_server, kube, mesh_config, peer_secrets, tls
from clustermesh.errors import ClusterMeshError, ConfigError

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

Runner = Callable[..., Awaitable[None]]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The agent's flags (issue "Command line"), plus --max-connected-clusters, --pod-cidr and --log-level."""
    parser = _Parser(prog="clustermesh-agent", description="Watch every peer cluster's etcd; serve what they publish.")
    parser.add_argument("--version", action="version", version=f"clustermesh-agent {clustermesh.__version__}")
    parser.add_argument("--cluster-name", required=True, help="this cluster's name")
    parser.add_argument("--cluster-id", required=True, type=int, help="this cluster's ID (1..max-connected-clusters)")
    parser.add_argument("--node-name", required=True, help="the node this agent runs on")
    peer_source = parser.add_mutually_exclusive_group(required=True)
    peer_source.add_argument("--mesh-config", type=pathlib.Path, metavar="DIR",
                             help="peers from a directory: one etcd client YAML per peer, named after the peer "
                                  "cluster (Cilium's format)")
    peer_source.add_argument("--clustermesh-resource", metavar="kubernetes[:KUBECONFIG]",
                             help="peers from the ClusterMesh resources (cilium.io/v2alpha1) and the peer Secrets "
                                  "they reference, followed live on the Kubernetes API (the in-cluster service "
                                  "account, else KUBECONFIG or the default kubeconfig)")
    parser.add_argument("--clustermesh-namespace", metavar="NS",
                        help="with --clustermesh-resource: the one namespace peer Secrets are read from, each by "
                             f"name (default {config.DEFAULT_CLUSTERMESH_NAMESPACE})")
    parser.add_argument("--peer-tls-dir", type=pathlib.Path, metavar="DIR",
                        help="with --clustermesh-resource: where to create the private directory the peers' "
                             "certificates and keys are written to (default: the temporary directory); removed "
                             "at exit")
    parser.add_argument("--local-source", metavar="SPEC",
                        help="local services for global-service merging: manifests:DIR | kubernetes[:KUBECONFIG]")
    parser.add_argument("--listen", default=config.DEFAULT_LISTEN, metavar="unix:PATH|HOST:PORT",
                        help=f"gRPC API address (default {config.DEFAULT_LISTEN}); TCP requires --tls-*")
    parser.add_argument("--tls-ca", type=pathlib.Path, metavar="FILE", help="CA that signs client certificates")
    parser.add_argument("--tls-cert", type=pathlib.Path, metavar="FILE", help="server certificate")
    parser.add_argument("--tls-key", type=pathlib.Path, metavar="FILE", help="server private key")
    parser.add_argument("--dns-listen", metavar="HOST:PORT", help="serve DNS (UDP and TCP) here")
    parser.add_argument("--dns-domain", default=config.DEFAULT_DNS_DOMAIN, help="cluster DNS domain")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics at /metrics here")
    parser.add_argument("--health-listen", metavar="HOST:PORT",
                        help="serve /healthz (the process serves) and /readyz (servers, local source and peer "
                             "configuration read; not whether peers are connected) here")
    parser.add_argument("--cache-ttl", type=float, default=0.0, metavar="SECONDS",
                        help="revoke a disconnected peer's entries after this long; 0 keeps them")
    parser.add_argument("--keepalive-interval", type=float, default=5.0, metavar="S", help="gRPC keepalive interval")
    parser.add_argument("--keepalive-timeout", type=float, default=5.0, metavar="S", help="gRPC keepalive timeout")
    parser.add_argument("--max-connected-clusters", type=int, default=255, choices=(255, 511),
                        help="the mesh's cluster ID space (all clusters must agree)")
    parser.add_argument("--pod-cidr", action="append", default=[], metavar="CIDR",
                        help="a local pod CIDR (repeatable); peers whose CIDRs overlap are refused")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def config_from_args(args: argparse.Namespace) -> config.AgentConfig:
    """The AgentConfig of parsed flags; ConfigError naming the flag otherwise."""
    tls_paths = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_paths) and not all(tls_paths):
        raise ConfigError("--tls-ca, --tls-cert and --tls-key go together")
    if args.clustermesh_resource is None:
        for flag, value in (("--clustermesh-namespace", args.clustermesh_namespace),
                            ("--peer-tls-dir", args.peer_tls_dir)):
            if value is not None:
                raise ConfigError(f"{flag} applies only with --clustermesh-resource")
    return config.AgentConfig(
        cluster_name=args.cluster_name,
        cluster_id=args.cluster_id,
        node_name=args.node_name,
        mesh_config=args.mesh_config,
        clustermesh_resource=args.clustermesh_resource,
        clustermesh_namespace=args.clustermesh_namespace or config.DEFAULT_CLUSTERMESH_NAMESPACE,
        peer_tls_dir=args.peer_tls_dir,
        local_source=args.local_source,
        listen=config.parse_listen(args.listen),
        tls=tls.TLSFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key) if all(tls_paths) else None,
        dns_listen=config.parse_host_port(args.dns_listen, flag="--dns-listen") if args.dns_listen else None,
        dns_domain=args.dns_domain,
        metrics_listen=(
            config.parse_host_port(args.metrics_listen, flag="--metrics-listen") if args.metrics_listen else None
        ),
        health_listen=(
            config.parse_host_port(args.health_listen, flag="--health-listen") if args.health_listen else None
        ),
        cache_ttl=args.cache_ttl,
        keepalive_interval=args.keepalive_interval,
        keepalive_timeout=args.keepalive_timeout,
        max_connected_clusters=args.max_connected_clusters,
        pod_cidrs=tuple(args.pod_cidr),
    )


class _Stopping(Exception):
    """The stop event was set: unwind every root task."""


class _RootExited(Exception):
    """A root task returned although it should run until cancelled."""


async def _root(name: str, runner: Runner, ready: asyncio.Event, after: asyncio.Event | None) -> None:
    if after is not None:
        await after.wait()
    await runner(ready=ready)
    raise _RootExited(f"{name} ended unexpectedly")


async def _stop_when(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stopping


async def _announce_ready(
    readies: dict[str, asyncio.Event], server: grpc_server.GrpcServer, agent_config: config.AgentConfig
) -> None:
    """Once every root reported ready: turn gRPC health SERVING and log it."""
    for event in readies.values():
        await event.wait()
    await server.set_ready(True)
    log.info("event=agent.ready cluster=%s node=%s grpc=%s", agent_config.cluster_name, agent_config.node_name,
             server.address)


def _serving(readies: Mapping[str, asyncio.Event]) -> bool:
    """What /readyz answers: every root but the mesh is ready (the mesh's readiness is about peers)."""
    return all(event.is_set() for name, event in readies.items() if name != "mesh")


def _peer_source(agent_config: config.AgentConfig, peers: mesh.Mesh) -> tuple[str, Runner]:
    """The root that feeds the mesh its peers: its name and its run."""
    if agent_config.mesh_config is not None:
        watcher = mesh_config.MeshConfigWatcher(
            agent_config.mesh_config, local_cluster=agent_config.cluster_name, on_change=peers.set_peers
        )
        return "mesh-config", watcher.run
    assert agent_config.clustermesh_resource is not None
    resource = peer_secrets.ClusterMeshPeers(
        kube.parse_kubernetes_spec(agent_config.clustermesh_resource),
        namespace=agent_config.clustermesh_namespace,
        local_cluster=agent_config.cluster_name,
        on_change=peers.set_peers,
        tls_root=agent_config.peer_tls_dir,
    )
    return "clustermesh-resource", resource.run


async def run(agent_config: config.AgentConfig, *, stop: asyncio.Event) -> None:
    """Run the agent until `stop` is set; raises ExceptionGroup (without _Stopping) when a component fails."""
    cache = mesh_cache.MeshCache()
    peers = mesh.Mesh(
        mesh.LocalCluster(
            name=agent_config.cluster_name,
            cluster_id=agent_config.cluster_id,
            max_connected_clusters=agent_config.max_connected_clusters,
            pod_cidrs=agent_config.pod_cidrs,
        ),
        cache,
        options=mesh.PeerOptions(
            keepalive_interval=agent_config.keepalive_interval,
            keepalive_timeout=agent_config.keepalive_timeout,
            cache_ttl=agent_config.cache_ttl,
        ),
    )
    peer_source, read_peers = _peer_source(agent_config, peers)
    local = None
    if agent_config.local_source is not None:
        local = local_services.LocalServices(
            kube.parse_source_spec(agent_config.local_source, kinds=local_services.KINDS)
        )
    resolver = services.ServiceResolver(
        cache, local, local_cluster=agent_config.cluster_name, local_cluster_id=agent_config.cluster_id
    )
    api = grpc_server.GrpcServer(
        grpc_server.AgentService(
            cache, resolver, peers,
            agent=grpc_server.AgentIdentity(agent_config.cluster_name, agent_config.cluster_id,
                                            agent_config.node_name),
        ),
        agent_config.listen,
        tls_files=agent_config.tls,
    )
    roots: dict[str, Runner] = {"mesh": peers.run, peer_source: read_peers, "grpc": api.run}
    if local is not None:
        roots["local-services"] = local.run
    if agent_config.dns_listen is not None:
        roots["dns"] = dns_server.DnsServer(resolver, agent_config.dns_listen, domain=agent_config.dns_domain).run
    if agent_config.metrics_listen is not None:
        collector = metrics.MeshCollector(
            peers.statuses, resolver.global_service_count,
            cluster_name=agent_config.cluster_name, node_name=agent_config.node_name,
        )
        roots["metrics"] = http_server.HttpServer(
            str(agent_config.metrics_listen), metrics.routes(metrics.registry(collector)), name="metrics"
        ).run
    if agent_config.health_listen is not None:
        roots["health"] = http_server.HttpServer(
            str(agent_config.health_listen), health.routes(lambda: _serving(readies)), name="health"
        ).run
    readies = {name: asyncio.Event() for name in roots}
    # The mesh starts once the initial peer configuration has been read, so that its readiness ("every peer
    # settled") covers the peers configured at start rather than the empty set before.
    after = {"mesh": readies[peer_source]}
    peers_from = (f"mesh-config:{agent_config.mesh_config}" if agent_config.mesh_config is not None else
                  f"clustermesh-resource:{agent_config.clustermesh_resource} "
                  f"peer_namespace={agent_config.clustermesh_namespace}")
    log.info("event=agent.starting cluster=%s cluster_id=%d node=%s peers=%s local_source=%s",
             agent_config.cluster_name, agent_config.cluster_id, agent_config.node_name, peers_from,
             agent_config.local_source or "none")
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_stop_when(stop), name="stop")
            for name, runner in roots.items():
                group.create_task(_root(name, runner, readies[name], after.get(name)), name=name)
            group.create_task(_announce_ready(readies, api, agent_config), name="announce-ready")
    except* _Stopping:
        log.info("event=agent.stopped cluster=%s node=%s", agent_config.cluster_name, agent_config.node_name)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent process; return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        agent_config = config_from_args(args)
    except ConfigError as exc:
        sys.stderr.write(f"clustermesh-agent: error: {exc}\n")
        return EXIT_USAGE
    try:
        asyncio.run(_main(agent_config))
    except Exception as exc:  # the root: every failure ends here, is logged and becomes the exit code
        for failure in _leaves(exc):
            # Our own errors carry an operator-facing message; anything else is a bug worth its traceback.
            expected = isinstance(failure, ClusterMeshError)
            log.error("event=agent.failed error=%s reason=%r", type(failure).__name__, str(failure),
                      exc_info=None if expected else failure)
        return EXIT_FAILURE
    return EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def _main(agent_config: config.AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await run(agent_config, stop=stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


if __name__ == "__main__":
    sys.exit(main())
