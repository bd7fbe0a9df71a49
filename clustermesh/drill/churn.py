"""Churn: a steady rate of endpoint changes in one cluster while a drill runs, so that a lost delete would show.

Each change is one AppManifest generation (every pod of my-app replaced by one with a new name and IP, the
replica count cycling), written at `rate` generations per second on a fixed schedule: a late tick is not made up
for by a burst (the point is steady pressure, not a count). Churn only writes; restoring the manifest is its
owner's business (the drill runner), because the owner also decides when the file is settled.
"""

from __future__ import annotations

import asyncio
import logging

from clustermesh.drill import app_manifest

log = logging.getLogger(__name__)


class Churn:
    """Steps `manifest` `rate` times per second while run() runs."""

    def __init__(self, manifest: app_manifest.AppManifest, *, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"churn rate must be positive, got {rate}")
        self.manifest = manifest
        self.rate = rate
        self.changes = 0
        self._running = False

    def __repr__(self) -> str:
        return f"<Churn {self.manifest.plan.name} rate={self.rate:g}/s changes={self.changes}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Write the first change now, set `ready`, then one every 1/rate seconds until cancelled.

        A manifest that cannot be written (CertificateError) ends run() with that error. RuntimeError if
        already running.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        period = 1.0 / self.rate
        next_at = loop.time()
        try:
            while True:
                self.manifest.step()
                self.changes += 1
                if ready is not None and not ready.is_set():
                    ready.set()
                next_at = max(next_at + period, loop.time())
                await asyncio.sleep(next_at - loop.time())
        finally:
            self._running = False
            log.info("event=drill.churn.stopped cluster=%s changes=%d", self.manifest.plan.name, self.changes)
