"""The scenarios: what each drill breaks, how long, what the mesh is expected to show, and what must hold after.

A scenario is a small class over a Context (the mesh, the affected cluster, the control connection, the app
manifest, the timeline and the observer). The runner (clustermesh.drill.runner) calls, in order: prepare(),
inject(), hold(), heal() — also on Ctrl-C or failure — then after_heal(); after the verdict's comparison
watch_after(), then checks(). A scenario says which timeline phases must appear (expected(): drill-level ones
once, agent-level ones for every affected agent) and, for DNS failover, which answers count as failed over and
as restored.

    etcd-kill       SIGKILL the cluster's etcd; start it again after --duration.
    etcd-hang       SIGSTOP the cluster's etcd (connections stay open, nothing answers); SIGCONT after --duration.
    apiserver-kill  SIGKILL the cluster's apiserver; `up` restarts it (as a Deployment would) and it resyncs;
                    the peers must then stay connected for --duration.
    backends-down   every local endpoint of my-app (affinity local) not ready: DNS must fail over to the peers'
                    backends; ready again after --duration.
    partition       cut the cluster's etcd off from its peers' agents (the proxy they dial blackholes traffic);
                    restore after --duration.
    cert-rotate     new certificates for the cluster, handed to its peers: every agent must re-dial with the
                    new pair by itself, reconnect at most once, and nothing may restart.
    compaction      cut the peers off, churn, compact the etcd past every revision they saw, restore: agents
                    must resync without missing a delete.

Peers' agents revoke a dead cluster's services only with a cache TTL (`up --cache-ttl`); the DNS failover and
revocation phases of etcd-kill, etcd-hang and partition are expected only when the mesh file says
the agents have one and the fault lasts long enough for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import ClassVar

from clustermesh.drill import app_manifest, faults, observer, target, timeline, truth, verdict
from clustermesh.errors import ConfigError
from clustermesh.local_mesh import control, manifests

EventName = timeline.EventName

# agent/config.py's defaults (a drill may not import the agent): what a null in mesh.json agent_options means.
AGENT_DEFAULT_KEEPALIVE_INTERVAL = 5.0
AGENT_DEFAULT_KEEPALIVE_TIMEOUT = 5.0
APP_DNS_NAME = f"{manifests.APP}.{manifests.NAMESPACE}.svc.cluster.local"
_WAIT_POLL = 0.05
# Agent-level phases; the others are the drill's own.
_AGENT_PHASES = frozenset({
    EventName.PEER_DISCONNECTED, EventName.PEER_RECONNECTED, EventName.PEER_READY, EventName.PEER_REVOKED,
    EventName.PEER_RESTORED, EventName.DNS_FAILOVER, EventName.DNS_RESTORED, EventName.CACHE_CONVERGED,
})


@dataclasses.dataclass(frozen=True)
class Check:
    """One thing that must hold after a drill, besides zero stale and zero missing entries."""

    name: str
    ok: bool
    detail: str = ""


@dataclasses.dataclass
class Context:
    """What a scenario acts on and reads. `control` is None when the mesh file names no control endpoint; `app`
    is the affected cluster's app manifest when the drill edits it (churn, backends-down, compaction)."""

    mesh: target.Target
    cluster: str
    control: control.ControlClient | None
    app: app_manifest.AppManifest | None
    timeline: timeline.Timeline
    observer: observer.Observer
    duration: float
    wait_timeout: float


class Scenario:
    """The base: a fault on one cluster, held for the duration, seen by the other clusters' agents."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_control: ClassVar[bool] = True
    needs_app: ClassVar[bool] = False
    method: ClassVar[str] = ""
    """How the fault is made, when there is a choice (partition: the TCP proxy)."""

    def __init__(self, ctx: Context) -> None:
        if self.needs_control and ctx.control is None:
            raise ConfigError(f"{self.name} acts through the mesh's control endpoint, and the mesh file names none "
                              "(mesh.json `control`; `clustermesh up` serves one)")
        if self.needs_app and ctx.app is None:
            raise ConfigError(f"{self.name} edits the example app of {ctx.cluster}")
        self.ctx = ctx
        self.fault = self.make_fault()
        self.notes: list[str] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} cluster={self.ctx.cluster}>"

    @property
    def control(self) -> control.ControlClient:
        assert self.ctx.control is not None  # checked at construction
        return self.ctx.control

    def make_fault(self) -> faults.Fault | None:
        """The injector inject() and heal() drive; None for a scenario that overrides both."""
        return None

    @property
    def affected(self) -> tuple[target.AgentTarget, ...]:
        """The agents whose reaction the scenario measures: those following the affected cluster."""
        return tuple(agent for agent in self.ctx.mesh.agents if agent.cluster != self.ctx.cluster)

    def expected(self) -> tuple[EventName, ...]:
        """The phases that must appear on the timeline."""
        return (EventName.FAULT_INJECTED, EventName.FAULT_HEALED, EventName.CACHE_CONVERGED, EventName.VERDICT)

    # --- DNS ----------------------------------------------------------------------------------------------

    @property
    def dns_failover(self) -> bool:
        """Whether the affected agents' DNS is expected to fail over (and back)."""
        return False

    def failed_over(self, ips: frozenset[str]) -> bool:
        """An answer that no longer sends clients to the broken backends."""
        return False

    def restored(self, ips: frozenset[str]) -> bool:
        """An answer that sends clients to the healed backends again."""
        return False

    # --- steps --------------------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Set up before the fault (the baseline is already clean)."""

    async def inject(self) -> str:
        assert self.fault is not None, f"{self.name} overrides inject()"
        return await self.fault.inject()

    async def hold(self) -> None:
        """Keep the fault for the duration (a drill's duration is the product, not a synchronisation)."""
        await asyncio.sleep(self.ctx.duration)

    async def heal(self) -> str:
        """Undo the fault; idempotent, and a no-op before inject() (the runner calls it whatever happened)."""
        return await self.fault.heal() if self.fault is not None else ""

    async def after_heal(self) -> None:
        """Wait for what must happen before the app manifest is restored and the verdict taken: with a DNS
        failover, the affected agents answering as before the fault again (backends-down's "local backends
        only" holds only while its affinity annotation does, which the restore removes)."""
        if not self.dns_failover:
            return
        healed = self.ctx.timeline.first(EventName.FAULT_HEALED)
        since = healed.at if healed is not None else time.time()
        records = [self.ctx.observer.records[agent.node] for agent in self.affected]
        await self._until("the affected agents' DNS to answer as before the fault", lambda: all(
            any(answer.at >= since and answer.ips is not None and self.restored(answer.ips) for answer in r.dns)
            for r in records), timeout=self.ctx.wait_timeout)

    async def watch_after(self) -> None:
        """Keep observing after the verdict's comparison, before the checks (nothing by default)."""

    async def checks(self) -> list[Check]:
        """What must hold besides the entry counts: every expected phase, every agent ready again and not
        losing a peer again once it had recovered."""
        return [self._phases_check(), self._ready_check(), self._stable_check()]

    # --- helpers ------------------------------------------------------------------------------------------

    def _phases_check(self) -> Check:
        events = self.ctx.timeline
        lacking = []
        for phase in self.expected():
            if phase is EventName.VERDICT:
                continue  # the drill's last event, recorded after the checks
            if phase not in _AGENT_PHASES:
                if events.first(phase) is None:
                    lacking.append(phase.value)
                continue
            agents = self.ctx.mesh.agents if phase is EventName.CACHE_CONVERGED else self.affected
            peer = None if phase is EventName.CACHE_CONVERGED else self.ctx.cluster
            lacking += [f"{phase.value} ({agent.node})" for agent in agents
                        if events.first(phase, agent=agent.node, peer=peer) is None]
        return Check("every phase", not lacking, "missing: " + ", ".join(lacking) if lacking else "")

    def _ready_check(self) -> Check:
        records = self.ctx.observer.records
        lacking = [f"{node} → {peer}" for node, record in records.items()
                   for peer in self.ctx.mesh.peers_of(record.agent.cluster)
                   if peer not in record.peers or not record.peers[peer].ready]
        return Check("every peer ready after", not lacking, "not ready: " + ", ".join(lacking) if lacking else "")

    def _stable_check(self) -> Check:
        """No agent loses a peer again after it recovered from the fault (or after the heal, if it never lost it):
        a flap means the mesh did not heal, whatever the caches say at the moment of the verdict."""
        events = self.ctx.timeline
        healed = events.first(EventName.FAULT_HEALED)
        origin = events.origin or 0.0
        if healed is None:
            return Check("stable after recovery", False, "the fault was never healed")
        flaps = []
        for name, record in self.ctx.observer.records.items():
            for peer in self.ctx.mesh.peers_of(record.agent.cluster):
                changes = [e for e in events.events(agent=name, peer=peer)
                           if e.event in (EventName.PEER_DISCONNECTED, EventName.PEER_READY)]
                before = [e for e in changes if e.at < healed.at]
                recovered: float | None = healed.at
                if before and before[-1].event is EventName.PEER_DISCONNECTED:
                    ready = next((e for e in changes if e.event is EventName.PEER_READY and e.at >= healed.at), None)
                    recovered = ready.at if ready is not None else None
                if recovered is None:
                    continue  # never recovered: "every peer ready after" says so
                flap = next((e for e in changes if e.event is EventName.PEER_DISCONNECTED and e.at > recovered), None)
                if flap is not None:
                    flaps.append(f"{name} → {peer} at {flap.at - origin:+.1f}s: {flap.detail}")
        return Check("stable after recovery", not flaps, "; ".join(flaps))

    async def _until(self, what: str, done: Callable[[], bool], *, timeout: float) -> bool:
        """Poll `done()` until true; after `timeout`, note that `what` did not happen and return False.

        The drill's own waits on the mesh (which it observes by polling anyway); the phases check reports what
        never happened, so giving up here only moves the drill on.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            if loop.time() >= deadline:
                self.notes.append(f"gave up waiting for {what} after {timeout:g}s")
                return False
            await asyncio.sleep(_WAIT_POLL)
        return True


class PeerFault(Scenario):
    """A fault of the cluster's etcd as its peers see it: detection, optional revocation, reconnection."""

    @property
    def detection_bound(self) -> float:
        """Seconds within which agents must notice a silent etcd (their keepalive interval + timeout)."""
        options = self.ctx.mesh.agent_options
        interval = options.keepalive_interval or AGENT_DEFAULT_KEEPALIVE_INTERVAL
        timeout = options.keepalive_timeout or AGENT_DEFAULT_KEEPALIVE_TIMEOUT
        return interval + timeout

    @property
    def revokes(self) -> bool:
        """Whether the agents revoke the cluster's services during the fault (a cache TTL that fits)."""
        ttl = self.ctx.mesh.agent_options.cache_ttl or 0.0
        return ttl > 0 and self.ctx.duration >= self.detection_bound + ttl + 1.0

    @property
    def dns_failover(self) -> bool:
        return self.revokes

    def expected(self) -> tuple[EventName, ...]:
        phases = [EventName.FAULT_INJECTED, EventName.PEER_DISCONNECTED, EventName.FAULT_HEALED,
                  EventName.PEER_RECONNECTED, EventName.PEER_READY, EventName.CACHE_CONVERGED, EventName.VERDICT]
        if self.revokes:
            phases[2:2] = [EventName.PEER_REVOKED, EventName.DNS_FAILOVER]
            phases += [EventName.PEER_RESTORED, EventName.DNS_RESTORED]
        return tuple(phases)

    def failed_over(self, ips: frozenset[str]) -> bool:
        broken = self.ctx.mesh.cluster(self.ctx.cluster)
        return not any(broken.owns(ip) for ip in ips)

    def restored(self, ips: frozenset[str]) -> bool:
        broken = self.ctx.mesh.cluster(self.ctx.cluster)
        return any(broken.owns(ip) for ip in ips)


class EtcdKill(PeerFault):
    name = "etcd-kill"
    summary = "SIGKILL the cluster's etcd, start it again after --duration"

    def make_fault(self) -> faults.Fault:
        return faults.EtcdKill(self.control, self.ctx.cluster)


class EtcdHang(PeerFault):
    name = "etcd-hang"
    summary = "SIGSTOP the cluster's etcd (TCP stays open, nothing answers), SIGCONT after --duration"

    def make_fault(self) -> faults.Fault:
        return faults.EtcdHang(self.control, self.ctx.cluster)


class Partition(PeerFault):
    name = "partition"
    summary = "cut the cluster's etcd off from its peers' agents, restore after --duration"
    method = "tcp-proxy"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        _require_proxy(self.name, ctx)
        self.notes.append(
            "partition method: tcp-proxy — the TCP proxy in front of the etcd (mesh.json etcd.endpoints) blackholes "
            "every byte; connections stay open, as in a partition that drops packets. Network namespaces are not "
            "used: `clustermesh up` runs every process on loopback in one namespace (see docs/drills.md)"
        )

    def make_fault(self) -> faults.Fault:
        return faults.ProxyCut(self.control, self.ctx.cluster)


class Compaction(PeerFault):
    name = "compaction"
    summary = "cut the peers off, churn, compact the etcd past what they saw, restore"
    needs_app = True
    method = "tcp-proxy"
    burst = 5
    """Churn generations written during the cut, on top of --churn if any: the deletes the peers must not miss."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        _require_proxy(self.name, ctx)
        self._seen = 0

    def make_fault(self) -> faults.Fault:
        return faults.ProxyCut(self.control, self.ctx.cluster)

    @property
    def revokes(self) -> bool:
        # The cut lasts until the compaction is done, not for a set duration: whether a TTL expires is chance.
        return False

    def expected(self) -> tuple[EventName, ...]:
        phases = list(super().expected())
        phases.insert(phases.index(EventName.FAULT_HEALED), EventName.ETCD_COMPACTED)
        return tuple(phases)

    async def inject(self) -> str:
        etcd = self.ctx.mesh.cluster(self.ctx.cluster).etcd
        self._seen = await faults.revision(etcd)
        return await super().inject() + f" (peers have seen revision {self._seen})"

    async def hold(self) -> None:
        events, fault_at = self.ctx.timeline, self.ctx.timeline.origin
        await self._until("every peer agent to notice the cut", lambda: all(
            events.first(EventName.PEER_DISCONNECTED, agent=a.node, peer=self.ctx.cluster, after=fault_at)
            for a in self.affected), timeout=self.detection_bound + self.ctx.duration)
        app = self.ctx.app
        assert app is not None
        for _ in range(self.burst):
            app.step()
        cluster = self.ctx.mesh.cluster(self.ctx.cluster)
        await self._until_published(cluster, app)
        compacted = await faults.compact(cluster.etcd)
        self.ctx.timeline.add(time.time(), timeline.DRILL, EventName.ETCD_COMPACTED, peer=self.ctx.cluster,
                              detail=f"history compacted up to revision {compacted}; peers had seen {self._seen}")

    async def _until_published(self, cluster: target.ClusterTarget, app: app_manifest.AppManifest) -> None:
        # Compacting before the apiserver published the burst would compact away nothing the peers missed: wait
        # until the etcd holds what the manifest now says (its deletes included).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ctx.wait_timeout
        while True:
            published = verdict.app_row(app.expectation(), await truth.read_cluster(cluster), time.time())
            if published.clean:
                return
            if loop.time() >= deadline:
                self.notes.append(f"the apiserver had not published the churn within {self.ctx.wait_timeout:g}s: "
                                  "the compaction may cover less than it should")
                return
            await asyncio.sleep(_WAIT_POLL)


class ApiserverKill(Scenario):
    name = "apiserver-kill"
    summary = ("SIGKILL the cluster's apiserver; it is restarted (as a Deployment would) and resyncs, and the "
               "peers must stay connected for --duration after")

    def make_fault(self) -> faults.Fault:
        return faults.ApiserverKill(self.control, self.ctx.cluster, timeout=self.ctx.wait_timeout)

    def expected(self) -> tuple[EventName, ...]:
        return (EventName.FAULT_INJECTED, EventName.COMPONENT_RESTARTED, EventName.FAULT_HEALED,
                EventName.CACHE_CONVERGED, EventName.VERDICT)

    async def hold(self) -> None:
        # The fault ends when the restarted apiserver is ready: heal() waits for that, not for a duration.
        pass

    async def heal(self) -> str:
        detail = await super().heal()
        if detail:
            self.ctx.timeline.add(time.time(), f"apiserver {self.ctx.cluster}", EventName.COMPONENT_RESTARTED,
                                  peer=self.ctx.cluster, detail=detail)
        return detail

    async def watch_after(self) -> None:
        """Watch the mesh for --duration after the verdict's comparison: the new apiserver's heartbeats must keep
        every peer connected (the stability check reports a peer an agent lost meanwhile)."""
        await asyncio.sleep(self.ctx.duration)


class BackendsDown(Scenario):
    name = "backends-down"
    summary = "every local backend of my-app (affinity local) down; DNS must fail over to the peers, then back"
    needs_control = False
    needs_app = True

    def make_fault(self) -> faults.Fault:
        assert self.ctx.app is not None
        return faults.BackendsDown(self.ctx.app)

    @property
    def affected(self) -> tuple[target.AgentTarget, ...]:
        """The agents of the cluster itself: their DNS answers for the app must move to the peers' backends."""
        return self.ctx.mesh.cluster(self.ctx.cluster).agents

    @property
    def dns_failover(self) -> bool:
        return True

    def expected(self) -> tuple[EventName, ...]:
        return (EventName.FAULT_INJECTED, EventName.DNS_FAILOVER, EventName.FAULT_HEALED, EventName.DNS_RESTORED,
                EventName.CACHE_CONVERGED, EventName.VERDICT)

    def failed_over(self, ips: frozenset[str]) -> bool:
        local = self.ctx.mesh.cluster(self.ctx.cluster)
        return bool(ips) and not any(local.owns(ip) for ip in ips)

    def restored(self, ips: frozenset[str]) -> bool:
        local = self.ctx.mesh.cluster(self.ctx.cluster)
        return bool(ips) and all(local.owns(ip) for ip in ips)

    async def prepare(self) -> None:
        """Annotate the app `affinity: local` and wait until the cluster's agents answer with local backends only."""
        assert self.ctx.app is not None
        self.ctx.app.set_affinity("local")
        records = [self.ctx.observer.records[agent.node] for agent in self.affected]
        local = await self._until("the cluster's agents to answer with local backends only (affinity local)",
                                  lambda: all(r.dns and r.dns[-1].ips is not None and self.restored(r.dns[-1].ips)
                                              for r in records), timeout=self.ctx.wait_timeout)
        if not local:
            raise ConfigError(f"the agents of {self.ctx.cluster} did not switch my-app to its local backends after "
                              "the affinity annotation: is the agent reading the cluster's manifests?")


class CertRotate(Scenario):
    name = "cert-rotate"
    summary = ("new certificates for the cluster, handed to its peers; every agent re-dials once with them by "
               "itself and nothing restarts")

    def expected(self) -> tuple[EventName, ...]:
        return (EventName.FAULT_INJECTED, EventName.PEER_RECONNECTED, EventName.PEER_READY, EventName.FAULT_HEALED,
                EventName.CACHE_CONVERGED, EventName.VERDICT)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._before: dict[str, tuple[object, object]] = {}
        self._injected = 0.0

    async def prepare(self) -> None:
        self._before = _processes(await self.control.call(control.Op.STATUS))

    async def inject(self) -> str:
        self._injected = time.time()
        written = await faults.rotate_certs(self.control, self.ctx.cluster)
        return f"certificates of {self.ctx.cluster} re-issued from its CA ({len(written)} files); peer files updated"

    async def hold(self) -> None:
        """Wait until every peer agent has re-dialled with the new pair (its peer file's certificates changed)
        and is ready again."""
        events = self.ctx.timeline
        await self._until("every peer agent to re-dial and be ready again", lambda: all(
            events.first(EventName.PEER_READY, agent=agent.node, peer=self.ctx.cluster, after=self._injected)
            for agent in self.affected), timeout=self.ctx.wait_timeout)

    async def heal(self) -> str:
        # Rotation is not undone: the new certificates stay.
        return "the new certificates stay"

    async def checks(self) -> list[Check]:
        checks = await super().checks()
        after = _processes(await self.control.call(control.Op.STATUS))
        restarted = sorted(name for name in self._before if after.get(name) != self._before[name])
        restarted += sorted(f"agent {name} (seen restarting)" for name, record in self.ctx.observer.records.items()
                            if record.restarts)
        checks.append(Check("nothing restarted", not restarted, ", ".join(restarted)))
        too_many = []
        for agent in self.affected:
            record = self.ctx.observer.records[agent.node]
            first, last = record.first.get(self.ctx.cluster), record.peers.get(self.ctx.cluster)
            if first is None or last is None or last.reconnections - first.reconnections > 1:
                count = "?" if first is None or last is None else last.reconnections - first.reconnections
                too_many.append(f"{agent.node}: {count} reconnections")
        checks.append(Check("at most one reconnect per agent", not too_many, ", ".join(too_many)))
        return checks


def _require_proxy(scenario: str, ctx: Context) -> None:
    """ConfigError unless the mesh file says peers dial a proxy in front of the cluster's etcd (`etcd.listen`)."""
    if not ctx.mesh.mesh.cluster(ctx.cluster).etcd.listen:
        raise ConfigError(f"{scenario} cuts the proxy peers dial in front of {ctx.cluster}'s etcd, and the mesh "
                          "file names none (mesh.json etcd.listen): start the mesh with `clustermesh up`")


def _processes(status: dict[str, object]) -> dict[str, tuple[object, object]]:
    """(pid, starts) of every process a control `status` names, by a readable name."""
    found: dict[str, tuple[object, object]] = {}
    clusters = status["clusters"]
    assert isinstance(clusters, list)
    for cluster in clusters:
        name = cluster["name"]
        found[f"etcd {name}"] = (cluster["etcd"]["pid"], None)
        found[f"apiserver {name}"] = (cluster["apiserver"]["pid"], cluster["apiserver"]["starts"])
        for agent in cluster["agents"]:
            found[f"agent {agent['node']}"] = (agent["pid"], agent["starts"])
    return found


SCENARIOS: dict[str, type[Scenario]] = {
    scenario.name: scenario
    for scenario in (EtcdKill, EtcdHang, ApiserverKill, BackendsDown, Partition, CertRotate, Compaction)
}
"""Every scenario by name, in the order docs and benchmarks list them."""
