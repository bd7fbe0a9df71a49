"""One `clustermesh up` per mesh directory: the directory lock, and stopping what a killed `up` left behind.

`up` holds an exclusive flock on DIR/up.lock while it runs (the kernel releases it when the process dies, however
it dies), so a second `up` on the same directory is refused with the holder's pid. Its daemons run in sessions of
their own (so a terminal's Ctrl-C reaches only `up`, which stops them in order), which means a SIGKILLed `up`
leaves them running; the next `up` finds their pids in mesh.json and stops them before it starts its own. A pid
counts as a leftover only while its command line names DIR, so a reused pid is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pathlib
import signal

from clustermesh import errors
from clustermesh.local_mesh import daemon, layout, mesh_file

log = logging.getLogger(__name__)

_LEFTOVER_STOP_TIMEOUT = 10.0


def lock(directory: pathlib.Path) -> int:
    """Take DIR/up.lock and return its descriptor (close it to release); ConfigError naming the holder if taken."""
    path = directory / layout.LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise errors.ConfigError(
            f"{directory} is in use by another `clustermesh up` (pid {holder}): stop it first, or use another --dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _ours(pid: int, directory: pathlib.Path) -> bool:
    """True if pid runs a command that names directory: a daemon of a previous `up` on it, not a reused pid."""
    try:
        command = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(directory).encode() in command


async def stop_leftovers(previous: mesh_file.MeshFile, directory: pathlib.Path) -> list[int]:
    """SIGTERM (then SIGKILL after 10 s) the daemons a killed `up` on directory left running; return their pids.

    Call only while holding the lock: then no live `up` owns them.
    """
    leftovers = [pid for pid in previous.pids() if daemon.pid_alive(pid) and _ours(pid, directory)]
    if not leftovers:
        return []
    log.warning("event=local_mesh.leftovers pids=%s reason=%r", leftovers, "a previous up on this directory was killed")
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    # Not our children: there is no exit to wait for, only their pids to watch disappear.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_LEFTOVER_STOP_TIMEOUT):
            while any(daemon.pid_alive(pid) and _ours(pid, directory) for pid in leftovers):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    for pid in leftovers:
        if daemon.pid_alive(pid) and _ours(pid, directory):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return leftovers
