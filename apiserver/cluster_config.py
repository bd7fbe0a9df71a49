"""The cluster configuration: `cilium/cluster-config/<cluster>` written before any data and kept in place.

The record says which cluster ID the data belongs to and what this writer does (sync canaries, max connected
clusters, service exports); readers refuse a cluster without it (reference §2.1). It is leased like every
other key, written only when etcd holds something else (or holds it on a lease not ours), and re-checked
every interval and whenever its lease is lost, as Cilium's clustercfg.Enforce does, which covers lease loss
and external modification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from clustermesh import codec, errors, keys, records
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import lease as etcd_lease

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 300.0


def record(*, cluster_id: int, max_clusters: int) -> records.ClusterConfig:
    """What the apiserver publishes about itself: canaries on, service exports on."""
    return records.ClusterConfig(
        id=cluster_id,
        capabilities=records.Capabilities(
            synced_canaries=True, max_connected_clusters=max_clusters, service_exports_enabled=True
        ),
    )


class ClusterConfigEnforcer:
    """Keeps one cluster's configuration key equal to its record; enforce() once, then run()."""

    def __init__(
        self,
        client: etcd_client.EtcdClient,
        leases: etcd_lease.LeasePool,
        *,
        cluster: str,
        config: records.ClusterConfig,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.client = client
        self.leases = leases
        self.key = keys.cluster_config_key(cluster).encode()
        self.value = codec.encode(config)
        self.interval = interval
        self.writes = 0
        self._wake = asyncio.Event()
        leases.on_lost(self._lease_lost)

    def __repr__(self) -> str:
        return f"<ClusterConfigEnforcer {self.key.decode()} writes={self.writes}>"

    def _lease_lost(self, lost: set[bytes]) -> None:
        if self.key in lost:
            self._wake.set()

    async def enforce(self) -> bool:
        """Write the record unless etcd holds it on our lease already; True if it wrote. StoreError on failure."""
        current = await self.client.get(self.key)
        lease = await self.leases.lease_for(self.key)
        if current is not None and current.value == self.value and current.lease == lease:
            return False
        await self.client.put(self.key, self.value, lease=lease)
        self.writes += 1
        log.info("event=cluster_config.written key=%s lease=%x", self.key.decode(), lease)
        return True

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Re-enforce every interval and on lease loss until cancelled; sets ready at once (enforce() came first)."""
        retry = backoff.Backoff(initial=min(0.2, self.interval), maximum=min(30.0, self.interval))
        if ready is not None:
            ready.set()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.enforce()
            except errors.StoreError as exc:
                log.warning("event=cluster_config.failed reason=%s", exc)
                if isinstance(exc, errors.LeaseExpired):
                    await self.leases.verify()
                self._wake.set()
                await retry.wait()
                continue
            retry.reset()
