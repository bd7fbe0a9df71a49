"""The emitter: a source's record of what it has delivered to its sink, and the only code that calls the sink.

Both sources describe state ("this object now looks like this", "this kind now holds exactly these
objects") and the emitter turns that into the smallest event stream: an upsert equal to what was last
delivered for its key is dropped, a delete of something never delivered is dropped, and `replace` does
mark-and-sweep for a relist (deletes only for objects that vanished, nothing for the unchanged ones). It does
no I/O of its own and is used from one task only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from clustermesh.kube import event, objects


class Emitter:
    """Deliver state changes to `sink`, suppressing duplicates; SYNCED goes out at most once."""

    def __init__(self, sink: event.EventSink) -> None:
        self._sink = sink
        self._delivered: dict[objects.AnyKind, dict[objects.ObjectKey, dict[str, Any]]] = {}
        self._synced = False

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind}={len(known)}" for kind, known in self._delivered.items())
        return f"<Emitter synced={self._synced} {counts}>"

    @property
    def synced(self) -> bool:
        """Whether SYNCED has been delivered."""
        return self._synced

    async def upsert(self, key: objects.ObjectKey, obj: dict[str, Any]) -> None:
        """Deliver an UPSERT unless `obj` equals what was last delivered for `key`."""
        known = self._delivered.setdefault(key.kind, {})
        if known.get(key) == obj:
            return
        known[key] = obj
        await self._sink(event.Event(event.EventType.UPSERT, key, obj))

    async def delete(self, key: objects.ObjectKey, obj: dict[str, Any] | None = None) -> None:
        """Deliver a DELETE (with `obj`, else the last delivered state) if `key` was delivered."""
        last = self._delivered.get(key.kind, {}).pop(key, None)
        if last is None:
            return
        await self._sink(event.Event(event.EventType.DELETE, key, obj if obj is not None else last))

    async def replace(self, kind: objects.AnyKind, current: Mapping[objects.ObjectKey, dict[str, Any]]) -> None:
        """Make `kind` downstream equal `current`: upsert what changed, then delete what is gone."""
        for key, obj in current.items():
            await self.upsert(key, obj)
        vanished = [key for key in self._delivered.get(kind, {}) if key not in current]
        for key in vanished:
            await self.delete(key)

    async def mark_synced(self) -> None:
        """Deliver SYNCED; only the first call has an effect."""
        if self._synced:
            return
        self._synced = True
        await self._sink(event.SYNCED)
