"""One etcd watch stream: events for a key range from a start revision, as an async iterator of batches.

Owns: creating the watch (progress notifications, fragmented responses reassembled), translating a compaction
into errors.Compacted, and keeping the resume point (`next_revision`) current — advanced by every event batch
and every progress notification, so a caller that re-creates the watch after an error resumes exactly where the
last delivered batch ended. Does not own: retrying, relisting or backoff (watch_store.py decides those).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from typing import NamedTuple

import grpc

from clustermesh import errors, keys
from clustermesh.api.etcd import rpc_pb2 as pb
from clustermesh.etcd import client as etcd_client


class EventType(enum.Enum):
    """What happened to a key."""

    PUT = 0
    DELETE = 1


class WatchEvent(NamedTuple):
    """One change of one key."""

    type: EventType
    key: bytes
    value: bytes
    mod_revision: int


class WatchBatch(NamedTuple):
    """The events of one watch response (possibly empty for a progress notification) and its revision."""

    events: list[WatchEvent]
    revision: int


_PUT = pb.Event.PUT


class Watch:
    """A watch on [key, range_end) from start_revision; iterate with `async for batch in watch`.

    Iteration ends only by an exception: errors.Compacted (relist), errors.StoreUnavailable (retry later,
    resuming from next_revision) or ClusterIDChanged. Cancelling the iterating task closes the stream.
    """

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        key: bytes,
        *,
        range_end: bytes = b"",
        start_revision: int = 0,
        progress_notify: bool = True,
    ) -> None:
        self.client = client
        self.key = key
        self.range_end = range_end
        self.next_revision = start_revision
        self.progress_notify = progress_notify

    @classmethod
    def prefix(
        cls, client: etcd_client.EtcdClient, prefix: bytes, *, start_revision: int = 0,
        progress_notify: bool = True,
    ) -> Watch:
        """A watch on every key under prefix."""
        return cls(
            client, prefix, range_end=keys.prefix_range_end(prefix),
            start_revision=start_revision, progress_notify=progress_notify,
        )

    def __repr__(self) -> str:
        return f"<Watch key={self.key!r} next_revision={self.next_revision}>"

    def _create_request(self) -> pb.WatchRequest:
        return pb.WatchRequest(
            create_request=pb.WatchCreateRequest(
                key=self.key,
                range_end=self.range_end,
                start_revision=self.next_revision,
                progress_notify=self.progress_notify,
                fragment=True,
            )
        )

    async def __aiter__(self) -> AsyncIterator[WatchBatch]:
        requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        requests.put_nowait(self._create_request())

        async def request_stream() -> AsyncIterator[pb.WatchRequest]:
            while (request := await requests.get()) is not None:
                yield request

        call = self.client.watch_stub.Watch(request_stream())
        pending: list[WatchEvent] = []
        try:
            async for resp in call:
                batch = self._handle(resp, pending)
                if batch is not None:
                    yield batch
            raise errors.StoreUnavailable(f"watch {self.key!r}: stream ended by the server")
        except grpc.RpcError as exc:
            raise etcd_client.translate(exc, f"watch {self.key!r}") from exc
        finally:
            requests.put_nowait(None)
            call.cancel()

    def _handle(self, resp: pb.WatchResponse, pending: list[WatchEvent]) -> WatchBatch | None:
        self.client.check_header(resp.header)
        if resp.compact_revision:
            raise errors.Compacted(
                f"watch {self.key!r}: revision {self.next_revision} compacted (at {resp.compact_revision})",
                compact_revision=resp.compact_revision,
            )
        if resp.canceled:
            raise errors.StoreError(f"watch {self.key!r} canceled by etcd: {resp.cancel_reason}")
        if resp.created:
            if not self.next_revision:
                self.next_revision = resp.header.revision + 1
            return None
        pending.extend(
            WatchEvent(
                EventType.PUT if ev.type == _PUT else EventType.DELETE,
                ev.kv.key, ev.kv.value, ev.kv.mod_revision,
            )
            for ev in resp.events
        )
        if resp.fragment:
            return None
        events = pending.copy()
        pending.clear()
        if events:
            self.next_revision = events[-1].mod_revision + 1
        elif resp.header.revision >= self.next_revision:
            # A progress notification: nothing under the range changed up to header.revision.
            self.next_revision = resp.header.revision + 1
        return WatchBatch(events, resp.header.revision)
