"""The fault injectors: each breaks one thing on purpose and knows how to put it back.

Every injector has inject() and heal(); heal() is idempotent and does nothing before inject(), so a drill can
call it from a `finally` whatever happened (also on Ctrl-C). Process and proxy faults go through the mesh's
control endpoint (clustermesh.local_mesh.control), so `clustermesh up` keeps owning the processes — and undoes a
fault itself if the drill's connection dies; manifest faults through the app's AppManifest; compaction talks to
the etcd directly with the admin pair. Each returns a one-line detail for the timeline.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from clustermesh.aio import tcp_proxy
from clustermesh.drill import app_manifest
from clustermesh.etcd import client as etcd_client
from clustermesh.local_mesh import control

Op = control.Op
Component = control.Component

_RESTART_POLL = 0.05
DEFAULT_RESTART_TIMEOUT = 60.0


class Fault(Protocol):
    """Something a scenario breaks and heals."""

    async def inject(self) -> str:
        """Break it; return what was done."""
        ...

    async def heal(self) -> str:
        """Put it back (idempotent; a no-op before inject); return what was done."""
        ...


class _ControlFault:
    """A fault made by one control request and healed by another."""

    def __init__(self, client: control.ControlClient, cluster: str, *, breaks: dict[str, Any],
                 heals: dict[str, Any], what: str) -> None:
        self.client = client
        self.cluster = cluster
        self.what = what
        self._breaks = breaks
        self._heals = heals
        self.injected = False
        self.healed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.what} injected={self.injected} healed={self.healed}>"

    async def inject(self) -> str:
        await self.client.call(cluster=self.cluster, **self._breaks)
        self.injected = True
        return self.what

    async def heal(self) -> str:
        if not self.injected or self.healed:
            return ""
        await self.client.call(cluster=self.cluster, **self._heals)
        self.healed = True
        return f"{self.what}: undone"


class EtcdKill(_ControlFault):
    """SIGKILL a cluster's etcd; heal starts it again on the same ports and data."""

    def __init__(self, client: control.ControlClient, cluster: str) -> None:
        super().__init__(client, cluster, breaks={"op": Op.KILL, "component": Component.ETCD},
                         heals={"op": Op.START, "component": Component.ETCD}, what=f"SIGKILL etcd {cluster}")


class EtcdHang(_ControlFault):
    """SIGSTOP a cluster's etcd (its sockets stay open, nothing answers); heal is SIGCONT."""

    def __init__(self, client: control.ControlClient, cluster: str) -> None:
        super().__init__(client, cluster, breaks={"op": Op.STOP, "component": Component.ETCD},
                         heals={"op": Op.CONT, "component": Component.ETCD}, what=f"SIGSTOP etcd {cluster}")


class ProxyCut(_ControlFault):
    """Blackhole the proxy in front of a cluster's etcd: every peer's connection stays open and goes silent, new
    ones connect and hear nothing — a network partition between the etcd and its peers' agents. Heal resets the
    connections that lived through it and forwards again."""

    def __init__(self, client: control.ControlClient, cluster: str) -> None:
        super().__init__(client, cluster, breaks={"op": Op.PROXY, "mode": tcp_proxy.Mode.BLACKHOLE},
                         heals={"op": Op.PROXY, "mode": tcp_proxy.Mode.FORWARD},
                         what=f"blackhole the etcd proxy of {cluster}")


class ApiserverKill:
    """SIGKILL a cluster's apiserver as a crash; `up` restarts it. heal() waits for the restarted one to be ready."""

    def __init__(self, client: control.ControlClient, cluster: str, *,
                 timeout: float = DEFAULT_RESTART_TIMEOUT) -> None:
        self.client = client
        self.cluster = cluster
        self.timeout = timeout
        self._starts = 0
        self.injected = False
        self.healed = False

    def __repr__(self) -> str:
        return f"<ApiserverKill {self.cluster} injected={self.injected} healed={self.healed}>"

    async def _apiserver(self) -> dict[str, Any]:
        status = await self.client.call(Op.STATUS)
        for cluster in status["clusters"]:
            if cluster["name"] == self.cluster:
                found: dict[str, Any] = cluster["apiserver"]
                return found
        raise control.ControlError(f"the control endpoint does not know cluster {self.cluster}")

    async def inject(self) -> str:
        before = await self._apiserver()
        self._starts = before["starts"]
        await self.client.call(Op.KILL, cluster=self.cluster, component=Component.APISERVER)
        self.injected = True
        return f"SIGKILL apiserver {self.cluster} (pid {before['pid']})"

    async def heal(self) -> str:
        """Wait until `up` restarted the apiserver and it is ready; ControlError after the timeout."""
        if not self.injected or self.healed:
            return ""
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    now = await self._apiserver()
                    if now["starts"] > self._starts and now["state"] == "running" and not now["restarting"]:
                        break
                    await asyncio.sleep(_RESTART_POLL)
        except TimeoutError:
            raise control.ControlError(f"the apiserver of {self.cluster} was not restarted within "
                                       f"{self.timeout:g}s") from None
        self.healed = True
        return f"apiserver {self.cluster} restarted and ready (pid {now['pid']})"


class BackendsDown:
    """Every local endpoint of the app in one cluster stops being ready (the pods stay); heal makes them ready."""

    def __init__(self, manifest: app_manifest.AppManifest) -> None:
        self.manifest = manifest
        self.injected = False
        self.healed = False

    def __repr__(self) -> str:
        return f"<BackendsDown {self.manifest.plan.name} injected={self.injected} healed={self.healed}>"

    async def inject(self) -> str:
        self.manifest.set_ready(False)
        self.injected = True
        return f"every endpoint of my-app in {self.manifest.plan.name} not ready"

    async def heal(self) -> str:
        if not self.injected or self.healed:
            return ""
        self.manifest.set_ready(True)
        self.healed = True
        return f"every endpoint of my-app in {self.manifest.plan.name} ready again"


async def rotate_certs(client: control.ControlClient, cluster: str) -> list[str]:
    """Have `up` re-issue the cluster's certificates and hand the new pairs to its peers; the files written."""
    written: list[str] = await client.call(Op.ROTATE_CERTS, cluster=cluster)
    return written


async def compact(config: etcd_client.EtcdConfig) -> int:
    """Compact the etcd's whole history up to its current revision, physically; return that revision.

    StoreError if the etcd cannot be reached.
    """
    async with await etcd_client.EtcdClient.connect(config, timeout=config.request_timeout) as client:
        status = await client.status()
        await client.compact(status.revision, physical=True)
    return status.revision


async def revision(config: etcd_client.EtcdConfig) -> int:
    """The etcd's current revision (what a peer following it live has seen); StoreError if unreachable."""
    async with await etcd_client.EtcdClient.connect(config, timeout=config.request_timeout) as client:
        return (await client.status()).revision
