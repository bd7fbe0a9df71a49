"""`clustermesh drill SCENARIO --mesh DIR`: break one cluster of a running mesh, measure, heal, and judge.

Progress goes to stderr; the report to stdout, as tables (summary, agents, checks, notes, timeline) or with
`-o json` as the report's JSON (clustermesh.drill.report); `--report FILE` writes the JSON and `--plot FILE` the
PNG timeline in either case. SIGINT and SIGTERM only set a stop event: the drill is then cancelled, which heals
the fault and restores the manifests before the command exits.

Exit codes: 0 the verdict is clean; 1 it is dirty, the mesh was not healthy before the drill, or the mesh could not
be acted on; 2 invalid flags or a mesh file that does not fit the scenario; 130 interrupted (after healing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import signal

from rich.table import Table

from clustermesh import drill
from clustermesh.cli import output
from clustermesh.drill import report, runner

EXIT_CLEAN = 0
EXIT_DIRTY = 1
# The value clustermesh.cli.main uses for an interrupted command (this module cannot import main: main imports it).
EXIT_INTERRUPTED = 130


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `drill`."""
    scenario_help = "; ".join(f"{name}: {kind.summary}" for name, kind in drill.SCENARIOS.items())
    parser = subparsers.add_parser(
        "drill", help="a failover drill against a running mesh: break, measure, heal, judge",
        description=f"Scenarios — {scenario_help}. Exit 0 only when the verdict is clean.",
    )
    parser.add_argument("scenario", choices=list(drill.SCENARIOS), metavar="SCENARIO",
                        help=f"one of {', '.join(drill.SCENARIOS)}")
    parser.add_argument("--mesh", type=pathlib.Path, required=True, metavar="DIR",
                        help="the mesh directory (DIR/mesh.json; `clustermesh up --dir DIR`)")
    parser.add_argument("--cluster", metavar="NAME", help="the cluster to break (default: the first one)")
    parser.add_argument("--duration", type=float, default=runner.DrillConfig.duration, metavar="S",
                        help=f"seconds the fault lasts (default {runner.DrillConfig.duration:g})")
    parser.add_argument("--churn", type=float, default=0.0, metavar="RATE",
                        help="endpoint changes per second in the broken cluster during the fault (default 0)")
    parser.add_argument("--settle-timeout", type=float, default=runner.DrillConfig.settle_timeout, metavar="S",
                        help="seconds the mesh may take to be healthy before, and to reconverge after "
                             f"(default {runner.DrillConfig.settle_timeout:g})")
    parser.add_argument("--report", type=pathlib.Path, metavar="FILE.json", help="write the report as JSON")
    parser.add_argument("--plot", type=pathlib.Path, metavar="FILE.png", help="draw the timeline per agent")
    output.add_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle `drill`; see the module docstring for exit codes."""
    config = runner.DrillConfig(mesh=args.mesh, scenario=args.scenario, cluster=args.cluster,
                                duration=args.duration, churn=args.churn, settle_timeout=args.settle_timeout)
    result = asyncio.run(_run(config))
    if result is None:
        return EXIT_INTERRUPTED
    if args.report is not None:
        args.report.write_bytes(report.encode(result))
    if args.plot is not None:
        drill.write_plot(result, args.plot)
    if args.output == "json":
        output.print_json(report.to_builtins(result))
    else:
        _print(result)
    return EXIT_CLEAN if result.verdict == "clean" else EXIT_DIRTY


async def _run(config: runner.DrillConfig) -> drill.Report | None:
    """The report, or None when a signal stopped the drill (after it healed)."""
    err = output.console(stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    drilling = asyncio.create_task(drill.run(config, progress=lambda line: err.print(f"  {line}", highlight=False)),
                                   name="drill")
    stopping = asyncio.create_task(stop.wait(), name="stop signal")
    try:
        await asyncio.wait([drilling, stopping], return_when=asyncio.FIRST_COMPLETED)
        if drilling.done():
            return drilling.result()
        err.print("interrupted: healing the fault and restoring the manifests")
        drilling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drilling
        err.print("interrupted: the mesh is as the drill found it")
        return None
    finally:
        stopping.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _print(result: drill.Report) -> None:
    console = output.console()
    style = "bold green" if result.verdict == "clean" else "bold red"
    console.print(f"drill [bold]{result.scenario}[/bold] on {result.cluster}: [{style}]{result.verdict}[/{style}] — "
                  f"{result.stale} stale, {result.missing} missing"
                  + (f"; method {result.method}" if result.method else ""))
    console.print(f"worst agent: detection {_seconds(result.detection_s)}, failover {_seconds(result.failover_s)}, "
                  f"revoked {_seconds(result.revoked_s)}, reconverge {_seconds(result.reconverge_s)}; "
                  f"fault held {result.duration_s:g}s, churn {result.churn_changes} changes")
    output.print_table(
        ("AGENT", "CLUSTER", "AFFECTED", "DETECTION", "FAILOVER", "REVOKED", "OUTAGE", "RECONVERGE", "STALE",
         "MISSING", "EXAMPLES"),
        [(a.agent, a.cluster, "yes" if a.affected else "", _seconds(a.detection_s), _seconds(a.failover_s),
          _seconds(a.revoked_s), _seconds(a.outage_s), _seconds(a.reconverge_s), a.stale, a.missing,
          a.error or "; ".join(a.examples)) for a in result.agents],
        title="agents",
    )
    if result.sources:
        output.print_table(("SOURCE", "STALE", "MISSING", "EXAMPLES"),
                           [(s.subject, s.stale, s.missing, s.error or "; ".join(s.examples)) for s in result.sources],
                           title="etcd against the manifests")
    checks = Table(title="checks", header_style="bold")
    for column in ("CHECK", "OK", "DETAIL"):
        checks.add_column(column, overflow="fold")
    for check in result.checks:
        checks.add_row(check.name, "[green]yes[/green]" if check.ok else "[red]no[/red]", check.detail)
    console.print(checks)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    output.print_table(("T", "AGENT", "EVENT", "PEER", "DETAIL"),
                       [(f"{e.t:+.3f}", e.agent, e.event, e.peer, e.detail) for e in result.timeline],
                       title="timeline (seconds since the fault)")
