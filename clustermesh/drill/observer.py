"""The observer: watches every agent of the mesh during a drill, through the agent's own interfaces only.

Per agent, three loops while run() runs:

- status: GetStatus every `poll_interval`. Each peer's transitions become timeline events: peer.disconnected
  (timed by the agent's own `last_failure_unix` when its failure count moved, so the time is the agent's, not
  the poll's), peer.reconnected (connected again), peer.ready (every kind listed again), peer.revoked and
  peer.restored (the cache TTL withdrew the peer's services, and the relist brought them back). An agent that
  stops answering, or answers with a smaller uptime, becomes agent.unreachable / agent.restarted.
- watch: the Watch stream of cache changes (skip_initial), recorded with the agent's timestamps: when a cache
  last changed is what dates its convergence, and the first service delete after a disconnect dates a revocation.
- dns: an A query for the app's name every `dns_interval`; answers are recorded when they change. What counts as
  a failover is the scenario's to say (clustermesh.drill.scenarios), from these answers.

The records are read by the drill runner after run() ended (or while it runs, from the same event loop).
Nothing here changes the mesh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import NamedTuple

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import grpc

from clustermesh.aio import backoff
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.drill import target, timeline

log = logging.getLogger(__name__)

EventName = timeline.EventName

DEFAULT_POLL_INTERVAL = 0.05
DEFAULT_DNS_INTERVAL = 0.1
_RPC_TIMEOUT = 1.0
_DNS_TIMEOUT = 0.5
# An agent whose uptime went down by more than this between two polls was restarted.
_UPTIME_SLACK = 0.5


@dataclasses.dataclass(frozen=True)
class PeerSeen:
    """One peer as one GetStatus reported it."""

    connected: bool
    ready: bool
    revoked: bool
    failures: int
    reconnections: int
    last_failure_unix: float
    last_error: str

    @classmethod
    def of(cls, peer: agent_pb2.PeerStatus) -> PeerSeen:
        return cls(connected=peer.connected, ready=peer.ready, revoked=peer.revoked, failures=peer.failures,
                   reconnections=peer.reconnections, last_failure_unix=peer.last_failure_unix,
                   last_error=peer.last_error or peer.status)


class CacheChange(NamedTuple):
    """One change of an agent's cache, as its Watch stream reported it (`at`: the agent's clock)."""

    at: float
    deleted: bool
    kind: str
    cluster: str
    key: str


class DnsAnswer(NamedTuple):
    """The A records an agent's DNS answered from `at` on; None when it did not answer."""

    at: float
    ips: frozenset[str] | None


@dataclasses.dataclass
class AgentRecord:
    """What the observer saw of one agent. Mutated only by the observer's loops for that agent."""

    agent: target.AgentTarget
    first: dict[str, PeerSeen] = dataclasses.field(default_factory=dict)
    """Each peer as first seen (for counters: how many reconnections the drill caused)."""
    peers: dict[str, PeerSeen] = dataclasses.field(default_factory=dict)
    changes: list[CacheChange] = dataclasses.field(default_factory=list)
    dns: list[DnsAnswer] = dataclasses.field(default_factory=list)
    restarts: int = 0
    status_seen: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    watch_synced: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    dns_seen: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    _down: dict[str, bool] = dataclasses.field(default_factory=dict)
    _reconnected: dict[str, bool] = dataclasses.field(default_factory=dict)
    _uptime: float = 0.0
    _reachable: bool = True

    @property
    def name(self) -> str:
        return self.agent.node

    def last_change(self, *, before: float) -> float | None:
        """When the cache last changed at or before `before`; None if it did not."""
        times = [c.at for c in self.changes if c.at <= before]
        return max(times) if times else None


class Observer:
    """Records every agent of `mesh` into `records` and `timeline` while run() runs."""

    def __init__(
        self,
        mesh: target.Target,
        events: timeline.Timeline,
        *,
        dns_name: str | None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        dns_interval: float = DEFAULT_DNS_INTERVAL,
    ) -> None:
        if poll_interval <= 0 or dns_interval <= 0:
            raise ValueError("observer intervals must be positive")
        self.mesh = mesh
        self.timeline = events
        self.dns_name = dns_name
        self.poll_interval = poll_interval
        self.dns_interval = dns_interval
        self.records = {agent.node: AgentRecord(agent) for agent in mesh.agents}
        self.polls = 0
        self.dns_queries = 0
        self._running = False

    def __repr__(self) -> str:
        return f"<Observer agents={len(self.records)} polls={self.polls} dns_queries={self.dns_queries}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Observe until cancelled; `ready` is set once every agent answered GetStatus, its Watch stream sent its
        SYNCED marker, and (with a DNS name) its DNS answered. An agent that never does keeps `ready` unset; the
        caller bounds the wait. RuntimeError if already running."""
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            async with asyncio.TaskGroup() as group:
                for record in self.records.values():
                    group.create_task(self._observe(record), name=f"observe {record.name}")
                if ready is not None:
                    group.create_task(self._announce(ready), name="observer ready")
        finally:
            self._running = False

    async def _announce(self, ready: asyncio.Event) -> None:
        for record in self.records.values():
            await record.status_seen.wait()
            await record.watch_synced.wait()
            if self.dns_name and record.agent.dns:
                await record.dns_seen.wait()
        ready.set()

    async def _observe(self, record: AgentRecord) -> None:
        async with grpc.aio.insecure_channel(record.agent.grpc) as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._poll_status(record, stub), name=f"status {record.name}")
                group.create_task(self._follow_watch(record, stub), name=f"watch {record.name}")
                if self.dns_name and record.agent.dns:
                    group.create_task(self._probe_dns(record, self.dns_name), name=f"dns {record.name}")

    # --- status -----------------------------------------------------------------------------------------

    async def _poll_status(self, record: AgentRecord, stub: agent_pb2_grpc.AgentStub) -> None:
        while True:
            try:
                status = await stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=_RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if record._reachable:
                    record._reachable = False
                    self.timeline.add(time.time(), record.name, EventName.AGENT_UNREACHABLE,
                                      detail=f"{exc.code().name}: {exc.details()}")
            else:
                self.polls += 1
                record._reachable = True
                self._status(record, status, time.time())
                record.status_seen.set()
            await asyncio.sleep(self.poll_interval)

    def _status(self, record: AgentRecord, status: agent_pb2.AgentStatus, now: float) -> None:
        if status.uptime_seconds + _UPTIME_SLACK < record._uptime:
            record.restarts += 1
            self.timeline.add(now - status.uptime_seconds, record.name, EventName.AGENT_RESTARTED,
                              detail=f"uptime {status.uptime_seconds:.1f}s")
            # A new process: its counters start over, so the old ones compare with nothing.
            record.peers.clear()
        record._uptime = status.uptime_seconds
        for message in status.peers:
            seen = PeerSeen.of(message)
            previous = record.peers.get(message.name)
            record.peers[message.name] = seen
            record.first.setdefault(message.name, seen)
            if previous is None:
                record._down[message.name] = not seen.ready
                continue
            self._transitions(record, message.name, previous, seen, now)

    def _transitions(self, record: AgentRecord, peer: str, previous: PeerSeen, seen: PeerSeen, now: float) -> None:
        add = self.timeline.add
        failed = seen.failures > previous.failures
        if not record._down[peer] and (failed or not seen.ready):
            record._down[peer] = True
            record._reconnected[peer] = False
            # The agent's own time of the failure: precise, where the poll is only within poll_interval.
            at = seen.last_failure_unix if failed and seen.last_failure_unix > 0 else now
            add(min(at, now), record.name, EventName.PEER_DISCONNECTED, peer=peer, detail=seen.last_error[:200])
        elif seen.reconnections > previous.reconnections and seen.ready:
            # A re-dial that completed between two polls (a new peer file or certificate): never seen down.
            detail = f"{seen.reconnections - previous.reconnections} reconnection(s) since the last poll"
            add(now, record.name, EventName.PEER_RECONNECTED, peer=peer, detail=detail)
            add(now, record.name, EventName.PEER_READY, peer=peer, detail=f"failures {seen.failures}")
        if record._down[peer]:
            if failed:
                record._reconnected[peer] = False
            if seen.connected and not record._reconnected.get(peer, False):
                record._reconnected[peer] = True
                add(now, record.name, EventName.PEER_RECONNECTED, peer=peer,
                    detail=f"{seen.reconnections - previous.reconnections} reconnection(s) since the last poll")
            if seen.ready:
                record._down[peer] = False
                add(now, record.name, EventName.PEER_READY, peer=peer, detail=f"failures {seen.failures}")
        if seen.revoked and not previous.revoked:
            add(now, record.name, EventName.PEER_REVOKED, peer=peer, detail="services withdrawn (cache TTL)")
        elif previous.revoked and not seen.revoked:
            add(now, record.name, EventName.PEER_RESTORED, peer=peer, detail="services listed again")

    # --- watch ------------------------------------------------------------------------------------------

    async def _follow_watch(self, record: AgentRecord, stub: agent_pb2_grpc.AgentStub) -> None:
        retry = backoff.Backoff(initial=0.1, maximum=1.0)
        while True:
            call = stub.Watch(agent_pb2.WatchRequest(skip_initial=True))
            try:
                async for event in call:
                    if event.type == agent_pb2.WatchEvent.SYNCED:
                        record.watch_synced.set()
                        retry.reset()
                        continue
                    record.changes.append(CacheChange(
                        at=event.timestamp_unix, deleted=event.type == agent_pb2.WatchEvent.DELETE,
                        kind=event.kind, cluster=event.cluster, key=event.key,
                    ))
            except grpc.aio.AioRpcError as exc:
                # The agent restarted or fell behind (RESOURCE_EXHAUSTED): watch again; changes meanwhile are
                # lost to the record, which only dates convergence (the verdict itself lists the caches).
                log.info("event=drill.observer.watch_broken agent=%s code=%s", record.name, exc.code().name)
            finally:
                call.cancel()
            await retry.wait()

    # --- dns --------------------------------------------------------------------------------------------

    async def _probe_dns(self, record: AgentRecord, name: str) -> None:
        host, _, port = record.agent.dns.rpartition(":")
        host = host.strip("[]")
        while True:
            ips = await self._query(host, int(port), name)
            self.dns_queries += 1
            if not record.dns or record.dns[-1].ips != ips:
                record.dns.append(DnsAnswer(time.time(), ips))
            if ips is not None:
                record.dns_seen.set()
            await asyncio.sleep(self.dns_interval)

    @staticmethod
    async def _query(host: str, port: int, name: str) -> frozenset[str] | None:
        query = dns.message.make_query(name, dns.rdatatype.A)
        try:
            # Bounded here rather than by dnspython's `timeout`: dnspython uses asyncio.wait_for, which in
            # Python 3.11 can swallow a cancellation that arrives as its timeout fires — the observer would then
            # never stop. asyncio.timeout tells the two apart.
            async with asyncio.timeout(_DNS_TIMEOUT):
                response = await dns.asyncquery.udp(query, host, port=port)
        except (TimeoutError, dns.exception.DNSException, OSError):
            return None
        if response.rcode() == dns.rcode.NXDOMAIN:
            return frozenset()
        found: set[str] = set()
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.A:
                found.update(rdata.address for rdata in rrset)
        return frozenset(found)

