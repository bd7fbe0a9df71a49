"""A minimal HTTP/1.1 server for probes and scrapes: GET a path, get a fixed-size answer, connection closed.

Kubernetes probes (`/readyz`, `/healthz`) and Prometheus (`/metrics`) need nothing more, and a small asyncio
server keeps them in the event loop, next to the state they report, instead of in a thread reading it
concurrently (prometheus_client's own server) or in a web framework the project does not otherwise need.
Routes are plain functions called in the event loop; they must not block. HEAD is answered like GET, without
the body; any other method on a known path gets 405, an unknown path 404.

Both daemons serve their `/metrics`, `/healthz` and `/readyz` with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

log = logging.getLogger(__name__)

_REQUEST_TIMEOUT = 10.0
_MAX_HEADER_LINES = 100
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


class Response(NamedTuple):
    """What a route answers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Response]


def split_address(address: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (every interface) as (host or None, port); ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 0xFFFF:
        raise ValueError(f"{address!r} is not HOST:PORT")
    host = host.removeprefix("[").removesuffix("]")
    return host or None, int(port)


class HttpServer:
    """Serves `routes` (path → Route) on `address` until cancelled; see the module docstring."""

    def __init__(self, address: str, routes: Mapping[str, Route], *, name: str) -> None:
        self.address = address
        self.routes = dict(routes)
        self.name = name
        self.port = 0
        """The bound port, once run() has set `ready` (the one picked when `address` asks for port 0)."""
        self._connections: set[asyncio.Task[None]] = set()
        self._running = False

    def __repr__(self) -> str:
        return f"<HttpServer {self.name} {self.address} port={self.port} routes={sorted(self.routes)}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled; sets `ready` once listening.

        Raises RuntimeError if already running, OSError if the address cannot be bound. Cancellation closes
        the listening socket and every open connection, and waits for their tasks.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            host, port = split_address(self.address)
            server = await asyncio.start_server(self._serve_connection, host, port)
            try:
                self.port = server.sockets[0].getsockname()[1]
                log.info("event=http.listening server=%s address=%s port=%d", self.name, self.address, self.port)
                if ready is not None:
                    ready.set()
                await server.serve_forever()
            finally:
                server.close()
                for task in list(self._connections):
                    task.cancel()
                await asyncio.gather(*self._connections, return_exceptions=True)
        finally:
            self._running = False

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio creates this task; keep it so that run() can stop it.
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                method, response = await self._answer(reader)
                head = (
                    f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                    f"Content-Type: {response.content_type}\r\n"
                    f"Content-Length: {len(response.body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else response.body))
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass  # a client that goes away or stalls gets nothing
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, Response]:
        """The request's method and the response to it."""
        try:
            request_line = await reader.readline()
            for _ in range(_MAX_HEADER_LINES):
                if await reader.readline() in (b"\r\n", b"\n", b""):
                    break
        except ValueError:  # a line longer than the reader's limit
            return "", Response(400, b"bad request\n")
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3:
            return "", Response(400, b"bad request\n")
        method, target, _ = parts
        route = self.routes.get(target.partition("?")[0])
        if route is None:
            return method, Response(404, b"not found\n")
        if method not in ("GET", "HEAD"):
            return method, Response(405, b"method not allowed\n")
        return method, route()
