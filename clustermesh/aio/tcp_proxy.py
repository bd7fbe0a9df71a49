"""A loopback TCP proxy that can cut its traffic on demand: the fault injector for partitions.

Modes: FORWARD relays bytes both ways; BLACKHOLE keeps connections open but silently drops every byte (a hung
peer or a partition without resets, the hardest failure to detect); REJECT closes existing connections and
refuses new ones (a peer that is down). Used by tests and by `clustermesh drill partition` where network
namespaces are not available.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

log = logging.getLogger(__name__)

_CHUNK = 65536


class Mode(enum.Enum):
    """What the proxy does with traffic."""

    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    REJECT = "reject"


class TCPProxy:
    """Listens on listen_host:listen_port (0 = pick) and relays to target_host:target_port while run() runs."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.mode = Mode.FORWARD
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def __repr__(self) -> str:
        return (f"<TCPProxy {self.listen_host}:{self.listen_port} -> {self.target_host}:{self.target_port} "
                f"mode={self.mode.value} open={len(self._writers) // 2}>")

    @property
    def address(self) -> str:
        """host:port clients should dial."""
        return f"{self.listen_host}:{self.listen_port}"

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; REJECT also closes every open connection at once."""
        self.mode = mode
        log.info("event=proxy.mode address=%s mode=%s", self.address, mode.value)
        if mode is Mode.REJECT:
            for writer in list(self._writers):
                writer.transport.abort()

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled; on return every connection is closed and every pipe task awaited."""
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        if ready is not None:
            ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._pipes):
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.REJECT:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        pipes = [asyncio.create_task(self._pipe(reader, up_writer), name=f"proxy {self.address} up"),
                 asyncio.create_task(self._pipe(up_reader, writer), name=f"proxy {self.address} down")]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(_CHUNK):
                if self.mode is Mode.FORWARD:
                    writer.write(data)
                    await writer.drain()
