"""LocalMesh: a whole mesh on one machine — per cluster an etcd, an apiserver and agents — started, kept, stopped.

`LocalMesh(config).run(ready=...)` is `clustermesh up` without the terminal, and what drills drive:

1. Lock DIR (one `up` per directory); stop leftovers of a previous `up` that was killed (pids in mesh.json
   whose command line names DIR).
2. Per cluster (layout.plan): certificates and cluster secret (created once, reused), WireGuard node keys,
   manifests (nodes; the example app unless present).
3. Start every etcd (TLS, client-cert auth, data kept under DIR) and apply Cilium's users and roles with auth
   enabled, and in front of each a TCP proxy (clustermesh.aio.tcp_proxy, forwarding) that every other client
   dials: peers' agents, the CLI. Only the cluster's own apiserver dials its etcd directly, so cutting the proxy
   partitions exactly the etcd from its peers (`clustermesh drill partition`). Ports of the previous run are
   reused when free, so addresses survive a restart.
4. The trust exchange (clustermesh.connect) for every pair: peer files in every agent's mesh-config directory,
   naming the peer's proxy; files of peers no longer in the mesh are removed.
5. Start the apiservers and the agents, all at once (`python -m apiserver|agent`, clustermesh.local_mesh.daemon),
   serve the control endpoint (clustermesh.local_mesh.control, DIR/control.sock: how drills in other processes
   act on these processes), and write DIR/mesh.json.
6. Wait until every agent reports every other cluster ready (clustermesh.local_mesh.status), then set `ready`.
7. Keep them running: an apiserver or agent that exits on its own is restarted with backoff, as a Deployment or
   DaemonSet would; an etcd is not (drills stop and start etcds on purpose, and a dead store should show).

On cancellation, or when start-up fails: the control endpoint closes, agents are stopped, then apiservers, then
the proxies and the etcds (each SIGTERM, then SIGKILL after its stop timeout), mesh.json is marked stopped, and
the lock is released. Nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from clustermesh import certs, connect, errors, trust
from clustermesh.aio import backoff, tasks, tcp_proxy
from clustermesh.etcd import access, process
from clustermesh.etcd import client as etcd_client
from clustermesh.local_mesh import control, daemon, layout, manifests, mesh_file, ownership, ports, probes, status

log = logging.getLogger(__name__)


AGENT_HEALTH_SERVICE = "clustermesh.v1.Agent"
"""The gRPC health service name an agent reports SERVING once it runs (agent.grpc_server.AGENT_SERVICE)."""

LOCAL_ETCD_OPTIONS = process.EtcdOptions(
    # A single member leads after one election timeout: 200 ms instead of etcd's 1 s start-up wait.
    election_timeout=0.2,
    heartbeat_interval=0.02,
    # Idle watches advance their resume point every few seconds instead of etcd's 10 minutes.
    progress_notify_interval=5.0,
    # Lets drills lower the agents' keepalive interval to 1 s without etcd closing the connection.
    grpc_keepalive_min_time=1.0,
    # A mesh left running for days keeps an hour of history, not all of it.
    auto_compaction_retention="1",
)

# How often the keeper looks for daemons that died: a crashed agent is restarted within about this long.
_WATCH_INTERVAL = 0.5


class Example(enum.StrEnum):
    """Which example workload `up` deploys in every cluster."""

    MY_APP = "my-app"
    NONE = "none"


class NotSynced(errors.ClusterMeshError):
    """Raised when the agents do not report every peer ready within the sync timeout; says what is missing."""


@dataclasses.dataclass(frozen=True)
class ApiserverOptions:
    """Apiserver flags that decide how a failure shows (seconds); None leaves the apiserver's default.

    A short heartbeat interval lets agents tell a dead apiserver sooner; recorded in mesh.json
    (`apiserver_options`).
    """

    heartbeat_interval: float | None = None

    def __post_init__(self) -> None:
        if self.heartbeat_interval is not None and self.heartbeat_interval <= 0:
            raise errors.ConfigError(f"--heartbeat-interval: must be positive, got {self.heartbeat_interval:g}")

    def args(self) -> list[str]:
        """The apiserver flags for the options that are set."""
        if self.heartbeat_interval is None:
            return []
        return ["--heartbeat-interval", f"{self.heartbeat_interval:g}"]


@dataclasses.dataclass(frozen=True)
class AgentOptions:
    """Agent flags that decide how fast a failure shows (seconds); None leaves the agent's default.

    Recorded in mesh.json (`agent_options`), so that a drill knows, e.g., whether agents revoke a dead peer's
    services (cache_ttl) and when.
    """

    keepalive_interval: float | None = None
    keepalive_timeout: float | None = None
    cache_ttl: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--keepalive-interval", self.keepalive_interval),
                            ("--keepalive-timeout", self.keepalive_timeout)):
            if value is not None and value <= 0:
                raise errors.ConfigError(f"{flag}: must be positive, got {value:g}")
        if self.cache_ttl is not None and self.cache_ttl < 0:
            raise errors.ConfigError(f"--cache-ttl: must not be negative, got {self.cache_ttl:g}")

    def args(self) -> list[str]:
        """The agent flags for the options that are set."""
        flags = (("--keepalive-interval", self.keepalive_interval), ("--keepalive-timeout", self.keepalive_timeout),
                 ("--cache-ttl", self.cache_ttl))
        return [arg for flag, value in flags if value is not None for arg in (flag, f"{value:g}")]


@dataclasses.dataclass(frozen=True)
class Config:
    """What to run. Construction validates the counts (ConfigError) via the layout plan."""

    directory: pathlib.Path = layout.DEFAULT_DIR
    clusters: int = 2
    nodes: int = 2
    example: Example = Example.MY_APP
    sync_timeout: float = 60.0
    """Seconds from start until every agent must report every peer ready."""
    start_timeout: float = 30.0
    """Seconds a daemon may take to become ready."""
    stop_timeout: float = 10.0
    """Seconds a daemon may take to exit after SIGTERM before it is killed."""
    etcd_options: process.EtcdOptions = LOCAL_ETCD_OPTIONS
    python: str = sys.executable
    """The interpreter that runs `-m apiserver` and `-m agent`."""
    agent_options: AgentOptions = AgentOptions()
    apiserver_options: ApiserverOptions = ApiserverOptions()
    agent_args: tuple[str, ...] = ()
    """Extra flags for every agent (e.g. `--cache-ttl 5`, lower keepalives for drills)."""
    apiserver_args: tuple[str, ...] = ()
    """Extra flags for every apiserver."""

    def __post_init__(self) -> None:
        layout.check_socket_paths(layout.plan(self.directory, clusters=self.clusters, nodes=self.nodes))
        if self.sync_timeout <= 0 or self.start_timeout <= 0 or self.stop_timeout <= 0:
            raise errors.ConfigError("timeouts must be positive")


Progress = Callable[[str], None]


@dataclasses.dataclass
class RunningCluster:
    """One cluster's processes, once started. The owner (LocalMesh.run) mutates it; readers only read."""

    plan: layout.ClusterPlan
    certs: certs.ClusterCerts
    ports: ports.ClusterPorts
    etcd: process.EtcdProcess
    proxy: tcp_proxy.TCPProxy
    """In front of the etcd, for every client but the cluster's own apiserver."""
    apiserver: daemon.Daemon | None = None
    agents: dict[str, daemon.Daemon] = dataclasses.field(default_factory=dict)


class LocalMesh:
    """A local mesh per `config`; see the module docstring. One run() at a time.

    `on_progress` receives one human line per start-up step (certificates, each process, sync). After `ready`
    is set, `clusters` holds every cluster's processes and `snapshot()` describes them; both stay readable
    after run() returns. Drills in other processes act on them through the control endpoint, which calls
    describe(), act(), set_proxy() and rotate_certs() (the control.Target protocol); these are serialized.
    """

    def __init__(self, config: Config, *, on_progress: Progress | None = None) -> None:
        self.config = config
        self.directory = config.directory.absolute()
        self.plans = layout.plan(self.directory, clusters=config.clusters, nodes=config.nodes)
        self.clusters: dict[str, RunningCluster] = {}
        self._on_progress = on_progress
        self._running = False
        self._restarts: dict[str, asyncio.Task[None]] = {}
        # In-process servers by name (each etcd proxy, the control endpoint): owned here, stopped by _stop_all.
        self._servers: dict[str, asyncio.Task[None]] = {}
        # Control requests change process lifecycles and certificate files one at a time.
        self._control_lock = asyncio.Lock()
        self.synced_after: float | None = None
        """Seconds from run() to every agent synced, once it happened."""

    def __repr__(self) -> str:
        return (f"<LocalMesh {self.directory} clusters={self.config.clusters} nodes={self.config.nodes} "
                f"running={self._running}>")

    def _progress(self, message: str) -> None:
        log.info("event=local_mesh.progress message=%r", message)
        if self._on_progress is not None:
            self._on_progress(message)

    # ------------------------------------------------------------------------------------------------
    # run

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Start the mesh, set `ready` once every agent is synced, and keep it running until cancelled.

        Raises RuntimeError if already running; ConfigError if DIR is in use by another `up` or holds
        unusable state; DaemonFailed / StoreError if a process does not start; NotSynced if the agents do not
        sync within config.sync_timeout. Whatever happens, every process started is stopped before run()
        returns or raises (agents, apiservers, etcds), also on a second cancellation.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        started = time.monotonic()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.ConfigError(f"cannot create the mesh directory {self.directory}: {exc.strerror}") from None
        lock = ownership.lock(self.directory)
        self._running = True
        try:
            previous = mesh_file.load_optional(self.directory)
            if previous is not None:
                await ownership.stop_leftovers(previous, self.directory)
            await self._start(previous, started)
            if ready is not None:
                ready.set()
            await self._keep_running()
        finally:
            try:
                await tasks.finish(self._stop_all())
            finally:
                os.close(lock)
                self._running = False

    async def _start(self, previous: mesh_file.MeshFile | None, started: float) -> None:
        picker = ports.PortPicker()
        for plan in self.plans:
            self.clusters[plan.name] = await self._prepare(plan, previous, picker)
        for name, cluster in self.clusters.items():
            await self._serve(f"proxy {name}", cluster.proxy.run)
        await _together(self._start_etcd(cluster) for cluster in self.clusters.values())
        self._exchange_trust()
        for cluster in self.clusters.values():
            cluster.apiserver = self._apiserver(cluster)
            cluster.agents = {node.name: self._agent(cluster, node) for node in cluster.plan.nodes}
        await _together(self._start_daemon(child) for cluster in self.clusters.values()
                        for child in self._daemons(cluster))
        await self._serve("control", control.ControlServer(self.directory / control.SOCKET_NAME, self).run)
        self._write_mesh_file("running")
        self._progress("waiting for every agent to sync with every peer cluster")
        await self._wait_synced(started)
        self.synced_after = time.monotonic() - started
        self._progress(f"mesh synced in {self.synced_after:.1f}s")

    async def _prepare(
        self, plan: layout.ClusterPlan, previous: mesh_file.MeshFile | None, picker: ports.PortPicker
    ) -> RunningCluster:
        layout.make_directories(plan)
        cluster_certs = await asyncio.to_thread(certs.init_cluster, plan.paths.certs, plan.name)
        await asyncio.to_thread(trust.ensure_cluster_secret, plan.paths.certs)
        self._progress(f"{plan.name}: certificates {'created' if cluster_certs.written else 'reused'} in "
                       f"{plan.paths.certs}")
        keys = {node.name: manifests.ensure_wireguard_key(plan.paths.agent(node.name).wireguard_key)
                for node in plan.nodes}
        manifests.write_nodes(plan, keys)
        if self.config.example is Example.MY_APP:
            manifests.ensure_example(plan)
        old = next((c for c in previous.clusters if c.name == plan.name), None) if previous is not None else None
        cluster_ports = picker.assign(plan, old)
        etcd = process.EtcdProcess(
            plan.paths.etcd, name=plan.name, server_tls=cluster_certs.server,
            client_port=cluster_ports.etcd_client, peer_port=cluster_ports.etcd_peer,
            options=dataclasses.replace(self.config.etcd_options, stop_timeout=self.config.stop_timeout),
        )
        proxy = tcp_proxy.TCPProxy(ports.LOOPBACK, cluster_ports.etcd_client, listen_host=ports.LOOPBACK,
                                   listen_port=cluster_ports.etcd_proxy)
        return RunningCluster(plan=plan, certs=cluster_certs, ports=cluster_ports, etcd=etcd, proxy=proxy)

    async def _serve(self, name: str, runner: Callable[..., Coroutine[Any, Any, None]]) -> None:
        """Run an in-process server as an owned task; return once it is ready, or raise why it could not start."""
        ready = asyncio.Event()
        task = asyncio.create_task(runner(ready=ready), name=name)
        self._servers[name] = task
        waiter = asyncio.ensure_future(ready.wait())
        try:
            await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not ready.is_set():
            task.result()  # raises why it ended (a port taken, a socket path unusable)
            raise RuntimeError(f"{name} ended before it was ready")

    def _check_servers(self) -> None:
        for name, task in self._servers.items():
            if task.done():
                exc = None if task.cancelled() else task.exception()
                raise RuntimeError(f"the {name} server ended unexpectedly") from exc

    async def _start_etcd(self, cluster: RunningCluster) -> None:
        await cluster.etcd.start()
        _link(cluster.plan.paths.logs / "etcd.log", cluster.etcd.log_path)
        config = cluster.etcd.client_config(cluster.certs.admin)
        async with await etcd_client.EtcdClient.connect(config) as admin:
            await access.apply(admin, access.policy(cluster.plan.name))
        self._progress(f"{cluster.plan.name}: etcd serving on {cluster.etcd.endpoint} (pid {cluster.etcd.pid}), "
                       "client-cert auth, users and roles applied")

    def _trust(self, cluster: RunningCluster) -> connect.ClusterTrust:
        return connect.local_trust(
            name=cluster.plan.name, cluster_id=cluster.plan.cluster_id, endpoints=(_proxy_url(cluster),),
            certs_dir=cluster.plan.paths.certs, pod_cidrs=cluster.plan.pod_cidrs,
            max_connected_clusters=cluster.plan.max_connected_clusters,
        )

    def _exchange_trust(self) -> int:
        """Write every peer file (those of peers no longer in the mesh removed); return how many changed."""
        trusts = {name: self._trust(cluster) for name, cluster in self.clusters.items()}
        for a, b in ((a, b) for a in trusts for b in trusts if a < b):
            connect.check_pair(trusts[a], trusts[b])
        changed = 0
        for name, cluster in self.clusters.items():
            for node in cluster.plan.nodes:
                directory = cluster.plan.paths.agent(node.name).mesh_config
                for stale in set(connect.peer_names(directory)) - set(trusts):
                    connect.remove_peer_files(directory, stale)
                for peer, peer_trust in trusts.items():
                    if peer != name:
                        changed += connect.write_peer_files(directory, peer_trust)
        if len(trusts) > 1:
            self._progress(f"trust exchanged between {', '.join(trusts)}: peer files in every agent's mesh-config"
                           f" ({changed} written, the rest unchanged)")
        return changed

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Log lines reach the log file as they are written, not when a buffer fills.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _apiserver(self, cluster: RunningCluster) -> daemon.Daemon:
        plan, listen = cluster.plan, cluster.ports
        argv = [
            self.config.python, "-m", "apiserver",
            "--cluster-name", plan.name,
            "--cluster-id", str(plan.cluster_id),
            "--etcd-endpoints", cluster.etcd.endpoint,
            "--etcd-ca", str(cluster.certs.admin.ca),
            "--etcd-cert", str(cluster.certs.admin.cert),
            "--etcd-key", str(cluster.certs.admin.key),
            "--source", f"manifests:{plan.paths.manifests}",
            "--grpc-listen", ports.host_port(listen.apiserver_grpc),
            "--metrics-listen", ports.host_port(listen.apiserver_metrics),
            "--health-listen", ports.host_port(listen.apiserver_health),
            *self.config.apiserver_options.args(),
            *self.config.apiserver_args,
        ]
        return daemon.Daemon(
            f"apiserver {plan.name}", argv, log_path=plan.paths.apiserver_log,
            probe=probes.http_ok(ports.host_port(listen.apiserver_health), "/readyz"),
            env=self._env(), start_timeout=self.config.start_timeout, stop_timeout=self.config.stop_timeout,
        )

    def _agent(self, cluster: RunningCluster, node: layout.NodePlan) -> daemon.Daemon:
        plan, listen = cluster.plan, cluster.ports
        paths = plan.paths.agent(node.name)
        argv = [
            self.config.python, "-m", "agent",
            "--cluster-name", plan.name,
            "--cluster-id", str(plan.cluster_id),
            "--node-name", node.name,
            "--mesh-config", str(paths.mesh_config),
            "--local-source", f"manifests:{plan.paths.manifests}",
            "--listen", f"unix:{paths.socket}",
            "--dns-listen", ports.host_port(listen.agent_dns[node.name]),
            "--metrics-listen", ports.host_port(listen.agent_metrics[node.name]),
            *(arg for cidr in plan.pod_cidrs for arg in ("--pod-cidr", cidr)),
            *self.config.agent_options.args(),
            *self.config.agent_args,
        ]
        return daemon.Daemon(
            f"agent {node.name}", argv, log_path=paths.log,
            probe=probes.grpc_health(f"unix:{paths.socket}", AGENT_HEALTH_SERVICE),
            env=self._env(), start_timeout=self.config.start_timeout, stop_timeout=self.config.stop_timeout,
        )

    async def _start_daemon(self, child: daemon.Daemon) -> None:
        await child.start()
        self._progress(f"{child.name} ready (pid {child.pid}, log {child.log_path})")

    async def _wait_synced(self, started: float) -> None:
        deadline = started + self.config.sync_timeout
        reports: list[status.AgentReport] = []
        while time.monotonic() < deadline:
            reports = await status.read_mesh(self.snapshot())
            if status.synced(reports):
                return
            self._check_alive()
            await asyncio.sleep(0.1)
        lacking = "; ".join(line for line in (report.waiting_for() for report in reports) if line)
        raise NotSynced(f"the agents did not sync within {self.config.sync_timeout:g}s: {lacking}")

    def _check_alive(self) -> None:
        for cluster in self.clusters.values():
            for child in self._daemons(cluster):
                if child.state is daemon.State.EXITED:
                    raise daemon.DaemonFailed(
                        f"{child.name} exited with status {child.returncode}; log {child.log_path}:\n"
                        f"{child.log_tail()}"
                    )

    @staticmethod
    def _daemons(cluster: RunningCluster) -> list[daemon.Daemon]:
        children = [*cluster.agents.values()]
        if cluster.apiserver is not None:
            children.insert(0, cluster.apiserver)
        return children

    # ------------------------------------------------------------------------------------------------
    # keep running

    async def _keep_running(self) -> None:
        """Restart apiservers and agents that exit on their own; report an etcd that did; keep mesh.json's pids
        current (also when a drill restarts a process through `clusters`). Runs until cancelled."""
        etcd_reported: set[str] = set()
        written = self.snapshot().pids()
        while True:
            self._check_servers()
            pids = self.snapshot().pids()
            if pids != written:
                self._write_mesh_file("running")
                written = pids
            for cluster in self.clusters.values():
                if cluster.etcd.state is process.State.EXITED and cluster.plan.name not in etcd_reported:
                    etcd_reported.add(cluster.plan.name)
                    log.error("event=local_mesh.etcd_exited cluster=%s log=%s", cluster.plan.name,
                              cluster.etcd.log_path)
                    self._progress(f"{cluster.plan.name}: etcd exited on its own; see {cluster.etcd.log_path}")
                elif cluster.etcd.state is process.State.RUNNING:
                    etcd_reported.discard(cluster.plan.name)
                for child in self._daemons(cluster):
                    task = self._restarts.get(child.name)
                    if child.state is daemon.State.EXITED and (task is None or task.done()):
                        self._restarts[child.name] = asyncio.create_task(
                            self._restart(child), name=f"restart {child.name}"
                        )
            await asyncio.sleep(_WATCH_INTERVAL)

    async def _restart(self, child: daemon.Daemon) -> None:
        log.warning("event=local_mesh.daemon_exited name=%s pid=%s status=%s", child.name, child.pid,
                    child.returncode)
        self._progress(f"{child.name} exited with status {child.returncode}; restarting it")
        delays = backoff.Backoff(initial=0.5, maximum=10.0)
        while True:
            await delays.wait()
            try:
                await child.start()
            except daemon.DaemonFailed as exc:
                log.error("event=local_mesh.restart_failed name=%s reason=%r", child.name, str(exc))
                continue
            break
        self._progress(f"{child.name} restarted (pid {child.pid})")

    # ------------------------------------------------------------------------------------------------
    # stop

    async def _stop_all(self) -> None:
        # No drill acts on what is being stopped.
        await self._stop_server("control")
        restarts = list(self._restarts.values())
        for task in restarts:
            task.cancel()
        await asyncio.gather(*restarts, return_exceptions=True)
        self._restarts.clear()
        clusters = list(self.clusters.values())
        # Users before what they use: agents read the etcds (through the proxies), apiservers write them.
        await _all(child.stop() for cluster in clusters for child in cluster.agents.values())
        await _all(cluster.apiserver.stop() for cluster in clusters if cluster.apiserver is not None)
        for name in list(self._servers):
            await self._stop_server(name)
        await _all(cluster.etcd.stop() for cluster in clusters)
        if clusters:
            self._write_mesh_file("stopped")
            self._progress("every process stopped")

    async def _stop_server(self, name: str) -> None:
        task = self._servers.pop(name, None)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # ------------------------------------------------------------------------------------------------
    # control (clustermesh.local_mesh.control.Target)

    def _running_cluster(self, name: str) -> RunningCluster:
        cluster = self.clusters.get(name)
        if cluster is None:
            raise control.ControlError(f"no cluster {name!r} in the mesh (clusters: {', '.join(self.clusters)})")
        return cluster

    def describe(self) -> dict[str, Any]:
        """Every process's state and the proxies' modes (the control `status` result)."""

        def child_state(child: daemon.Daemon | None) -> dict[str, Any]:
            if child is None:
                return {"state": daemon.State.NEW.value, "pid": None, "starts": 0, "restarting": False}
            task = self._restarts.get(child.name)
            return {"state": child.state.value, "pid": child.pid, "starts": child.starts,
                    "restarting": task is not None and not task.done()}

        return {"clusters": [
            {
                "name": name,
                "etcd": {"state": cluster.etcd.state.value, "pid": cluster.etcd.pid},
                "proxy": {"mode": cluster.proxy.mode.value, "address": cluster.proxy.address},
                "apiserver": child_state(cluster.apiserver),
                "agents": [{"node": node, **child_state(child)} for node, child in cluster.agents.items()],
            }
            for name, cluster in self.clusters.items()
        ]}

    async def act(self, op: control.Op, cluster: str, component: control.Component, node: str) -> None:
        """kill / stop / cont / start a process (see clustermesh.local_mesh.control for what each means)."""
        running = self._running_cluster(cluster)
        async with self._control_lock:
            if component is control.Component.ETCD:
                await self._act_on_etcd(op, running.etcd)
                return
            if op is not control.Op.KILL:
                raise control.ControlError(f"{op} applies to an etcd only; an apiserver or agent can be killed "
                                           "(and is restarted)")
            child = running.apiserver if component is control.Component.APISERVER else running.agents.get(node)
            if child is None:
                raise control.ControlError(f"no agent on node {node!r} in {cluster} "
                                           f"(nodes: {', '.join(running.agents)})")
            if child.state is not daemon.State.RUNNING:
                raise control.ControlError(f"{child.name} is {child.state.value}, not running")
            child.send_signal(signal.SIGKILL)
            self._progress(f"{child.name} killed (pid {child.pid}) by a control request")

    async def _act_on_etcd(self, op: control.Op, etcd: process.EtcdProcess) -> None:
        state = etcd.state
        allowed = {
            control.Op.KILL: (process.State.RUNNING, process.State.PAUSED),
            control.Op.STOP: (process.State.RUNNING,),
            control.Op.CONT: (process.State.PAUSED,),
            control.Op.START: (process.State.STOPPED, process.State.EXITED),
        }
        if state not in allowed[op]:
            raise control.ControlError(f"cannot {op} etcd {etcd.name}: it is {state.value}")
        if op is control.Op.KILL:
            await etcd.kill()
        elif op is control.Op.STOP:
            await etcd.pause()
        elif op is control.Op.CONT:
            etcd.resume()
        else:
            await etcd.start()
        self._progress(f"{etcd.name}: etcd {op} by a control request (now {etcd.state.value}, pid {etcd.pid})")

    async def set_proxy(self, cluster: str, mode: tcp_proxy.Mode) -> None:
        """Set the mode of the cluster's etcd proxy; back to forward, connections that lived through a cut are
        reset first (the bytes the proxy dropped would corrupt their TLS streams)."""
        proxy = self._running_cluster(cluster).proxy
        async with self._control_lock:
            if mode is tcp_proxy.Mode.FORWARD and proxy.mode is tcp_proxy.Mode.BLACKHOLE:
                proxy.set_mode(tcp_proxy.Mode.REJECT)
            proxy.set_mode(mode)
        self._progress(f"{cluster}: etcd proxy {proxy.address} now {mode.value} (by a control request)")

    async def rotate_certs(self, cluster: str) -> list[str]:
        """Re-issue the cluster's pairs from its CA, then the trust exchange; return the certificate files written.

        Processes keep their connections: etcd reads its files at each handshake, clients at each dial.
        """
        running = self._running_cluster(cluster)
        async with self._control_lock:
            rotated = await asyncio.to_thread(certs.rotate, running.plan.paths.certs, running.plan.name)
            changed = self._exchange_trust()
        self._progress(f"{cluster}: certificates rotated ({len(rotated.written)} files), {changed} peer files "
                       "updated (by a control request)")
        return [str(path) for path in rotated.written]

    # ------------------------------------------------------------------------------------------------
    # mesh.json

    def snapshot(self, state: mesh_file.State = "running") -> mesh_file.MeshFile:
        """The mesh as it is now (addresses, pids, paths), in the mesh.json format."""
        result = []
        for cluster in self.clusters.values():
            plan, listen = cluster.plan, cluster.ports
            result.append(mesh_file.Cluster(
                name=plan.name,
                id=plan.cluster_id,
                max_connected_clusters=plan.max_connected_clusters,
                pod_cidrs=list(plan.pod_cidrs),
                dir=str(plan.paths.root),
                certs=str(plan.paths.certs),
                secret=str(trust.secret_path(plan.paths.certs)),
                manifests=str(plan.paths.manifests),
                etcd=mesh_file.Etcd(
                    endpoints=[_proxy_url(cluster)],
                    listen=f"https://{ports.host_port(listen.etcd_client)}",
                    ca=str(cluster.certs.admin.ca),
                    cert=str(cluster.certs.admin.cert),
                    key=str(cluster.certs.admin.key),
                    pid=cluster.etcd.pid,
                    peer_url=f"http://{ports.host_port(listen.etcd_peer)}",
                    data=str(plan.paths.etcd),
                    log=str(cluster.etcd.log_path),
                ),
                apiserver=mesh_file.Apiserver(
                    grpc=ports.host_port(listen.apiserver_grpc),
                    metrics=ports.host_port(listen.apiserver_metrics),
                    health=ports.host_port(listen.apiserver_health),
                    pid=cluster.apiserver.pid if cluster.apiserver is not None else None,
                    log=str(plan.paths.apiserver_log),
                ),
                agents=[
                    mesh_file.Agent(
                        node=node.name,
                        ip=node.internal_ip,
                        grpc=f"unix:{plan.paths.agent(node.name).socket}",
                        dns=ports.host_port(listen.agent_dns[node.name]),
                        metrics=ports.host_port(listen.agent_metrics[node.name]),
                        pid=cluster.agents[node.name].pid if node.name in cluster.agents else None,
                        mesh_config=str(plan.paths.agent(node.name).mesh_config),
                        log=str(plan.paths.agent(node.name).log),
                    )
                    for node in plan.nodes
                ],
            ))
        options = self.config.agent_options
        return mesh_file.MeshFile(
            clusters=result, dir=str(self.directory), state=state, pid=os.getpid(),
            control=control.address(self.directory) if state == "running" and "control" in self._servers else "",
            agent_options=mesh_file.AgentOptions(keepalive_interval=options.keepalive_interval,
                                                 keepalive_timeout=options.keepalive_timeout,
                                                 cache_ttl=options.cache_ttl),
            apiserver_options=mesh_file.ApiserverOptions(
                heartbeat_interval=self.config.apiserver_options.heartbeat_interval),
        )

    def _write_mesh_file(self, state: mesh_file.State) -> None:
        mesh_file.write(self.directory, self.snapshot(state))


# ----------------------------------------------------------------------------------------------------
# helpers


async def _all(calls: Iterable[Awaitable[None]]) -> None:
    """Await every call concurrently; log failures and go on (a stop must reach every process)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            log.error("event=local_mesh.stop_failed error=%s reason=%r", type(result).__name__, str(result))


async def _together(calls: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run calls concurrently; on the first failure cancel the rest and raise that failure itself.

    The failure is raised bare, not in an ExceptionGroup: callers and the CLI handle a DaemonFailed or a
    StoreError, and the cancellations it caused in the other calls are not news.
    """
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(call)
    except BaseExceptionGroup as failed:
        leaves = _leaves(failed)
        first = next((leaf for leaf in leaves if not isinstance(leaf, asyncio.CancelledError)), leaves[0])
        for other in leaves:
            if other is not first and not isinstance(other, asyncio.CancelledError):
                log.error("event=local_mesh.start_failed error=%s reason=%r", type(other).__name__, str(other))
        raise first from None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _proxy_url(cluster: RunningCluster) -> str:
    """The etcd URL every client but the cluster's own apiserver dials: its proxy (stable across runs)."""
    return f"https://{ports.host_port(cluster.ports.etcd_proxy)}"


def _link(link: pathlib.Path, target: pathlib.Path) -> None:
    """Make link a relative symlink to target (replacing what is there), so every log is under logs/."""
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))
