"""The events a Kubernetes source delivers: upserts and deletes of objects, and the one-time SYNCED marker.

A source calls its sink with `Event`s and, once, with `SYNCED` after the initial listing of every requested
kind has been delivered. Events for one key arrive in order. Objects are plain dicts shared with the source's
record of what it delivered (used to suppress duplicates): consumers must treat them as read-only.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import msgspec

from clustermesh.kube import objects


class EventType(enum.Enum):
    """What happened to an object."""

    UPSERT = "upsert"
    DELETE = "delete"


class Event(msgspec.Struct, frozen=True):
    """An object was added or changed (UPSERT, `obj` is the new state) or removed (DELETE, its last state).

    A frozen msgspec Struct rather than a frozen dataclass: one per object delivered, and a sixth of the cost
    to build (a frozen dataclass sets each field through object.__setattr__).
    """

    type: EventType
    key: objects.ObjectKey
    obj: dict[str, Any]

    @property
    def kind(self) -> objects.AnyKind:
        """The object's kind (same as `key.kind`)."""
        return self.key.kind


class Synced(enum.Enum):
    """The marker type of `SYNCED`."""

    SYNCED = "synced"


SYNCED: Final = Synced.SYNCED
"""Delivered once per `run()`, after the initial state of every requested kind; never again on relists."""

SourceItem = Event | Literal[Synced.SYNCED]
"""What a sink receives."""

EventSink = Callable[[SourceItem], Awaitable[None]]
"""Where a source delivers; awaited, so a slow sink slows the source (e.g. `queue.put` of a bounded queue)."""
