"""The publisher's own duties against a real etcd, beyond conversion: leases, cluster config, heartbeat, misuse.

Covers: a lease that vanishes under a running publisher (revoked, as after an etcd-side expiry) → every key
it held is put back, the cluster config and identities included; the cluster config put back after someone
changes it; the heartbeat rewritten every interval on a lease; restarting in process on the same etcd
adopts the live leases; a second concurrent run() is refused.
Excludes: conversion (test_scenarios.py), the process (test_daemon.py).
"""

from __future__ import annotations

import pytest

from apiserver import publisher as publisher_module
from clustermesh import kube
from tests.apiserver.conftest import CLUSTER, state
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
