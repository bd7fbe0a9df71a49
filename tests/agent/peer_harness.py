"""The peer-side harness shared by the agent's peer tests; this module holds no tests.

A Peer is a cluster as an agent sees it: its own etcd (mutual TLS, real process, optionally behind a TCPProxy
for partitions) and an admin client that writes the cluster's export straight into it with the core codec
and key schema, as a clustermesh-apiserver (or Cilium's) would. expected() reads the export back and decodes
it the way the agent must, so a test can demand that the agent's cache equals the peer's etcd exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import pathlib
from collections.abc import AsyncIterator, Iterable

from agent import cache as mesh_cache
from agent import mesh
from clustermesh import certs, codec, keys, records
from clustermesh.aio import tcp_proxy
from clustermesh.errors import DecodeError
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import process
from clustermesh.keys import Kind
from clustermesh.mesh_config import PeerConfig
from tests.conftest import ETCD_TEST_OPTIONS
from tests.helpers import eventually

LOCAL = mesh.LocalCluster(name="cluster-a", cluster_id=1, pod_cidrs=("10.1.0.0/16",))
# Fast enough for tests: a hung peer is noticed within 2 s, reconnects start after 50 ms.
FAST = mesh.PeerOptions(
    keepalive_interval=1.0, keepalive_timeout=1.0, backoff_initial=0.05, backoff_max=0.5, config_timeout=10.0,
    sync_timeout=10.0,
)
DATA_KINDS = (Kind.NODES, Kind.SERVICES, Kind.IDENTITIES, Kind.IPCACHE)


def now() -> bytes:
    return codec.encode_timestamp(datetime.datetime.now(datetime.UTC))


def node(cluster: str, cluster_id: int, name: str, *, cidr: str | None = None, ip: str = "172.18.0.2") -> records.Node:
    return records.Node(
        name=name, cluster=cluster, cluster_id=cluster_id, source="custom-resource",
        ip_addresses=(records.NodeAddress("InternalIP", ip),),
        ipv4_alloc_cidr=records.CIDR.parse(cidr) if cidr else None,
    )


def service(
    cluster: str, cluster_id: int, namespace: str, name: str, backends: Iterable[str]
) -> records.ClusterService:
    port = {"http": records.L4Addr("TCP", 8080)}
    return records.ClusterService(
        cluster=cluster, namespace=namespace, name=name, cluster_id=cluster_id, shared=True, include_external=True,
        frontends={"10.96.0.10": {"http": records.L4Addr("TCP", 80)}},
        backends={ip: port for ip in backends},
    )


def identity(cluster: str, number: int, app: str) -> records.Identity:
    return records.Identity.from_labels(
        number, {"app": app, records.POLICY_LABEL_CLUSTER: cluster, "io.kubernetes.pod.namespace": "default"}
    )


def ip_entry(ip: str, number: int) -> records.IPIdentityPair:
    return records.IPIdentityPair(ip=ip, host_ip="172.18.0.2", id=number, k8s_namespace="default", k8s_pod_name="p")


Published = (
    records.Node | records.ClusterService | records.ServiceExport | records.Identity | records.IPIdentityPair
)
"""A record as a peer writes it (the cache keeps ipcache entries as mesh_cache.IPCacheEntry)."""


def cached_form(record: Published) -> mesh_cache.Record:
    """What the agent's cache holds for a valid published record."""
    if isinstance(record, records.IPIdentityPair):
        return mesh_cache.IPCacheEntry(
            record.prefix_string, record.id, record.host_ip, record.key, record.k8s_namespace, record.k8s_pod_name
        )
    return record


def record_key(cluster: str, record: Published, *, cached: bool = False) -> str:
    """The key `cluster` publishes record under."""
    if isinstance(record, records.Node):
        return (keys.cached_node_key if cached else keys.node_key)(cluster, record.name)
    if isinstance(record, records.ClusterService):
        return (keys.cached_service_key if cached else keys.service_key)(cluster, record.namespace, record.name)
    if isinstance(record, records.ServiceExport):
        build = keys.cached_service_export_key if cached else keys.service_export_key
        return build(cluster, record.namespace, record.name)
    if isinstance(record, records.Identity):
        return keys.cached_identity_key(cluster, record.id) if cached else keys.identity_key(record.id)
    return keys.cached_ip_key(cluster, record.prefix_string) if cached else keys.ip_key(record.prefix_string)


@dataclasses.dataclass
class Peer:
    """One peer cluster: its etcd, certificates, admin client, and (optionally) a proxy in front of its etcd."""

    name: str
    cluster_id: int
    etcd: process.EtcdProcess
    certs: certs.ClusterCerts
    admin: etcd_client.EtcdClient
    proxy: tcp_proxy.TCPProxy | None = None
    cached: bool = False

    @property
    def endpoint(self) -> str:
        return f"https://{self.proxy.address}" if self.proxy is not None else self.etcd.endpoint

    def peer_config(self, *, name: str | None = None, digest: str = "v1") -> PeerConfig:
        """What the agent's mesh-config file for this peer says (read-only `remote` certificate)."""
        config = etcd_client.EtcdConfig(endpoints=(self.endpoint,), tls=self.certs.remote)
        return PeerConfig(name=name or self.name, etcd=config, digest=digest)

    async def publish_config(
        self,
        *,
        cluster_id: int | None = None,
        synced_canaries: bool = True,
        max_connected_clusters: int = 255,
        service_exports_enabled: bool | None = False,
    ) -> None:
        config = records.ClusterConfig(
            id=self.cluster_id if cluster_id is None else cluster_id,
            capabilities=records.Capabilities(
                synced_canaries=synced_canaries, cached=self.cached, max_connected_clusters=max_connected_clusters,
                service_exports_enabled=service_exports_enabled,
            ),
        )
        await self.admin.put(keys.cluster_config_key(self.name).encode(), codec.encode(config))

    async def publish_canaries(self, kinds: Iterable[Kind] = tuple(Kind)) -> None:
        for kind in kinds:
            await self.admin.put(keys.synced_canary_key(self.name, kind, cached=self.cached).encode(), now())

    async def beat(self) -> None:
        await self.admin.put(keys.HEARTBEAT_KEY.encode(), now())

    async def put(self, *items: Published) -> None:
        ops = [
            etcd_client.put_op(record_key(self.name, item, cached=self.cached).encode(), codec.encode(item))
            for item in items
        ]
        for start in range(0, len(ops), etcd_client.MAX_TXN_OPS):
            await self.admin.txn(ops[start : start + etcd_client.MAX_TXN_OPS])

    async def put_raw(self, key: str, value: bytes) -> None:
        await self.admin.put(key.encode(), value)

    async def delete(self, *items: Published) -> None:
        for item in items:
            await self.admin.delete(record_key(self.name, item, cached=self.cached).encode())

    async def restart(self) -> None:
        """Start the killed etcd again, with a fresh admin client (the old channel may sit in backoff)."""
        await self.etcd.start()
        old, self.admin = self.admin, await etcd_client.EtcdClient.connect(self.etcd.client_config(self.certs.admin))
        await old.close()

    async def compact(self) -> None:
        await self.admin.compact((await self.admin.status()).revision)

    async def expected(self, kinds: Iterable[Kind] = DATA_KINDS) -> dict[Kind, dict[str, mesh_cache.Record]]:
        """The valid records the peer's etcd holds now, by kind and cache name, decoded as the agent must."""
        state: dict[Kind, dict[str, mesh_cache.Record]] = {}
        for kind in kinds:
            prefix = keys.watch_prefix(kind, self.name, cached=self.cached)
            entries: dict[str, mesh_cache.Record] = {}
            for kv in (await self.admin.list_prefix(prefix.encode())).kvs:
                key = kv.key.decode()
                try:
                    entries[key[len(prefix) :]] = cached_form(
                        _decode(kind, key, kv.value, self.name, self.cluster_id)
                    )
                except DecodeError:
                    continue
            state[kind] = entries
        return state


def _decode(kind: Kind, key: str, value: bytes, cluster: str, cluster_id: int) -> Published:
    if kind is Kind.NODES:
        return codec.decode_node(key, value, cluster=cluster, cluster_id=cluster_id)
    if kind is Kind.SERVICES:
        return codec.decode_service(key, value, cluster=cluster, cluster_id=cluster_id)
    if kind is Kind.SERVICE_EXPORTS:
        return codec.decode_service_export(key, value, cluster=cluster)
    if kind is Kind.IDENTITIES:
        return codec.decode_identity(key, value, cluster=cluster, cluster_id=cluster_id)
    return codec.decode_ip_identity(key, value, cluster=cluster, cluster_id=cluster_id)


def cached_state(cache: mesh_cache.MeshCache, cluster: str, kinds: Iterable[Kind] = DATA_KINDS) -> dict[Kind, dict]:
    return {kind: {name: record for _, name, record in cache.items(kind, cluster)} for kind in kinds}


async def converged(cache: mesh_cache.MeshCache, peer: Peer, *, timeout: float = 10.0) -> None:
    """Wait until the cache holds exactly the peer's valid records: nothing stale, nothing missing."""

    async def equal() -> bool:
        expected = await peer.expected()
        actual = cached_state(cache, peer.name)
        for kind in DATA_KINDS:
            stale = actual[kind].keys() - expected[kind].keys()
            missing = expected[kind].keys() - actual[kind].keys()
            changed = {n for n in expected[kind].keys() & actual[kind].keys() if expected[kind][n] != actual[kind][n]}
            assert not (stale or missing or changed), f"{peer.name} {kind.value}: {stale=} {missing=} {changed=}"
        return True

    await eventually(equal, timeout=timeout, interval=0.05, description=f"cache equals {peer.name}'s etcd")


@contextlib.asynccontextmanager
async def peer_cluster(
    directory: pathlib.Path,
    name: str,
    cluster_id: int,
    *,
    proxied: bool = False,
    cached: bool = False,
    cluster_certs: certs.ClusterCerts | None = None,
) -> AsyncIterator[Peer]:
    """A running peer with its own CA (or the given one) and etcd; a proxy, if asked for, forwards to it.

    Two peers of one name (a replaced etcd) need distinct directories and the same cluster_certs.
    """
    if cluster_certs is None:
        cluster_certs = certs.init_cluster(directory / name / "certs", name)
    etcd = process.EtcdProcess(
        directory / name / "etcd", name=name, server_tls=cluster_certs.server, options=ETCD_TEST_OPTIONS
    )
    async with etcd, contextlib.AsyncExitStack() as stack:
        admin = await etcd_client.EtcdClient.connect(etcd.client_config(cluster_certs.admin))
        proxy = None
        if proxied:
            host, port = etcd.endpoint.removeprefix("https://").rsplit(":", 1)
            proxy = tcp_proxy.TCPProxy(host, int(port))
            await stack.enter_async_context(_running(proxy.run))
        peer = Peer(name, cluster_id, etcd, cluster_certs, admin, proxy, cached)
        stack.push_async_callback(lambda: peer.admin.close())
        yield peer


@contextlib.asynccontextmanager
async def _running(run) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(run(ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running_mesh(agent_mesh: mesh.Mesh, *, wait_ready: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run the mesh; with wait_ready, return once it is ready. Cancelled and awaited on exit."""
    ready = asyncio.Event()
    task = asyncio.create_task(agent_mesh.run(ready=ready), name="mesh")
    try:
        if wait_ready:
            await asyncio.wait_for(ready.wait(), 20)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def status_of(agent_mesh: mesh.Mesh, name: str):
    return next(status for status in agent_mesh.statuses() if status.name == name)


async def publish_basic(
    peer: Peer, *, nodes: int = 3, cidr_base: str = "10.2", backend: int = 10
) -> list[Published]:
    """Config, a small export of every kind, canaries and a heartbeat: a peer as an apiserver leaves it.

    The records go in one transaction, so they share one revision whatever their number.
    """
    base = peer.cluster_id << 16
    items: list[Published] = [
        *(node(peer.name, peer.cluster_id, f"node-{i}", cidr=f"{cidr_base}.{i}.0/24") for i in range(nodes)),
        service(peer.name, peer.cluster_id, "my-namespace", "my-app", [f"{cidr_base}.0.{backend + i}" for i in (0, 1)]),
        *(identity(peer.name, base + 100 + i, f"app-{i}") for i in range(3)),
        *(ip_entry(f"{cidr_base}.0.{i + 10}", base + 100 + i % 3) for i in range(4)),
    ]
    await peer.publish_config()
    await peer.put(*items)
    await peer.publish_canaries()
    await peer.beat()
    return items
