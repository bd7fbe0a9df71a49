"""A running mesh for drill tests: `python -m clustermesh up` in a process of its own, as an operator runs it.

`up` owns every process of the mesh (etcds, apiservers, agents, the etcd proxies, the control endpoint); the drills
under test act on it from the test process, exactly as `clustermesh drill` does from another terminal. Agents get
fast failure detection (1 s keepalives) and a short cache TTL, apiservers a short heartbeat, so every phase of
every scenario happens within a few seconds. The fixture stops `up` (SIGTERM, then SIGKILL) and, as a last resort,
what a killed `up` left running. Mesh directories live directly under /tmp: the agents' unix socket paths must fit
in 107 bytes.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from clustermesh.local_mesh import mesh_file

# A 2 s heartbeat: the agent derives its heartbeat timeout from the interval it observes, and the default 15 s
# interval lets an apiserver restart make it derive one shorter than the interval (docs/drills.md, findings).
UP_FLAGS = ("--keepalive-interval", "1", "--keepalive-timeout", "1", "--cache-ttl", "0.5", "--heartbeat-interval", "2")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first line `up` prints (the mesh, once ready), or b"" if it exits or stays silent for `timeout`."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return b""
    return process.stdout.readline()


@contextlib.contextmanager
def running_mesh(prefix: str) -> Iterator[pathlib.Path]:
    """A 2-cluster mesh with one agent per cluster, running until the block ends; yields its directory."""
    directory = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    stderr_path = directory / "up.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "clustermesh", "up", "--dir", str(directory), "--nodes", "1", "-o", "json",
             *UP_FLAGS],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
        )
    try:
        if not _first_line(process, START_TIMEOUT):
            pytest.fail(f"`clustermesh up` not ready within {START_TIMEOUT:g}s:\n{stderr_path.read_text()}")
        yield directory
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
        _kill_leftovers(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _kill_leftovers(directory: pathlib.Path) -> None:
    """SIGKILL what a killed `up` left running: pids mesh.json names whose command line names the directory."""
    with contextlib.suppress(Exception):
        mesh = mesh_file.load(directory)
        if mesh.state == "stopped":
            return
        for pid in mesh.pids():
            with contextlib.suppress(OSError):
                if str(directory).encode() in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
