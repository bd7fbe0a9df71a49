"""A child process's end of life, shared by every owner of one (the local etcd, the local mesh's daemons).

Stopping: SIGTERM (with SIGCONT, since a stopped process keeps SIGTERM pending until continued), SIGKILL after
a grace period, and SIGKILL at once if the owner is cancelled while waiting, so that a cancelled stop never
leaves an orphan. Reading the log tail of the current run, for error messages that say why a child died.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal

LOG_TAIL_LINES = 20


def send(process: asyncio.subprocess.Process | None, signum: signal.Signals) -> None:
    """Signal the process unless it has exited (or was never started)."""
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signum)


async def terminate(process: asyncio.subprocess.Process, grace: float) -> bool:
    """SIGTERM the process and reap it; SIGKILL it after `grace` seconds or if cancelled meanwhile.

    Returns True if it ended by itself, False if it had to be killed.
    """
    send(process, signal.SIGTERM)
    send(process, signal.SIGCONT)
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        send(process, signal.SIGKILL)
        await process.wait()
        return False
    except asyncio.CancelledError:
        send(process, signal.SIGKILL)
        raise
    return True


def log_tail(path: pathlib.Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines written to the log at `path` from byte `offset` on (where the current run began)."""
    try:
        with path.open("rb") as log_file:
            log_file.seek(offset)
            text = log_file.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])
