"""The process heap: give the memory freed after a big sync back to the operating system.

An agent's initial sync allocates its peers' list pages (protobuf messages, keys, values) while it builds the
long-lived cache entries between them, and frees the pages as it goes. glibc's malloc keeps the holes this
leaves: after a full-size bootstrap (bench/agent_bootstrap.py: 132,500 entries from 25 peers) 25-45 MB of
freed heap stayed resident until `malloc_trim(0)` returned it, ~30% of the agent's RSS. Python's own
allocator releases its empty arenas by itself; what stays is glibc's free space, so trimming it is all
that is needed. Where malloc_trim does not exist (musl, macOS) trim() does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def trim() -> bool:
    """Return the heap's free memory to the OS (glibc's `malloc_trim(0)`); False where it is unavailable.

    Takes a few milliseconds on a heap of a few hundred MB (it walks the free lists): call it after a sync,
    not per event.
    """
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return False
    started = time.perf_counter()
    released = malloc_trim(0)
    log.debug("event=heap.trimmed released=%s seconds=%.4f", bool(released), time.perf_counter() - started)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols the interpreter is linked with, the C library's included
    except OSError:
        return None
    function = getattr(libc, "malloc_trim", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trimmed: Callable[[int], int] = function
    return trimmed
