"""The read side: mirror every key under one etcd prefix into an observer, never missing a delete.

On every start and every reconnect the store marks all keys it has delivered as stale, lists the prefix at one
revision (paginated; each page delivered as it arrives, so a list holds one page at a time, not the prefix),
delivers what changed, sweeps (delivers deletes for) the keys the list did not return, signals list-done, and
then watches from the list's revision + 1. A compaction or any stream failure leads back
to that relist, after a jittered backoff for failures. Unchanged keys are not re-delivered, so a relist costs
the observer only the real differences.

Observers receive names, not keys: a key minus the prefix, decoded from UTF-8 with surrogateescape (so a key
that is not UTF-8 still round-trips, is tracked and has its delete delivered; the observer decides whether to
accept it). Decoding here, once, lets an observer keep the very string the store remembers (a cache keyed by
name shares it instead of holding a second copy: ~50 bytes per key across hundreds of thousands).

What the store remembers per key is only that it delivered it (its name, in a set): `revision`
is the revision up to which the delivered state is exactly etcd's (the list's, then the last event's or
progress notification's), so a listed key that the store knows and that was last modified at or before it
holds the value already delivered. That is the mod_revision comparison without a revision per key, which
matters to an agent holding hundreds of thousands of keys. An observer that itself keeps every name it is
handed until it is handed its delete (a cache, and the names it rejected) can lend the store that instead of
a set (Names): the names are then not held twice. A store given names it did not deliver itself (a new store
taking over an observer's names) treats them as it treats its own on a relist: its first list delivers every
key again and sweeps the names it does not return.

Stop is not drain: cancelling run() keeps what was delivered (the agent keeps serving last-known state);
drain() delivers deletes for everything, for when the data's owner is removed.
Mirrors Cilium's restartableWatchStore (pkg/kvstore/store/watchstore.go) and etcd's mirror.Syncer.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Iterator
from typing import Protocol

from clustermesh import errors
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch as etcd_watch

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Receives the store's changes by name (the key minus the prefix, see name_of). Called from the store's
    task; must not block."""

    def on_upsert(self, name: str, value: bytes) -> None: ...

    def on_delete(self, name: str) -> None: ...

    def on_list_done(self) -> None: ...


class Names(Protocol):
    """Where a store keeps the names it delivered and has not deleted since; a `set[str]` unless lent.

    The store calls add(name) right after observer.on_upsert(name) and discard(name) right after
    observer.on_delete(name). An observer that records names itself in those calls lends an object that
    answers from its own records and ignores add and discard.
    """

    def __contains__(self, name: object, /) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def add(self, name: str, /) -> None: ...

    def discard(self, name: str, /) -> None: ...


def name_of(key: bytes, prefix_len: int) -> str:
    """The name the store hands observers for key under a prefix of prefix_len bytes."""
    return key[prefix_len:].decode("utf-8", "surrogateescape")


def key_of(prefix: bytes, name: str) -> bytes:
    """The key of name under prefix (name_of's inverse)."""
    return prefix + name.encode("utf-8", "surrogateescape")


class State(enum.Enum):
    """Lifecycle of a WatchStore."""

    IDLE = "idle"
    LISTING = "listing"
    WATCHING = "watching"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class WatchStore:
    """Lists then watches `prefix` (which must end with '/') through `client`, feeding `observer`.

    `names`: where the delivered names are kept (see Names); by default a set of the store's own. Fields are
    mutated only by the task running run(); readers may look at them at any time.
    """

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        prefix: bytes,
        observer: Observer,
        *,
        name: str = "",
        page_size: int = etcd_client.DEFAULT_PAGE_SIZE,
        retry: backoff.Backoff | None = None,
        names: Names | None = None,
    ) -> None:
        if not prefix.endswith(b"/"):
            raise ValueError(f"watch prefix {prefix!r} must end with '/' so that siblings never match")
        self.client = client
        self.prefix = prefix
        self.observer = observer
        self.name = name or prefix.decode(errors="replace")
        self.page_size = page_size
        self.retry = retry or backoff.Backoff(initial=0.2, maximum=5.0)
        self.state = State.IDLE
        self.synced = asyncio.Event()
        self.revision = 0
        """Delivered state = etcd's state at this revision (0 before the first list)."""
        self.lists = 0
        self.failures = 0
        self.last_error: str = ""
        self.last_event_at = 0.0
        # Names of the keys delivered and not deleted since: the very strings handed to the observer.
        self._known: Names = set() if names is None else names

    def __repr__(self) -> str:
        return (
            f"<WatchStore {self.name} state={self.state.value} keys={len(self._known)} "
            f"revision={self.revision} lists={self.lists} failures={self.failures}>"
        )

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, key: bytes) -> bool:
        return key.startswith(self.prefix) and name_of(key, len(self.prefix)) in self._known

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """List and watch until cancelled; sets ready (and self.synced) after the first list-done.

        Raises ClusterIDChanged (the owner must re-dial and re-validate) and PermissionDenied is retried.
        """
        if self.state not in (State.IDLE, State.STOPPED):
            raise RuntimeError(f"{self!r} is already running")
        try:
            while True:
                try:
                    await self._list_and_watch(ready)
                except errors.Compacted as exc:
                    log.info("event=watch.compacted store=%s reason=%s", self.name, exc)
                except errors.ClusterIDChanged:
                    raise
                except errors.StoreError as exc:
                    self.failures += 1
                    self.last_error = str(exc)
                    self.state = State.BACKOFF
                    log.info("event=watch.failed store=%s reason=%s", self.name, exc)
                    await self.retry.wait()
        finally:
            self.state = State.STOPPED

    async def _list_and_watch(self, ready: asyncio.Event | None) -> None:
        self.state = State.LISTING
        stale = set(self._known)
        listed, revision = await self._list(stale)
        self.lists += 1
        self.retry.reset()
        observer = self.observer
        for name in stale:
            observer.on_delete(name)
            self._known.discard(name)
        self.revision = revision
        observer.on_list_done()
        self.last_event_at = time.monotonic()
        if not self.synced.is_set():
            self.synced.set()
            if ready is not None:
                ready.set()
        log.debug("event=watch.listed store=%s keys=%d swept=%d", self.name, listed, len(stale))
        self.state = State.WATCHING
        stream = etcd_watch.Watch.prefix(self.client, self.prefix, start_revision=self.revision + 1)
        async for batch in stream:
            self._apply(batch)
            # Not batch.revision: a catching-up watch reports etcd's current revision with events still to come.
            self.revision = stream.next_revision - 1

    async def _list(self, stale: set[str]) -> tuple[int, int]:
        """Deliver the prefix at one revision, page by page, taking what it holds out of stale.

        Returns (keys listed, revision). Known keys last modified at or before self.revision are not delivered
        again. A failure part-way leaves the keys delivered so far known: they hold the listed revision's
        values, and the next list delivers again whatever changed after self.revision.
        """
        # Not EtcdClient.list_prefix, which gathers every page before returning: an agent lists a hundred
        # prefixes at once, and would hold most of the mesh twice at the peak (keys, values, tuples, protobuf
        # pages) and decode nothing until a whole prefix is in. Pages consumed as they come: each store holds
        # one page, and decoding overlaps etcd serving the next (measured: bench/agent_bootstrap.py).
        cut = len(self.prefix)
        known = self._known
        upsert = self.observer.on_upsert
        delivered = self.revision
        revision, listed = 0, 0
        async for page_revision, page in self.client.list_pages(self.prefix, page_size=self.page_size):
            revision = page_revision
            for kv in page:
                name = kv.key[cut:].decode("utf-8", "surrogateescape")  # name_of, inlined: 100k+ keys
                if stale:
                    stale.discard(name)
                    if kv.mod_revision <= delivered and name in known:
                        continue
                upsert(name, kv.value)
                known.add(name)
            listed += len(page)
        return listed, revision

    def _apply(self, batch: etcd_watch.WatchBatch) -> None:
        known = self._known
        observer = self.observer
        start = len(self.prefix)
        for event in batch.events:
            name = name_of(event.key, start)
            if event.type is etcd_watch.EventType.PUT:
                observer.on_upsert(name, event.value)
                known.add(name)
            elif name in known:
                observer.on_delete(name)
                known.discard(name)
        self.last_event_at = time.monotonic()

    def drain(self) -> int:
        """Deliver a delete for every known key and forget them; only while not running. Returns the count."""
        if self.state not in (State.IDLE, State.STOPPED):
            raise RuntimeError(f"cannot drain {self!r} while it runs; cancel run() first")
        names = list(self._known)
        for name in names:
            self.observer.on_delete(name)
            self._known.discard(name)
        return len(names)
