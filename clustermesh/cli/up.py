"""`clustermesh up`: run a whole local mesh in the foreground until Ctrl-C (clustermesh.local_mesh.LocalMesh).

Progress goes to stderr while it starts. Once every agent is synced, stdout gets, with `-o table`, where
everything listens, the commands to try next and a status table (live on a terminal), or with `-o json` one
line: the content of DIR/mesh.json. SIGINT and SIGTERM only set a stop event; the mesh then stops every process
it started, agents first, etcds last.

Exit codes: 0 stopped by a signal after a successful start; 1 a process failed to start or the agents did
not sync (the message names the process and the tail of its log); 2 invalid flags or DIR in use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import shlex
import signal
import sys
import time

from rich.console import Group
from rich.live import Live
from rich.table import Table

from clustermesh.cli import output
from clustermesh.local_mesh import layout, manifests, mesh, mesh_file, status

_LIVE_INTERVAL = 1.0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `up`."""
    parser = subparsers.add_parser(
        "up", help="run a local mesh: per cluster an etcd, an apiserver and agents (Ctrl-C stops it)",
        description="Run a whole mesh on this machine in the foreground; Ctrl-C or SIGTERM stops every process.",
    )
    parser.add_argument("--clusters", type=int, default=2, metavar="N", help="number of clusters (default 2)")
    parser.add_argument("--nodes", type=int, default=2, metavar="M", help="agents per cluster (default 2)")
    parser.add_argument("--dir", type=pathlib.Path, default=layout.DEFAULT_DIR, metavar="DIR",
                        help=f"state directory, reused by the next up (default {layout.DEFAULT_DIR})")
    parser.add_argument("--example", choices=[e.value for e in mesh.Example], default=mesh.Example.MY_APP.value,
                        help="example global service to deploy in every cluster (default my-app)")
    parser.add_argument("--sync-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="fail if the agents are not synced after this long (default 60)")
    agents = parser.add_argument_group("agent options (recorded in mesh.json for drills; default: the agent's)")
    agents.add_argument("--keepalive-interval", type=float, metavar="S",
                        help="seconds between the agents' liveness probes of each peer etcd")
    agents.add_argument("--keepalive-timeout", type=float, metavar="S",
                        help="seconds a peer etcd may take to answer a probe before it counts as down")
    agents.add_argument("--cache-ttl", type=float, metavar="S",
                        help="revoke a disconnected peer's services after this long (0: keep them)")
    apiservers = parser.add_argument_group("apiserver options (recorded in mesh.json; default: the apiserver's)")
    apiservers.add_argument("--heartbeat-interval", type=float, metavar="S",
                            help="seconds between the apiservers' heartbeat writes")
    output.add_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `up`; see the module docstring for exit codes."""
    config = mesh.Config(
        directory=args.dir, clusters=args.clusters, nodes=args.nodes, example=mesh.Example(args.example),
        sync_timeout=args.sync_timeout,
        agent_options=mesh.AgentOptions(keepalive_interval=args.keepalive_interval,
                                        keepalive_timeout=args.keepalive_timeout, cache_ttl=args.cache_ttl),
        apiserver_options=mesh.ApiserverOptions(heartbeat_interval=args.heartbeat_interval),
    )
    return asyncio.run(_up(config, args.output))


async def _up(config: mesh.Config, output_format: str) -> int:
    err = output.console(stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    started = time.monotonic()
    err.print(f"starting {config.clusters} clusters with {config.nodes} agents each in {config.directory}")
    local = mesh.LocalMesh(config, on_progress=lambda message: err.print(f"  {message}", highlight=False))
    ready = asyncio.Event()
    runner = asyncio.create_task(local.run(ready=ready), name="local mesh")
    try:
        with err.status("starting the mesh") if err.is_terminal else contextlib.nullcontext():
            first = await _wait_any(runner, ready, stop)
        if first is not ready:
            err.print("stopping: agents, then apiservers, then etcds")
            return 0
        if output_format == "json":
            output.print_json_line(mesh_file.to_builtins(local.snapshot()))
        else:
            _print_summary(local.snapshot(), time.monotonic() - started)
        live = output_format == "table" and sys.stdout.isatty()
        watcher = asyncio.create_task(_show_status(local, live=live), name="status")
        try:
            await _wait_any(runner, stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        err.print("stopping: agents, then apiservers, then etcds")
        return 0
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _wait_any(runner: asyncio.Task[None], *events: asyncio.Event) -> asyncio.Event | None:
    """The first of `events` to be set; if the runner ends first, its failure is raised (None if it returned)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait([*waiters, runner], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    for event in events:
        if event.is_set():
            return event
    runner.result()
    return None


def next_commands(mesh: mesh_file.MeshFile) -> list[str]:
    """The commands to try against a running mesh, with its real addresses."""
    first = mesh.clusters[0]
    agent = first.agents[0]
    host, _, port = agent.dns.rpartition(":")
    directory = shlex.quote(mesh.dir)
    commands = [
        f"dig @{host} -p {port} {manifests.APP}.{manifests.NAMESPACE}.svc.cluster.local   "
        f"# {agent.node}'s DNS: backends of every cluster",
        f"clustermesh status --mesh {directory}   # every agent; --agent {shlex.quote(agent.grpc)} for one",
        f"clustermesh resolve {manifests.NAMESPACE}/{manifests.APP} --agent {shlex.quote(agent.grpc)}",
        f"clustermesh kv ls cilium/state/services/v1/ --mesh {directory} --cluster {first.name}",
        f"clustermesh wireguard peers --agent {shlex.quote(agent.grpc)} --mesh {directory}",
        f"$EDITOR {shlex.quote(first.manifests)}/{manifests.APP_FILE}   # scale my-app: every peer's agents follow",
        f"clustermesh drill etcd-hang --mesh {directory} --cluster {first.name}   # hang an etcd, measure, heal",
    ]
    return commands


def _print_summary(mesh: mesh_file.MeshFile, elapsed: float) -> None:
    console = output.console()
    console.print(f"[bold]mesh ready[/bold] in {elapsed:.1f}s: {len(mesh.clusters)} clusters, "
                  f"{sum(len(c.agents) for c in mesh.clusters)} agents — {shlex.quote(mesh.dir)}/mesh.json")
    table = Table(header_style="bold")
    for column in ("CLUSTER", "ID", "POD-CIDRS", "PROCESS", "PID", "LISTENS"):
        table.add_column(column, overflow="fold")
    for cluster in mesh.clusters:
        rows = [
            ("etcd", cluster.etcd.pid, ", ".join(cluster.etcd.endpoints)),
            ("apiserver", cluster.apiserver.pid, f"grpc {cluster.apiserver.grpc}, metrics {cluster.apiserver.metrics}"),
            *((agent.node, agent.pid, f"dns {agent.dns}, metrics {agent.metrics}, grpc {agent.grpc}")
              for agent in cluster.agents),
        ]
        for index, (name, pid, listens) in enumerate(rows):
            first = index == 0
            table.add_row(cluster.name if first else "", str(cluster.id) if first else "",
                          ",".join(cluster.pod_cidrs) if first else "", name, str(pid), listens)
    console.print(table)
    console.print("Try:")
    for command in next_commands(mesh):
        console.print(f"  {command}", highlight=False, soft_wrap=True)
    console.print("Ctrl-C stops every process.")


def status_table(reports: list[status.AgentReport]) -> Table:
    """One row per agent: its peers ready, counts over every peer, and what it still waits for."""
    table = Table(title="agents", header_style="bold")
    for column in ("CLUSTER", "NODE", "PEERS READY", "NODES", "ENDPOINTS", "IDENTITIES", "SERVICES", "STATUS"):
        table.add_column(column, overflow="fold")
    for report in reports:
        peers = list(report.peers.values())
        table.add_row(
            report.cluster, report.node,
            f"{report.ready_peers}/{len(report.expected_peers)}",
            str(sum(p.num_nodes for p in peers)), str(sum(p.num_endpoints for p in peers)),
            str(sum(p.num_identities for p in peers)), str(sum(p.num_services for p in peers)),
            "synced" if report.synced else report.waiting_for(),
        )
    return table


async def _show_status(local: mesh.LocalMesh, *, live: bool) -> None:
    """Print the status table once, or keep it live on a terminal; runs until cancelled."""
    if not live:
        output.console().print(status_table(await status.read_mesh(local.snapshot())))
        return
    console = output.console()
    with Live(console=console, auto_refresh=False) as display:
        while True:
            reports = await status.read_mesh(local.snapshot())
            stamp = time.strftime("%H:%M:%S")
            display.update(Group(status_table(reports), f"updated {stamp}; Ctrl-C stops the mesh"), refresh=True)
            await asyncio.sleep(_LIVE_INTERVAL)
