"""The publisher's own duties against a real etcd, beyond conversion: leases, cluster config, heartbeat, misuse.

Covers: a lease that vanishes under a running publisher (revoked, as after an etcd-side expiry) → every key
it held is put back, the cluster config and identities included; the cluster config put back after someone
changes it; the heartbeat rewritten every interval on a lease; restarting in process on the same etcd
adopts the live leases; a second concurrent run() is refused; while the source's initial state arrives, pods
whose Namespace and Node have been seen are written at once (canaries still wait for SYNCED), the others at
SYNCED.
Excludes: conversion (test_scenarios.py), the process (test_daemon.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest

from apiserver import publisher as publisher_module
from clustermesh import kube
from tests.apiserver.conftest import CLUSTER, DEADLINE, canaries, options, state
from tests.helpers import eventually

PODS = """\
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: web}]}
status: {podIP: 10.244.0.10}
"""
CONFIG_KEY = f"cilium/cluster-config/{CLUSTER}"


@pytest.fixture
def source(tmp_path) -> kube.ManifestSource:
    directory = tmp_path / "manifests"
    directory.mkdir()
    (directory / "objects.yaml").write_text(PODS)
    return kube.ManifestSource(directory, kinds=publisher_module.SOURCE_KINDS)


async def test_lost_lease_republishes_every_key(admin, source, start_publisher) -> None:
    async with start_publisher(source, lease_ttl=3) as running:
        published = await state(admin)
        assert len(published) == 4
        (lease,) = {kv.lease for kv in published.values()}
        await admin.lease_revoke(lease)

        async def back() -> bool:
            now = await state(admin)
            return now.keys() == published.keys() and all(kv.lease not in (0, lease) for kv in now.values())

        await eventually(back, timeout=15)
        await running.settled()
        assert {key: kv.value for key, kv in (await state(admin)).items()} == {
            key: kv.value for key, kv in published.items()
        }


async def test_cluster_config_is_put_back(admin, source, start_publisher) -> None:
    async with start_publisher(source, cluster_config_interval=0.1):
        original = (await admin.get(CONFIG_KEY.encode())).value
        await admin.put(CONFIG_KEY.encode(), b'{"id":99}')

        async def restored() -> bool:
            current = await admin.get(CONFIG_KEY.encode())
            return current is not None and current.value == original and current.lease != 0

        await eventually(restored)


async def test_heartbeat_is_rewritten_every_interval(admin, source, start_publisher) -> None:
    async with start_publisher(source, heartbeat_interval=0.05):
        first = await admin.get(b"cilium/.heartbeat")
        assert first is not None and first.lease != 0

        async def rewritten() -> bool:
            current = await admin.get(b"cilium/.heartbeat")
            return current is not None and current.mod_revision > first.mod_revision

        await eventually(rewritten)


async def test_restart_in_process_adopts_live_leases(admin, source, start_publisher) -> None:
    async with start_publisher(source):
        published = await state(admin)
    async with start_publisher(source) as running:
        assert await state(admin) == published
        assert set(running.publisher.leases.leases) == {kv.lease for kv in published.values()}


async def test_second_run_is_refused(source, start_publisher) -> None:
    async with start_publisher(source) as running:
        with pytest.raises(RuntimeError, match="already running"):
            await running.publisher.run()


class HeldSource:
    """A source that delivers its objects at once and SYNCED only when `release` is set."""

    kinds = frozenset(kube.Kind)

    def __init__(self, objects: Iterable[dict[str, Any]]) -> None:
        self.objects = list(objects)
        self.release = asyncio.Event()

    async def run(self, sink: kube.EventSink, *, ready: asyncio.Event | None = None) -> None:
        for obj in self.objects:
            metadata = obj["metadata"]
            key = kube.ObjectKey(kube.Kind(obj["kind"]), metadata.get("namespace", ""), metadata["name"])
            await sink(kube.Event(kube.EventType.UPSERT, key, obj))
        await self.release.wait()
        await sink(kube.SYNCED)
        if ready is not None:
            ready.set()
        await asyncio.Event().wait()


def pod(name: str, namespace: str, node: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"nodeName": node},
        "status": {"podIP": ip, "hostIP": "172.18.0.9"},
    }


async def test_settled_pods_are_written_before_the_source_is_synced(admin, clock) -> None:
    source = HeldSource([
        {"kind": "Namespace", "metadata": {"name": "shop"}},
        {"kind": "Node", "metadata": {"name": "node-1"},
         "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]}},
        pod("web", "shop", "node-1", "10.244.0.10"),
        pod("unseen-namespace", "later", "node-1", "10.244.0.11"),
        pod("unseen-node", "shop", "node-2", "10.244.0.12"),
    ])
    publisher = publisher_module.Publisher(admin, source, options(), clock=clock)
    task = asyncio.create_task(publisher.run(), name="test publisher")
    try:
        ip = "cilium/state/ip/v1/default/"
        await eventually(lambda: publisher.kind_status()[-1].keys == 1, timeout=DEADLINE)
        await publisher.flush()
        early = await state(admin)
        assert f"{ip}10.244.0.10" in early and f"cilium/state/nodes/v1/{CLUSTER}/node-1" in early
        assert f"{ip}10.244.0.11" not in early and f"{ip}10.244.0.12" not in early
        assert await canaries(admin) == {} and not publisher.ready.is_set()

        source.release.set()
        async with asyncio.timeout(DEADLINE):
            await publisher.ready.wait()
        final = await state(admin)
        assert {f"{ip}10.244.0.10", f"{ip}10.244.0.11", f"{ip}10.244.0.12"} <= final.keys()
        # Written once: the early entry was not rewritten at SYNCED.
        assert final[f"{ip}10.244.0.10"].mod_revision == early[f"{ip}10.244.0.10"].mod_revision
        assert len(await canaries(admin)) == len(publisher_module.KINDS)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
