"""The heartbeat: `cilium/.heartbeat` rewritten with the current time every interval, on a lease.

Readers (Cilium agents, our agents) treat a heartbeat older than a few intervals as a dead writer, so this is
what lets peers detect a dead apiserver (reference §2.2). Cilium writes it every minute; the default here is
15 s so that peers can notice within seconds rather than minutes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging

from clustermesh import codec, errors, keys
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 15.0
KEY = keys.HEARTBEAT_KEY.encode()


class Heartbeat:
    """Writes the heartbeat key until cancelled; failures are retried with backoff."""

    def __init__(
        self, client: etcd_client.EtcdClient, leases: etcd_lease.LeasePool, *, interval: float = DEFAULT_INTERVAL
    ) -> None:
        if interval <= 0:
            raise ValueError("heartbeat interval must be positive")
        self.client = client
        self.leases = leases
        self.interval = interval
        self.beats = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"<Heartbeat interval={self.interval} beats={self.beats} failures={self.failures}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Write the heartbeat now and then every interval until cancelled; sets ready after the first write."""
        retry = backoff.Backoff(initial=min(0.2, self.interval), maximum=self.interval)
        while True:
            try:
                now = datetime.datetime.now(datetime.UTC)
                await self.client.put(KEY, codec.encode_timestamp(now), lease=await self.leases.lease_for(KEY))
            except errors.StoreError as exc:
                self.failures += 1
                log.warning("event=heartbeat.failed reason=%s", exc)
                if isinstance(exc, errors.LeaseExpired):
                    await self.leases.verify()
                await retry.wait()
                continue
            retry.reset()
            self.beats += 1
            log.debug("event=heartbeat.written")
            if ready is not None:
                ready.set()
            await asyncio.sleep(self.interval)
