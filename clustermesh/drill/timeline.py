"""The timeline of a drill: what happened, to whom, when — the drill's own actions and what it saw each agent do.

Events carry wall-clock times (`time.time()`), because the precise ones come from the agents themselves (a peer's
last failure, a cache change's timestamp) and those are wall-clock; on one machine, or on NTP-synced nodes, they
share the drill's clock. Reports show them relative to the fault (`t`, seconds, negative before it).

Event names are a stable vocabulary (docs/drills.md explains each); `agent` is the node name of an agent, or
`drill` for the drill's own actions; `peer` is the cluster an agent event concerns. The timeline only records
and answers queries; who adds what is the observer's and the drill runner's business. Not thread-safe: one
event loop adds to it.
"""

from __future__ import annotations

import enum

import msgspec

DRILL = "drill"
"""The `agent` of the drill's own events."""


class EventName(enum.StrEnum):
    """What happened. STABLE: reports and plots use these names."""

    FAULT_INJECTED = "fault.injected"
    FAULT_HEALED = "fault.healed"
    CHURN_STARTED = "churn.started"
    CHURN_STOPPED = "churn.stopped"
    COMPONENT_RESTARTED = "component.restarted"
    ETCD_COMPACTED = "etcd.compacted"
    PEER_DISCONNECTED = "peer.disconnected"
    PEER_RECONNECTED = "peer.reconnected"
    PEER_READY = "peer.ready"
    PEER_REVOKED = "peer.revoked"
    PEER_RESTORED = "peer.restored"
    DNS_FAILOVER = "dns.failover"
    DNS_RESTORED = "dns.restored"
    CACHE_CONVERGED = "cache.converged"
    AGENT_RESTARTED = "agent.restarted"
    AGENT_UNREACHABLE = "agent.unreachable"
    VERDICT = "verdict"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One thing that happened at `at` (unix seconds)."""

    at: float
    agent: str
    event: EventName
    peer: str = ""
    detail: str = ""


class Timeline:
    """Every event of one drill, in the order they were added; queries sort by time."""

    def __init__(self) -> None:
        self._events: list[Event] = []

    def __repr__(self) -> str:
        return f"<Timeline events={len(self._events)} origin={self.origin}>"

    def __len__(self) -> int:
        return len(self._events)

    def add(self, at: float, agent: str, event: EventName, *, peer: str = "", detail: str = "") -> Event:
        """Record an event and return it."""
        recorded = Event(at=at, agent=agent, event=event, peer=peer, detail=detail)
        self._events.append(recorded)
        return recorded

    def events(
        self,
        event: EventName | None = None,
        *,
        agent: str | None = None,
        peer: str | None = None,
        after: float | None = None,
    ) -> list[Event]:
        """The matching events, oldest first; `after` keeps those at or after that time."""
        found = [
            e for e in self._events
            if (event is None or e.event is event) and (agent is None or e.agent == agent)
            and (peer is None or e.peer == peer) and (after is None or e.at >= after)
        ]
        return sorted(found, key=lambda e: e.at)

    def first(
        self, event: EventName, *, agent: str | None = None, peer: str | None = None, after: float | None = None
    ) -> Event | None:
        """The earliest matching event, or None."""
        found = self.events(event, agent=agent, peer=peer, after=after)
        return found[0] if found else None

    @property
    def origin(self) -> float | None:
        """When the fault was injected (t = 0 of the report), None before that."""
        fault = self.first(EventName.FAULT_INJECTED)
        return fault.at if fault is not None else None

    def retime(self, event: Event, at: float) -> Event:
        """Replace a recorded event by the same one at a more precise time; return the new one."""
        index = self._events.index(event)
        self._events[index] = msgspec.structs.replace(event, at=at)
        return self._events[index]
