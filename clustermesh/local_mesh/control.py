"""The control endpoint of a running mesh: how a drill in another process breaks and heals what `up` owns.

`clustermesh up` keeps owning every process it started; a drill asks it, over a unix socket (DIR/control.sock,
mode 0600, named by mesh.json `control`), to act on them. Newline-delimited JSON, one request and one response
per line, answered in order:

    {"op": "status"}
    {"op": "kill", "cluster": C, "component": "etcd" | "apiserver" | "agent", "node": N}     node: agents only
    {"op": "stop" | "cont" | "start", "cluster": C, "component": "etcd"}
    {"op": "proxy", "cluster": C, "mode": "forward" | "blackhole" | "reject"}
    {"op": "rotate-certs", "cluster": C}

    -> {"ok": true, "result": ...}    or    {"ok": false, "error": "what went wrong"}

What each does: `kill` of an etcd is SIGKILL and the etcd stays down until `start` (a dead store must show);
`kill` of an apiserver or agent is SIGKILL as a crash, and `up` restarts it with backoff as a Deployment or
DaemonSet would. `stop`/`cont` are SIGSTOP/SIGCONT: a hung etcd, whose TCP connections stay open while nothing
answers. `proxy` sets the mode of the TCP proxy that peers dial in front of the etcd (clustermesh.aio.tcp_proxy);
back to `forward`, every connection that lived through the cut is reset first, because the bytes the proxy
dropped would corrupt its TLS stream. `rotate-certs` re-issues the cluster's certificates from its CA and
re-runs the trust exchange, so every peer's agents find the new pair in their mesh-config directories; the
result lists the files written. `status` returns {"clusters": [{"name", "etcd": {"state", "pid"}, "proxy":
{"mode", "address"}, "apiserver": {"state", "pid", "starts", "restarting"}, "agents": [{"node", "state", "pid",
"starts", "restarting"}]}]}.

A fault lasts at most as long as the connection that made it: when a connection closes, `up` undoes what that
connection left broken (starts an etcd it killed, continues one it stopped, forwards a proxy it cut), so a drill
that is itself killed leaves the mesh whole. Faults are not undone when `up` stops: it stops everything anyway.

Does not own the processes or the proxies (the Target, clustermesh.local_mesh.mesh.LocalMesh, does); this module
is the protocol, its server and its client.
"""

# STABLE PROTOCOL: drills, scripts and the shims of real deployments speak it.

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec

from clustermesh import errors
from clustermesh.aio import tcp_proxy

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
_SCHEME = "unix:"
# A request line larger than this is refused (requests are a few hundred bytes).
_LINE_LIMIT = 64 * 1024
DEFAULT_TIMEOUT = 60.0
"""Seconds a client waits for an answer: starting an etcd takes a few."""


class Op(enum.StrEnum):
    """What a request asks for."""

    STATUS = "status"
    KILL = "kill"
    STOP = "stop"
    CONT = "cont"
    START = "start"
    PROXY = "proxy"
    ROTATE_CERTS = "rotate-certs"


class Component(enum.StrEnum):
    """Which process of a cluster a request acts on."""

    ETCD = "etcd"
    APISERVER = "apiserver"
    AGENT = "agent"


class ControlError(errors.ClusterMeshError):
    """Raised when the control endpoint cannot be reached or refuses a request; the message says why."""


class Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One request line."""

    op: Op
    cluster: str = ""
    component: Component | None = None
    node: str = ""
    mode: tcp_proxy.Mode | None = None


class Response(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One response line: `result` when ok, `error` otherwise."""

    ok: bool
    result: Any = None
    error: str = ""


class Target(Protocol):
    """What the server drives: the owner of the processes. Errors it raises are ClusterMeshErrors."""

    def describe(self) -> dict[str, Any]:
        """The `status` result."""
        ...

    async def act(self, op: Op, cluster: str, component: Component, node: str) -> None:
        """kill / stop / cont / start one process; ControlError for a combination that makes no sense."""
        ...

    async def set_proxy(self, cluster: str, mode: tcp_proxy.Mode) -> None:
        """Set the mode of the cluster's etcd proxy."""
        ...

    async def rotate_certs(self, cluster: str) -> list[str]:
        """Re-issue the cluster's certificates and hand the new pairs to its peers; the files written."""
        ...


def address(directory: pathlib.Path) -> str:
    """The control address of a mesh directory, `unix:DIR/control.sock`."""
    return f"{_SCHEME}{directory / SOCKET_NAME}"


def _check(request: Request) -> None:
    """ControlError for a request whose fields do not fit its op."""
    needs_cluster = request.op is not Op.STATUS
    if needs_cluster and not request.cluster:
        raise ControlError(f"{request.op}: `cluster` is required")
    if request.op in (Op.KILL, Op.STOP, Op.CONT, Op.START) and request.component is None:
        raise ControlError(f"{request.op}: `component` is required (etcd, apiserver or agent)")
    if request.op is Op.PROXY and request.mode is None:
        raise ControlError("proxy: `mode` is required (forward, blackhole or reject)")


Undo = Callable[[], Awaitable[None]]


class _Connection:
    """One client's session: serve its requests, remember how to undo the faults it made."""

    def __init__(self, target: Target, peer: str) -> None:
        self.target = target
        self.peer = peer
        # (cluster, what) -> how to heal it; the latest fault on a thing replaces the earlier one.
        self.undo: dict[tuple[str, str], Undo] = {}

    async def handle(self, request: Request) -> Any:
        _check(request)
        target = self.target
        if request.op is Op.STATUS:
            return target.describe()
        cluster = request.cluster
        if request.op is Op.PROXY:
            assert request.mode is not None
            await target.set_proxy(cluster, request.mode)
            self._remember((cluster, "proxy"), None if request.mode is tcp_proxy.Mode.FORWARD
                           else lambda: target.set_proxy(cluster, tcp_proxy.Mode.FORWARD))
            return None
        if request.op is Op.ROTATE_CERTS:
            return await target.rotate_certs(cluster)
        component = request.component
        assert component is not None
        await target.act(request.op, cluster, component, request.node)
        if component is Component.ETCD:
            heal: dict[Op, Undo | None] = {
                Op.KILL: lambda: target.act(Op.START, cluster, Component.ETCD, ""),
                Op.STOP: lambda: target.act(Op.CONT, cluster, Component.ETCD, ""),
                Op.START: None,
                Op.CONT: None,
            }
            self._remember((cluster, "etcd"), heal[request.op])
        return None

    def _remember(self, what: tuple[str, str], undo: Undo | None) -> None:
        if undo is None:
            self.undo.pop(what, None)
        else:
            self.undo[what] = undo

    async def restore(self) -> None:
        """Undo every fault this connection left, latest first; failures are logged, the rest still run."""
        for (cluster, what), undo in reversed(list(self.undo.items())):
            try:
                await undo()
            except errors.ClusterMeshError as exc:
                log.error("event=control.restore_failed peer=%s cluster=%s what=%s reason=%r",
                          self.peer, cluster, what, str(exc))
                continue
            log.warning("event=control.restored peer=%s cluster=%s what=%s reason=%r", self.peer, cluster, what,
                        "the connection that broke it closed")
        self.undo.clear()


class ControlServer:
    """Serves the protocol on a unix socket while run() runs. One Target; any number of connections."""

    def __init__(self, path: pathlib.Path, target: Target) -> None:
        self.path = path
        self.target = target
        self._handlers: set[asyncio.Task[None]] = set()
        self._running = False
        self._accepted = 0
        self.requests = 0

    def __repr__(self) -> str:
        return f"<ControlServer {self.path} connections={len(self._handlers)} requests={self.requests}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Listen, set `ready`, serve until cancelled; then close every connection (without undoing its faults)
        and remove the socket. A socket file left by a killed `up` is replaced. RuntimeError if already running.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        self.path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._serve, path=self.path, limit=_LINE_LIMIT)
        try:
            # Whoever may connect may kill the mesh's processes: owner only.
            os.chmod(self.path, 0o600)
            log.info("event=control.listening path=%s", self.path)
            if ready is not None:
                ready.set()
            await asyncio.Event().wait()
        finally:
            server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            self.path.unlink(missing_ok=True)
            self._running = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._accepted += 1
        connection = _Connection(self.target, peer=f"#{self._accepted}")
        log.info("event=control.connected peer=%s", connection.peer)
        try:
            while line := await reader.readline():
                writer.write(msgspec.json.encode(await self._answer(connection, line)) + b"\n")
                await writer.drain()
            await connection.restore()
        except (ConnectionError, ValueError) as exc:
            # ValueError: a line over the limit. The client is gone or broken: heal what it left.
            log.warning("event=control.dropped peer=%s reason=%r", connection.peer, str(exc))
            await connection.restore()
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            log.info("event=control.closed peer=%s", connection.peer)

    async def _answer(self, connection: _Connection, line: bytes) -> Response:
        self.requests += 1
        try:
            request = msgspec.json.decode(line, type=Request)
        except msgspec.DecodeError as exc:
            return Response(ok=False, error=f"bad request: {exc}")
        try:
            result = await connection.handle(request)
        except errors.ClusterMeshError as exc:
            log.info("event=control.refused peer=%s op=%s reason=%r", connection.peer, request.op, str(exc))
            return Response(ok=False, error=str(exc))
        log.info("event=control.done peer=%s op=%s cluster=%s component=%s node=%s mode=%s", connection.peer,
                 request.op, request.cluster, request.component, request.node,
                 request.mode.value if request.mode else "")
        return Response(ok=True, result=result)


class ControlClient:
    """One connection to a control endpoint. Requests are answered in order: one call at a time (a lock).

    Faults made through it last at most as long as it stays open (see the module docstring); close() ends it.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        self.address = address
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<ControlClient {self.address}>"

    @classmethod
    async def connect(cls, address: str, *, timeout: float = 5.0) -> ControlClient:
        """Connect to `unix:PATH`; ControlError if nothing listens there."""
        if not address.startswith(_SCHEME):
            raise ControlError(f"control address {address!r}: expected unix:PATH")
        path = address.removeprefix(_SCHEME)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=_LINE_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise ControlError(
                f"cannot reach the control endpoint {path}: {exc}; is `clustermesh up` running on that directory?"
            ) from None
        return cls(reader, writer, address)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def call(
        self,
        op: Op,
        *,
        cluster: str = "",
        component: Component | None = None,
        node: str = "",
        mode: tcp_proxy.Mode | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Any:
        """Send one request and return its result; ControlError if refused, unanswered or the connection broke."""
        request = Request(op=op, cluster=cluster, component=component, node=node, mode=mode)
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    self._writer.write(msgspec.json.encode(request) + b"\n")
                    await self._writer.drain()
                    line = await self._reader.readline()
            except TimeoutError:
                raise ControlError(f"{op}: no answer from {self.address} within {timeout:g}s") from None
            except (OSError, ValueError) as exc:
                raise ControlError(f"{op}: connection to {self.address} failed: {exc}") from None
        if not line:
            raise ControlError(f"{op}: {self.address} closed the connection (did `clustermesh up` stop?)")
        response = msgspec.json.decode(line, type=Response)
        if not response.ok:
            raise ControlError(f"{op} {cluster} {component or ''}: {response.error}".replace("  ", " "))
        return response.result

    async def close(self) -> None:
        """Close the connection (the server then undoes what it left broken). Idempotent."""
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
