"""Tests of clustermesh.local_mesh.daemon with small Python child processes standing in for the daemons.

Covered: ready only when the probe says so; a child that exits while starting, or never becomes ready, fails
start() with its log's tail and is not left running; stop() with SIGTERM, and SIGKILL for a child that ignores
it; EXITED for a child that dies on its own; restart; misuse (double start); cancellation during start kills
the child. The probes (gRPC health, HTTP) are exercised against real daemons in test_up.py.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import sys

import pytest

from clustermesh.local_mesh import daemon, probes
from tests import helpers

# The child touches the marker once it is ready (after its signal handling is set up), then waits for signals.
CHILD = """
import pathlib, signal, sys
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child starting", flush=True)
pathlib.Path(sys.argv[1]).touch()
while True:
    signal.pause()
"""


def marker_probe(marker: pathlib.Path) -> daemon.Probe:
    async def probe() -> bool:
        return await asyncio.to_thread(marker.exists)

    return probe


def child(tmp_path: pathlib.Path, mode: str = "normal", **options: float) -> daemon.Daemon:
    marker = tmp_path / "ready"
    return daemon.Daemon("child", [sys.executable, "-c", CHILD, str(marker), mode], log_path=tmp_path / "child.log",
                         probe=marker_probe(marker), **options)


async def test_start_waits_for_the_probe_and_stop_terminates(tmp_path: pathlib.Path) -> None:
    process = child(tmp_path)
    await process.start()
    assert process.state is daemon.State.RUNNING and (tmp_path / "ready").exists()
    pid = process.pid
    assert pid is not None and daemon.pid_alive(pid)
    with pytest.raises(RuntimeError, match="already running"):
        await process.start()
    await process.stop()
    assert process.state is daemon.State.STOPPED and process.returncode == -signal.SIGTERM
    assert not daemon.pid_alive(pid)
    assert "child starting" in (tmp_path / "child.log").read_text()
    await process.stop()  # idempotent


async def test_a_child_ignoring_sigterm_is_killed(tmp_path: pathlib.Path) -> None:
    process = child(tmp_path, "ignore-term", stop_timeout=0.3)
    await process.start()
    await process.stop()
    assert process.returncode == -signal.SIGKILL


async def test_exit_while_starting_reports_the_log(tmp_path: pathlib.Path) -> None:
    process = daemon.Daemon("broken", [sys.executable, "-c", "print('bad flag --x'); raise SystemExit(2)"],
                            log_path=tmp_path / "broken.log", probe=marker_probe(tmp_path / "never"))
    with pytest.raises(daemon.DaemonFailed, match=r"(?s)broken exited with status 2 while starting.*bad flag --x"):
        await process.start()
    assert process.state is daemon.State.STOPPED


async def test_not_ready_in_time_is_killed(tmp_path: pathlib.Path) -> None:
    process = daemon.Daemon("slow", [sys.executable, "-c", CHILD, str(tmp_path / "elsewhere"), "normal"],
                            log_path=tmp_path / "slow.log", probe=marker_probe(tmp_path / "never"),
                            start_timeout=0.5)
    with pytest.raises(daemon.DaemonFailed, match=r"did not become ready within 0\.5s"):
        await process.start()
    assert process.pid is not None and not daemon.pid_alive(process.pid)


async def test_exited_on_its_own_and_restart(tmp_path: pathlib.Path) -> None:
    process = child(tmp_path)
    await process.start()
    first = process.pid
    assert first is not None
    (tmp_path / "ready").unlink()
    process._signal(signal.SIGKILL)
    await helpers.eventually(lambda: process.state is daemon.State.EXITED, timeout=10)
    await process.restart()
    assert process.state is daemon.State.RUNNING and process.pid != first and process.starts == 2
    await process.stop()


async def test_cancelled_start_kills_the_child(tmp_path: pathlib.Path) -> None:
    started = tmp_path / "started"
    process = daemon.Daemon("cancelled", [sys.executable, "-c", CHILD, str(started), "normal"],
                            log_path=tmp_path / "c.log", probe=marker_probe(tmp_path / "never"))
    task = asyncio.create_task(process.start())
    await helpers.eventually(started.exists, timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert process.pid is not None and not daemon.pid_alive(process.pid)


async def test_probes_answer_false_for_nothing_listening(tmp_path: pathlib.Path) -> None:
    assert await probes.http_ok("127.0.0.1:1", "/readyz")() is False
    assert await probes.grpc_health(f"unix:{tmp_path / 'none.sock'}", timeout=0.5)() is False
