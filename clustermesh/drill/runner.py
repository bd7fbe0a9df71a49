"""Running one drill, start to verdict, and leaving the mesh as it was found — also on Ctrl-C.

    1. Load the mesh file; connect to the control endpoint (the connection lives as long as the drill, and `up`
       undoes whatever it left broken should the drill die); open the app manifest when the drill edits it.
    2. Observe every agent (clustermesh.drill.observer) and wait until the mesh is healthy: every agent answers,
       every peer is ready, and a comparison is clean. A drill on a mesh that is still recovering would measure
       the previous fault, so an unhealthy mesh is refused (NotHealthy) before anything is broken.
    3. prepare(), start churn (if asked), inject() the fault, hold() it.
    4. heal() and stop churn — in a `finally`, shielded, so a cancellation cannot skip it — then after_heal(),
       and put the app manifest back as it was (also in a `finally`).
    5. settle: compare until clean or the timeout (clustermesh.drill.verdict). Derive the phases that need the
       whole record: cache.converged per agent (the last change of its cache before the final comparison read
       it clean, not before the heal: the manifest restore is the drill's last change, so it is included),
       dns.failover / dns.restored (the scenario judges the recorded answers), the agent's own time of a
       revocation (its first service delete after the disconnect).
    6. watch_after() (apiserver-kill keeps watching that the peers stay connected), checks(), the verdict event,
       the report.

Every task started here (observer, churn) is owned and stopped here. Progress lines go to `progress`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import time
from collections.abc import Callable

from clustermesh import errors
from clustermesh.aio import tasks
from clustermesh.drill import app_manifest, churn, observer, report, scenarios, target, timeline, verdict
from clustermesh.errors import ConfigError
from clustermesh.local_mesh import control

log = logging.getLogger(__name__)

EventName = timeline.EventName
Progress = Callable[[str], None]

# A revocation's services are deleted by the agent just before its status says revoked; the watch timestamp
# may trail the poll by a little, as both come from the agent.
_REVOKE_SLACK = 0.5


class NotHealthy(errors.ClusterMeshError):
    """Raised before any fault when the mesh is not synced and clean: a drill would measure an earlier fault."""


@dataclasses.dataclass(frozen=True)
class DrillConfig:
    """One drill. Construction validates (ConfigError naming the option)."""

    mesh: pathlib.Path
    scenario: str
    cluster: str | None = None
    """The cluster to break; the mesh file's first cluster by default."""
    duration: float = 15.0
    """Seconds the fault is held (etcd-kill, etcd-hang, backends-down, partition); bounds waits in the others."""
    churn: float = 0.0
    """Endpoint changes per second in the broken cluster while the fault lasts; 0 for none."""
    settle_timeout: float = 60.0
    """Seconds the mesh may take to be healthy before the drill, and to reconverge after it."""
    poll_interval: float = observer.DEFAULT_POLL_INTERVAL
    dns_interval: float = observer.DEFAULT_DNS_INTERVAL

    def __post_init__(self) -> None:
        if self.scenario not in scenarios.SCENARIOS:
            raise ConfigError(f"unknown scenario {self.scenario!r}; expected one of {', '.join(scenarios.SCENARIOS)}")
        if self.duration <= 0:
            raise ConfigError(f"--duration: must be positive, got {self.duration:g}")
        if self.churn < 0:
            raise ConfigError(f"--churn: must not be negative, got {self.churn:g}")
        if self.settle_timeout <= 0:
            raise ConfigError(f"--settle-timeout: must be positive, got {self.settle_timeout:g}")


async def run(config: DrillConfig, *, progress: Progress | None = None) -> report.Report:
    """Run the drill and return its report (clean or dirty); see the module docstring.

    Raises ConfigError when the mesh file or the scenario's needs are not met, NotHealthy when the mesh is not
    healthy before the fault, ControlError/StoreError when the mesh cannot be acted on. Whatever happens after
    the fault was injected, it is healed and the manifests restored before this returns or raises.
    """
    say = progress or (lambda message: None)
    mesh = target.load(config.mesh)
    cluster = config.cluster or mesh.clusters[0].name
    mesh.cluster(cluster)
    scenario_type = scenarios.SCENARIOS[config.scenario]
    app = app_manifest.AppManifest.open(mesh, cluster) if scenario_type.needs_app or config.churn else None
    client = await control.ControlClient.connect(mesh.control) if mesh.control else None
    try:
        return await _observed(config, mesh, cluster, scenario_type, app, client, say)
    finally:
        if client is not None:
            await tasks.finish(client.close())


async def _observed(
    config: DrillConfig, mesh: target.Target, cluster: str, scenario_type: type[scenarios.Scenario],
    app: app_manifest.AppManifest | None, client: control.ControlClient | None, say: Progress,
) -> report.Report:
    events = timeline.Timeline()
    watcher = observer.Observer(mesh, events, dns_name=scenarios.APP_DNS_NAME, poll_interval=config.poll_interval,
                                dns_interval=config.dns_interval)
    observed = asyncio.Event()
    ctx = scenarios.Context(mesh=mesh, cluster=cluster, control=client, app=app, timeline=events, observer=watcher,
                            duration=config.duration, wait_timeout=config.settle_timeout)
    scenario = scenario_type(ctx)
    watching = asyncio.create_task(watcher.run(ready=observed), name="drill observer")
    try:
        await _healthy(config, mesh, watcher, watching, observed, app, say)
        result = await _drill(config, scenario, say)
    finally:
        failure = await tasks.finish(_stop(watching))
    if failure is not None:
        # The drill saw nothing after this: its report would be a lie.
        raise RuntimeError("the drill's observer failed") from failure
    return result


async def _stop(task: asyncio.Task[None]) -> BaseException | None:
    """Cancel an owned task and wait for it; return the exception it had failed with, if it had."""
    failure = task.exception() if task.done() and not task.cancelled() else None
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return failure


async def _healthy(
    config: DrillConfig, mesh: target.Target, watcher: observer.Observer, watching: asyncio.Task[None],
    observed: asyncio.Event, app: app_manifest.AppManifest | None, say: Progress,
) -> None:
    say(f"waiting for the mesh to be healthy ({len(mesh.agents)} agents)")
    waiter = asyncio.ensure_future(observed.wait())
    try:
        await asyncio.wait([waiter, watching], timeout=config.settle_timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if watching.done():
        watching.result()  # raises why the observer failed
    if not observed.is_set():
        silent = [name for name, record in watcher.records.items()
                  if not (record.status_seen.is_set() and record.watch_synced.is_set())]
        raise NotHealthy(f"agents not answering within {config.settle_timeout:g}s: {', '.join(silent)}")
    baseline = await verdict.settle(mesh, [app.expectation()] if app is not None else [],
                                    timeout=config.settle_timeout, settled=lambda: not _not_ready(mesh, watcher))
    not_ready = _not_ready(mesh, watcher)
    if not baseline.clean or not_ready:
        dirty = [f"{row.subject}: {row.error or f'{row.stale} stale, {row.missing} missing'}"
                 for row in baseline.rows if not row.clean]
        raise NotHealthy("the mesh is not healthy before the drill (wait for it to settle, or restart it): "
                         + "; ".join([*dirty, *(f"not ready {pair}" for pair in not_ready)]))


def _not_ready(mesh: target.Target, watcher: observer.Observer) -> list[str]:
    """`agent → peer` for every peer an agent does not report ready (as last polled)."""
    return [f"{name} → {peer}" for name, record in watcher.records.items()
            for peer in mesh.peers_of(record.agent.cluster)
            if peer not in record.peers or not record.peers[peer].ready]


async def _drill(config: DrillConfig, scenario: scenarios.Scenario, say: Progress) -> report.Report:
    ctx = scenario.ctx
    events = ctx.timeline
    started_at = time.time()
    churner = churn.Churn(ctx.app, rate=config.churn) if ctx.app is not None and config.churn else None
    churning: asyncio.Task[None] | None = None
    try:
        try:
            await scenario.prepare()
            if churner is not None:
                churning = asyncio.create_task(churner.run(), name="drill churn")
                events.add(time.time(), timeline.DRILL, EventName.CHURN_STARTED, peer=ctx.cluster,
                           detail=f"{config.churn:g} changes/s to my-app in {ctx.cluster}")
            say(f"{scenario.name}: injecting into {ctx.cluster}")
            # The fault takes effect as the call starts (a SIGKILL is seen before the process is reaped).
            injected_at = time.time()
            detail = await scenario.inject()
            events.add(injected_at, timeline.DRILL, EventName.FAULT_INJECTED, peer=ctx.cluster, detail=detail)
            say(f"{scenario.name}: {detail}; holding")
            await scenario.hold()
        finally:
            await tasks.finish(_heal(scenario, churner, churning, say))
        await scenario.after_heal()
    finally:
        if ctx.app is not None:
            ctx.app.restore()
    say("comparing every agent's caches with the truth")
    expectations = [ctx.app.expectation()] if ctx.app is not None else []
    last = await verdict.settle(ctx.mesh, expectations, timeout=config.settle_timeout,
                                settled=lambda: not _not_ready(ctx.mesh, ctx.observer))
    _derive(scenario, last)
    await scenario.watch_after()
    checks = await scenario.checks()
    clean = last.clean and all(check.ok for check in checks)
    failed = [check.name for check in checks if not check.ok]
    events.add(time.time(), timeline.DRILL, EventName.VERDICT, detail=(
        f"{'clean' if clean else 'dirty'}: {last.stale} stale, {last.missing} missing"
        + (f"; failed checks: {', '.join(failed)}" if failed else "")))
    return report.build(scenario, events, last, checks, churn_changes=churner.changes if churner else 0,
                        churn_rate=config.churn, started_at=started_at)


async def _heal(
    scenario: scenarios.Scenario, churner: churn.Churn | None, churning: asyncio.Task[None] | None, say: Progress,
) -> None:
    ctx = scenario.ctx
    detail = await scenario.heal()
    if detail:
        ctx.timeline.add(time.time(), timeline.DRILL, EventName.FAULT_HEALED, peer=ctx.cluster, detail=detail)
        say(f"{scenario.name}: {detail}")
    if churning is not None and churner is not None:
        failure = await _stop(churning)
        if failure is not None:
            raise failure
        ctx.timeline.add(time.time(), timeline.DRILL, EventName.CHURN_STOPPED, peer=ctx.cluster,
                         detail=f"{churner.changes} changes written")


def _derive(scenario: scenarios.Scenario, last: verdict.Comparison) -> None:
    """Add the phases only the whole record can date (see the module docstring)."""
    ctx = scenario.ctx
    events, records = ctx.timeline, ctx.observer.records
    fault = events.first(EventName.FAULT_INJECTED)
    healed = events.first(EventName.FAULT_HEALED)
    if fault is None or healed is None:
        return
    rows = {row.subject: row for row in last.rows}
    for agent in ctx.mesh.agents:
        row = rows.get(agent.node)
        if row is None or not row.clean:
            continue
        record = records[agent.node]
        last_change = record.last_change(before=row.at)
        readies = [e.at for e in events.events(EventName.PEER_READY, agent=agent.node) if e.at <= row.at]
        converged = max([healed.at, *readies, *([last_change] if last_change is not None else [])])
        events.add(converged, agent.node, EventName.CACHE_CONVERGED,
                   detail="its caches equal its peers' etcds" + (" (no change needed)" if converged == healed.at
                                                                  else ""))
    for revoked in events.events(EventName.PEER_REVOKED):
        record = records[revoked.agent]
        cut = events.first(EventName.PEER_DISCONNECTED, agent=revoked.agent, peer=revoked.peer, after=fault.at)
        start = cut.at if cut is not None else fault.at
        deletes = [c.at for c in record.changes if c.deleted and c.kind == "services" and c.cluster == revoked.peer
                   and start <= c.at <= revoked.at + _REVOKE_SLACK]
        if deletes:
            events.retime(revoked, min(deletes))
    if not scenario.dns_failover:
        return
    for agent in scenario.affected:
        answers = records[agent.node].dns
        failover = next((a for a in answers if a.at >= fault.at and a.ips is not None and scenario.failed_over(a.ips)),
                        None)
        if failover is None:
            continue
        events.add(failover.at, agent.node, EventName.DNS_FAILOVER, peer=ctx.cluster,
                   detail=f"answers {', '.join(sorted(failover.ips or ())) or 'nothing'}")
        restored = next((a for a in answers if a.at >= max(failover.at, healed.at) and a.ips is not None
                         and scenario.restored(a.ips)), None)
        if restored is not None:
            events.add(restored.at, agent.node, EventName.DNS_RESTORED, peer=ctx.cluster,
                       detail=f"answers {', '.join(sorted(restored.ips or ()))}")


