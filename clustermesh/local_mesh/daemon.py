"""One daemon of a local mesh (an apiserver or an agent) as a child process: spawn, wait until ready, stop.

The command runs exactly as a deployment runs it (`python -m apiserver ...`), spawned with
asyncio.create_subprocess_exec (fork+exec with no Python in between, so it is safe after gRPC has started
threads in this process, unlike multiprocessing's fork) in a session of its own, so a Ctrl-C at the terminal
reaches only `clustermesh up`, which then stops its children in order. stdout and stderr are appended to
the daemon's log file. Readiness is the caller's probe (a health RPC, an HTTP /readyz), polled until it
answers, the process exits, or the start timeout passes.

Does not own: the restart policy or the order in which daemons start and stop (clustermesh.local_mesh.mesh),
etcd (clustermesh.etcd.process.EtcdProcess, with the same lifecycle).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import pathlib
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence

from clustermesh import errors
from clustermesh.aio import child

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]

_PROBE_INTERVAL = 0.05


class State(enum.Enum):
    """Lifecycle of a Daemon."""

    NEW = "new"
    RUNNING = "running"
    EXITED = "exited"  # died without stop() or kill()
    STOPPED = "stopped"


class DaemonFailed(errors.ClusterMeshError):
    """Raised when a daemon exits while starting or does not become ready in time; carries its log's tail."""


class Daemon:
    """One child process: `argv` with its output appended to `log_path`, ready when `probe()` returns True.

    start() returns once ready; stop() and kill() are idempotent; restart() is stop() then start(). One owner
    drives the lifecycle: the methods are not safe to call concurrently from several tasks.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: pathlib.Path,
        probe: Probe,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if not argv:
            raise ValueError("a daemon needs a command")
        self.name = name
        self.argv = tuple(argv)
        self.log_path = log_path
        self.probe = probe
        self.env = dict(env) if env is not None else None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._state = State.NEW
        self._log_offset = 0
        self.starts = 0
        """How many times the process was spawned."""

    def __repr__(self) -> str:
        return f"<Daemon {self.name} {self.state.value} pid={self.pid} starts={self.starts}>"

    @property
    def state(self) -> State:
        """The lifecycle state; EXITED when the process died on its own."""
        if self._state is State.RUNNING and self._process is not None and self._process.returncode is not None:
            return State.EXITED
        return self._state

    @property
    def pid(self) -> int | None:
        """The id of the last spawned process (also after it stopped), None before the first start."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last process, None while it runs or before the first start."""
        return self._process.returncode if self._process is not None else None

    async def start(self) -> None:
        """Spawn the process and return once the probe answers True.

        RuntimeError if already running; DaemonFailed (with the log's tail) if it exits first or the probe
        does not succeed within start_timeout, in which case the process is killed. Cancellation kills it too.
        """
        if self.state is State.RUNNING:
            raise RuntimeError(f"{self!r} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self._state = State.RUNNING
        self.starts += 1
        log.info("event=daemon.spawned name=%s pid=%s log=%s", self.name, self.pid, self.log_path)
        try:
            async with asyncio.timeout(self.start_timeout):
                await self._wait_ready()
        except TimeoutError:
            await self.kill()
            raise DaemonFailed(
                f"{self.name} did not become ready within {self.start_timeout:g}s; log {self.log_path}:\n"
                f"{self.log_tail()}"
            ) from None
        except BaseException:
            await self.kill()
            raise
        log.info("event=daemon.ready name=%s pid=%s", self.name, self.pid)

    async def _wait_ready(self) -> None:
        process = self._process
        assert process is not None
        while True:
            if process.returncode is not None:
                raise DaemonFailed(
                    f"{self.name} exited with status {process.returncode} while starting; log {self.log_path}:\n"
                    f"{self.log_tail()}"
                )
            if await self.probe():
                return
            await asyncio.sleep(_PROBE_INTERVAL)

    def log_tail(self) -> str:
        """The last lines the current process wrote to its log."""
        return child.log_tail(self.log_path, self._log_offset)

    def _signal(self, signum: signal.Signals) -> None:
        child.send(self._process, signum)

    def send_signal(self, signum: signal.Signals) -> None:
        """Send signum to the running process, if any, without changing the lifecycle state.

        Unlike kill(), a SIGKILL sent this way is a crash: the state becomes EXITED and the owner's restart
        policy applies (what a drill that kills an apiserver wants to see).
        """
        self._signal(signum)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after stop_timeout; return once the process is reaped. Idempotent.

        If the caller is cancelled while waiting, the process is killed before CancelledError propagates.
        """
        process = self._process
        if process is None or process.returncode is not None:
            self._settle()
            return
        if not await child.terminate(process, self.stop_timeout):
            log.warning("event=daemon.kill name=%s pid=%s reason=%r", self.name, process.pid,
                        f"ignored SIGTERM for {self.stop_timeout:g}s")
        self._settle()
        log.info("event=daemon.stopped name=%s pid=%s status=%s", self.name, process.pid, process.returncode)

    async def kill(self) -> None:
        """SIGKILL the process and reap it. Idempotent."""
        process = self._process
        if process is not None:
            self._signal(signal.SIGKILL)
            await process.wait()
        self._settle()

    async def restart(self) -> None:
        """stop() then start()."""
        await self.stop()
        await self.start()

    def _settle(self) -> None:
        if self._state is not State.NEW:
            self._state = State.STOPPED


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An orphan that exited stays a zombie until its new parent (init here) reaps it, which may take a while.
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
