"""The heartbeat timeout a peer gets when it sets none: derived from the writer's observed interval.

Unit level, with a fake clock and the observation seam; the end-to-end heartbeat loss is covered by
test_remote_cluster.py.
"""

from __future__ import annotations

from agent import heartbeat


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_short_gap_after_a_writer_restart_does_not_shrink_the_timeout() -> None:
    clock = FakeClock()
    beat = heartbeat.Heartbeat(cluster="cluster-b", clock=clock, timeout=None, floor=2.0, tick=0.1)
    revision = 1
    for gap in (15.0, 15.0, 0.3):  # a restarted apiserver writes at once: the last gap is short
        clock.now += gap
        revision += 1
        beat._observe(revision, live=True)
    assert beat.interval == 15.0
    assert beat.timeout == 45.0


def test_the_floor_bounds_a_fast_writer() -> None:
    clock = FakeClock()
    beat = heartbeat.Heartbeat(cluster="cluster-b", clock=clock, timeout=None, floor=2.0, tick=0.1)
    for revision in (2, 3):
        clock.now += 0.2
        beat._observe(revision, live=True)
    assert beat.timeout == 2.0
