"""The report of one drill: the verdict, the times that matter per agent and worst over agents, and the timeline.

Built once the drill is over, from the timeline, the last comparison and the checks; written as JSON (`--report`,
`-o json`), printed as tables by the CLI and drawn by clustermesh.drill.plot. Times are seconds:

    detection_s   fault → the agent marks the cluster disconnected            (worst over the affected agents)
    failover_s    fault → the agent's DNS stops sending clients to the broken backends    (worst, affected)
    revoked_s     fault → the agent withdraws the cluster's services (cache TTL)          (worst, affected)
    outage_s      the agent's disconnection → the peer ready again                      (worst, affected)
    reconverge_s  heal → the agent's cache equals the truth again                       (worst over every agent)

A time is null where the scenario has no such phase or it did not happen. `verdict` is "clean" when no entry is
stale or missing anywhere and every check passed. The timeline's `t` is relative to the fault.
"""

# STABLE REPORT FORMAT: scripts and benchmarks read these keys; only add to it.

from __future__ import annotations

import datetime
from typing import Literal

import msgspec

from clustermesh.drill import scenarios, timeline, verdict

EventName = timeline.EventName
Verdict = Literal["clean", "dirty"]


class TimelineEntry(msgspec.Struct, kw_only=True):
    """One event, `t` seconds after the fault."""

    t: float
    agent: str
    event: str
    peer: str = ""
    detail: str = ""


class AgentResult(msgspec.Struct, kw_only=True):
    """One agent: its times (see the module docstring) and its comparison with the truth."""

    agent: str
    cluster: str
    affected: bool
    detection_s: float | None = None
    failover_s: float | None = None
    revoked_s: float | None = None
    outage_s: float | None = None
    reconverge_s: float | None = None
    stale: int = 0
    missing: int = 0
    examples: list[str] = msgspec.field(default_factory=list)
    error: str = ""


class SourceResult(msgspec.Struct, kw_only=True):
    """A cluster's etcd compared with the manifests the drill edited (lost deletes at the apiserver)."""

    subject: str
    cluster: str
    stale: int
    missing: int
    examples: list[str] = msgspec.field(default_factory=list)
    error: str = ""


class CheckResult(msgspec.Struct, kw_only=True):
    """One check of the scenario."""

    name: str
    ok: bool
    detail: str = ""


class Report(msgspec.Struct, kw_only=True):
    """The whole report."""

    scenario: str
    cluster: str
    verdict: Verdict
    stale: int
    missing: int
    detection_s: float | None
    failover_s: float | None
    revoked_s: float | None
    reconverge_s: float | None
    method: str
    duration_s: float
    churn_rate: float
    churn_changes: int
    started_at: str
    mesh: str
    agents: list[AgentResult]
    sources: list[SourceResult]
    checks: list[CheckResult]
    expected_phases: list[str]
    notes: list[str]
    timeline: list[TimelineEntry]


def _since(event: timeline.Event | None, origin: float | None) -> float | None:
    if event is None or origin is None:
        return None
    return round(max(0.0, event.at - origin), 3)


def _worst(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def _agent_result(
    events: timeline.Timeline, agent: str, cluster: str, *, peer: str, affected: bool, fault_at: float | None,
    healed_at: float | None, row: verdict.Difference | None,
) -> AgentResult:
    result = AgentResult(agent=agent, cluster=cluster, affected=affected)
    if affected:
        disconnected = events.first(EventName.PEER_DISCONNECTED, agent=agent, peer=peer, after=fault_at)
        result.detection_s = _since(disconnected, fault_at)
        result.failover_s = _since(events.first(EventName.DNS_FAILOVER, agent=agent, peer=peer, after=fault_at),
                                   fault_at)
        result.revoked_s = _since(events.first(EventName.PEER_REVOKED, agent=agent, peer=peer, after=fault_at),
                                  fault_at)
        if disconnected is not None:
            ready = events.first(EventName.PEER_READY, agent=agent, peer=peer, after=disconnected.at)
            result.outage_s = _since(ready, disconnected.at)
    result.reconverge_s = _since(events.first(EventName.CACHE_CONVERGED, agent=agent, after=healed_at), healed_at)
    if row is not None:
        result.stale, result.missing, result.error = row.stale, row.missing, row.error
        result.examples = list(row.examples)
    return result


def build(
    scenario: scenarios.Scenario,
    events: timeline.Timeline,
    last: verdict.Comparison,
    checks: list[scenarios.Check],
    *,
    churn_changes: int,
    churn_rate: float,
    started_at: float,
) -> Report:
    """The report of a finished drill."""
    ctx = scenario.ctx
    fault_at = events.origin
    healed = events.first(EventName.FAULT_HEALED)
    healed_at = healed.at if healed is not None else None
    rows = {row.subject: row for row in last.rows}
    affected = {agent.node for agent in scenario.affected}
    agents = [
        _agent_result(events, agent.node, agent.cluster, peer=ctx.cluster, affected=agent.node in affected,
                      fault_at=fault_at, healed_at=healed_at, row=rows.get(agent.node))
        for agent in ctx.mesh.agents
    ]
    agent_names = {agent.node for agent in ctx.mesh.agents}
    sources = [SourceResult(subject=row.subject, cluster=row.cluster, stale=row.stale, missing=row.missing,
                            examples=list(row.examples), error=row.error)
               for row in last.rows if row.subject not in agent_names]
    clean = last.clean and all(check.ok for check in checks)
    origin = fault_at if fault_at is not None else started_at
    return Report(
        scenario=scenario.name,
        cluster=ctx.cluster,
        verdict="clean" if clean else "dirty",
        stale=last.stale,
        missing=last.missing,
        detection_s=_worst([a.detection_s for a in agents if a.affected]),
        failover_s=_worst([a.failover_s for a in agents if a.affected]) if scenario.dns_failover else None,
        revoked_s=_worst([a.revoked_s for a in agents if a.affected]),
        reconverge_s=_worst([a.reconverge_s for a in agents]),
        method=scenario.method,
        duration_s=ctx.duration,
        churn_rate=churn_rate,
        churn_changes=churn_changes,
        started_at=datetime.datetime.fromtimestamp(started_at, datetime.UTC).isoformat(timespec="milliseconds"),
        mesh=str(ctx.mesh.directory),
        agents=agents,
        sources=sources,
        checks=[CheckResult(name=c.name, ok=c.ok, detail=c.detail) for c in checks],
        expected_phases=[phase.value for phase in scenario.expected()],
        notes=list(scenario.notes),
        timeline=[TimelineEntry(t=round(e.at - origin, 3), agent=e.agent, event=e.event.value, peer=e.peer,
                                detail=e.detail) for e in events.events()],
    )


def to_builtins(report: Report) -> dict[str, object]:
    """The report as JSON-ready builtins."""
    value: dict[str, object] = msgspec.to_builtins(report)
    return value


def encode(report: Report) -> bytes:
    """The report as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"

