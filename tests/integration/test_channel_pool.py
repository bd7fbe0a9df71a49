"""ChannelPool against a real etcd with mutual TLS: clients of one target and material share one channel.

Covers: a share per client, the channel closed with the last share only (the others' calls go on), a
second close() not returning a second share, other TLS material dialing another channel, a failed dial
returning its share, and each client pinning its own etcd cluster id on the shared channel.
Excludes: peers sharing a connection end to end (tests/agent/test_mesh.py).
"""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from clustermesh import errors
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import process as etcd_process


async def test_clients_share_one_channel_until_the_last_closes(etcd, certs_dir) -> None:
    pool = etcd_client.ChannelPool()
    config = etcd.client_config(certs_dir.admin)
    first = await etcd_client.EtcdClient.connect(config, channels=pool)
    second = await etcd_client.EtcdClient.connect(config, channels=pool)
    other = await etcd_client.EtcdClient.connect(etcd.client_config(certs_dir.remote), channels=pool)
    assert first.channel is second.channel and other.channel is not first.channel
    assert repr(pool) == "<ChannelPool channels=2 shares=[1, 2]>"
    await first.close()
    await first.close()  # once: the second client's share is its own
    assert (await second.status()).revision > 0 and second.cluster_id == first.cluster_id != 0
    await second.close()
    with pytest.raises(grpc.aio.UsageError, match="Channel is closed"):
        await second.status()  # the last share closed the channel
    await other.close()
    assert repr(pool) == "<ChannelPool channels=0 shares=[]>"
    third = await etcd_client.EtcdClient.connect(config, channels=pool)
    assert third.channel is not second.channel and (await third.status()).revision > 0
    await third.close()


async def test_a_failed_dial_returns_its_share(certs_dir) -> None:
    pool = etcd_client.ChannelPool()
    config = etcd_client.EtcdConfig(
        endpoints=(f"https://127.0.0.1:{etcd_process.free_port()}",), tls=certs_dir.admin, request_timeout=0.5
    )
    with pytest.raises(errors.StoreUnavailable):
        await etcd_client.EtcdClient.connect(config, channels=pool)
    assert repr(pool) == "<ChannelPool channels=0 shares=[]>"


async def test_each_client_pins_its_own_cluster_id(etcd, certs_dir) -> None:
    pool = etcd_client.ChannelPool()
    config = dataclasses.replace(etcd.client_config(certs_dir.admin), request_timeout=3)
    pinned = await etcd_client.EtcdClient.connect(config, channels=pool)
    fresh = await etcd_client.EtcdClient.connect(config, channels=pool)
    pinned.cluster_id ^= 1  # as if it had first talked to another etcd cluster behind the address
    with pytest.raises(errors.ClusterIDChanged):
        await pinned.status()
    assert (await fresh.status()).cluster_id == fresh.cluster_id
    await pinned.close()
    await fresh.close()
