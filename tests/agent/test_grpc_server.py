"""The agent's gRPC API served for real (unix socket, and TCP with mutual TLS) and called with real stubs.

Covered: GetStatus (field-by-field copy of PeerStatus, uptime, global services), the four lists with and
without a cluster filter, ResolveService (affinity-selected `backends` vs `all_backends`, `local` flag, not
found, invalid arguments), LookupIP (identity from the cache, reserved identities, prefix forms), Watch
(snapshot, SYNCED, live changes in order, kind filter, skip_initial, invalid kinds, the RESOURCE_EXHAUSTED
back-pressure policy), WatchBatched (the same events grouped, max_batch, the byte bound), gRPC health and
reflection, mTLS (a client without a certificate is refused), and misuse. The cache is filled directly and
peer status comes from a fake (the lowest seams).
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import clustermesh
from agent import cache as mesh_cache
from agent import config, grpc_server, peer_status, services
from clustermesh import certs, records, tls
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from tests import helpers
from tests.agent import test_services as objects

Kind = mesh_cache.Kind
NS, NAME = objects.NS, objects.NAME


class Statuses:
    """A status source reporting whatever the test sets."""

    def __init__(self, *statuses: peer_status.PeerStatus) -> None:
        self.items = list(statuses)

    def statuses(self) -> list[peer_status.PeerStatus]:
        return list(self.items)


NODE = records.Node(
    name="node-1", cluster="cluster-b", cluster_id=2,
    ip_addresses=(records.NodeAddress("InternalIP", "172.18.0.2"),
                  records.NodeAddress("CiliumInternalIP", "10.2.0.10")),
    ipv4_alloc_cidr=records.CIDR.parse("10.2.0.0/24"), ipv6_alloc_cidr=records.CIDR.parse("fd00:2::/96"),
    ipv4_health_ip="10.2.0.134", labels={"kubernetes.io/hostname": "node-1"}, wireguard_pub_key="key=",
    encryption_key=3,
)
IDENTITY = records.Identity.from_labels(131_073, {"app": "web", "io.kubernetes.pod.namespace": NS,
                                                  "io.cilium.k8s.policy.cluster": "cluster-b"})
IP_ENTRY = mesh_cache.IPCacheEntry(prefix="10.2.0.7", host_ip="172.18.0.2", id=131_073, key=1, k8s_namespace=NS,
                                   k8s_pod_name="web-1")


class World:
    def __init__(self, cache: mesh_cache.MeshCache, source: objects.ScriptedSource, statuses: Statuses,
                 server: grpc_server.GrpcServer, service: grpc_server.AgentService, channel: grpc.aio.Channel):
        self.cache = cache
        self.source = source
        self.statuses = statuses
        self.server = server
        self.service = service
        self.channel = channel
        self.stub = agent_pb2_grpc.AgentStub(channel)


def fill(cache: mesh_cache.MeshCache) -> None:
    cache.upsert(Kind.NODES, "cluster-b", "node-1", NODE)
    cache.upsert(Kind.NODES, "cluster-c", "node-9", records.Node(name="node-9", cluster="cluster-c", cluster_id=3))
    cache.upsert(Kind.IDENTITIES, "cluster-b", "131073", IDENTITY)
    cache.upsert(Kind.IDENTITIES, "cluster-c", "196609", records.Identity(196_609, "k8s:app=db;"))
    cache.upsert(Kind.IPCACHE, "cluster-b", "10.2.0.7", IP_ENTRY)
    cache.upsert(Kind.IPCACHE, "cluster-b", "10.2.1.0/24", mesh_cache.IPCacheEntry(prefix="10.2.1.0/24", id=2))
    cache.upsert(Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", objects.remote_service("cluster-b", 2, "20.0.0.2"))


@pytest.fixture
async def world(tmp_path: pathlib.Path) -> AsyncIterator[World]:
    cache = mesh_cache.MeshCache()
    fill(cache)
    statuses = Statuses()
    source = objects.ScriptedSource()
    ticks = iter(range(0, 1000, 7))
    async with objects.running_local(source) as local:
        resolver = services.ServiceResolver(cache, local, local_cluster="cluster-a", local_cluster_id=1)
        service = grpc_server.AgentService(
            cache, resolver, statuses, agent=grpc_server.AgentIdentity("cluster-a", 1, "node-a1"), max_pending=50,
            clock=lambda: float(next(ticks)),
        )
        socket_path = tmp_path / "run" / "agent.sock"
        server = grpc_server.GrpcServer(service, config.ListenAddress(unix_path=socket_path))
        async with objects.running(server), grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
            yield World(cache, source, statuses, server, service, channel)
    assert not socket_path.exists(), "the socket file is removed at stop"


async def test_status(world: World) -> None:
    world.statuses.items = [
        peer_status.PeerStatus(name="cluster-c", refused_reason="cluster ID 1 is the local cluster's"),
        peer_status.PeerStatus(
            name="cluster-b", connected=True, ready=True, cluster_id=2, config_retrieved=True, sync_canaries=True,
            synced=peer_status.SyncState(nodes=True, services=True, identities=True, endpoints=True),
            num_nodes=1, num_endpoints=2, num_identities=1, num_services=1, failures=3,
            last_failure_unix=1_700_000_000.5, last_error="connection refused", last_event_age_seconds=0.25,
            status="watching", etcd_endpoint="https://127.0.0.1:2379", etcd_cluster_id="9f649a615d34326f",
            invalid_records=4, reconnections=2, heartbeat_age_seconds=1.5,
            invalid_by_reason=(("cluster ID mismatch", 4),),
        ),
    ]
    status = await world.stub.GetStatus(agent_pb2.GetStatusRequest())
    assert (status.cluster_name, status.cluster_id, status.node_name) == ("cluster-a", 1, "node-a1")
    assert status.version == clustermesh.__version__
    assert status.uptime_seconds == 7.0
    assert status.num_global_services == 1
    assert [peer.name for peer in status.peers] == ["cluster-b", "cluster-c"]
    b, c = status.peers
    assert (b.connected, b.ready, b.cluster_id, b.failures, b.last_error) == (True, True, 2, 3, "connection refused")
    assert (b.synced.nodes, b.synced.endpoints, b.synced.service_exports) == (True, True, False)
    assert (b.etcd_cluster_id, b.invalid_records, b.heartbeat_age_seconds) == ("9f649a615d34326f", 4, 1.5)
    assert b.last_failure_unix == 1_700_000_000.5
    assert c.refused_reason == "cluster ID 1 is the local cluster's" and not c.ready


async def test_lists(world: World) -> None:
    nodes = (await world.stub.ListNodes(agent_pb2.ListRequest())).nodes
    assert [(n.cluster, n.name) for n in nodes] == [("cluster-b", "node-1"), ("cluster-c", "node-9")]
    node = nodes[0]
    assert [(a.type, a.ip) for a in node.addresses] == [("InternalIP", "172.18.0.2"), ("CiliumInternalIP", "10.2.0.10")]
    assert (node.ipv4_alloc_cidr, node.ipv6_alloc_cidr, node.ipv4_health_ip) == ("10.2.0.0/24", "fd00:2::/96",
                                                                                  "10.2.0.134")
    assert (node.cluster_id, dict(node.labels), node.wireguard_pub_key, node.encryption_key) == (
        2, {"kubernetes.io/hostname": "node-1"}, "key=", 3)
    only_c = (await world.stub.ListNodes(agent_pb2.ListRequest(cluster="cluster-c"))).nodes
    assert [n.name for n in only_c] == ["node-9"]

    identities = (await world.stub.ListIdentities(agent_pb2.ListRequest())).identities
    assert [(i.id, i.cluster) for i in identities] == [(131_073, "cluster-b"), (196_609, "cluster-c")]
    assert identities[0].labels == IDENTITY.labels

    entries = (await world.stub.ListIPCache(agent_pb2.ListRequest(cluster="cluster-b"))).entries
    assert [(e.prefix, e.identity) for e in entries] == [("10.2.0.7", 131_073), ("10.2.1.0/24", 2)]
    assert (entries[0].host_ip, entries[0].encrypt_key, entries[0].namespace, entries[0].pod_name) == (
        "172.18.0.2", 1, NS, "web-1")

    (service,) = (await world.stub.ListServices(agent_pb2.ListRequest())).services
    assert (service.cluster, service.namespace, service.name, service.cluster_id) == ("cluster-b", NS, NAME, 2)
    assert list(service.frontends) == ["10.96.0.20"] and service.shared and service.include_external
    assert [(b.ip, b.port, b.protocol, b.port_name, b.local) for b in service.backends] == [
        ("20.0.0.2", 9090, "TCP", "http", False)]
    assert not (await world.stub.ListServices(agent_pb2.ListRequest(cluster="nope"))).services


async def test_resolve_service(world: World) -> None:
    world.source.upsert(objects.global_service("local"))
    world.source.upsert(objects.endpoint_slice("s1", [("10.1.0.1", objects.READY)]))
    await world.source.settled()
    response = await world.stub.ResolveService(agent_pb2.ResolveServiceRequest(namespace=NS, name=NAME))
    assert response.found and getattr(response, "global") and response.affinity == "local"
    assert list(response.frontends) == ["10.96.0.10"]
    assert [(b.ip, b.port, b.cluster, b.cluster_id, b.local) for b in response.backends] == [
        ("10.1.0.1", 8080, "cluster-a", 1, True)]
    assert [(b.ip, b.local) for b in response.all_backends] == [("10.1.0.1", True), ("20.0.0.2", False)]

    world.source.delete(objects.endpoint_slice("s1", []))
    await world.source.settled()
    response = await world.stub.ResolveService(agent_pb2.ResolveServiceRequest(namespace=NS, name=NAME))
    assert [(b.ip, b.cluster) for b in response.backends] == [("20.0.0.2", "cluster-b")]

    missing = await world.stub.ResolveService(agent_pb2.ResolveServiceRequest(namespace=NS, name="nope"))
    assert (missing.found, missing.namespace, missing.name) == (False, NS, "nope")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.stub.ResolveService(agent_pb2.ResolveServiceRequest(namespace=NS))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_lookup_ip(world: World) -> None:
    found = await world.stub.LookupIP(agent_pb2.LookupIPRequest(ip="10.2.0.7"))
    assert found.found and found.entry.cluster == "cluster-b" and found.entry.pod_name == "web-1"
    assert (found.identity.id, found.identity.cluster, found.identity.labels) == (131_073, "cluster-b",
                                                                                  IDENTITY.labels)
    assert (await world.stub.LookupIP(agent_pb2.LookupIPRequest(ip="10.2.0.7/32"))).found
    cidr = await world.stub.LookupIP(agent_pb2.LookupIPRequest(ip="10.2.1.9/24"))
    assert cidr.found and cidr.identity.labels == "reserved:world;"
    assert not (await world.stub.LookupIP(agent_pb2.LookupIPRequest(ip="10.9.9.9"))).found
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.stub.LookupIP(agent_pb2.LookupIPRequest(ip="not-an-ip"))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def next_event(stream: grpc.aio.UnaryStreamCall) -> agent_pb2.WatchEvent:
    async with asyncio.timeout(5):
        event: agent_pb2.WatchEvent = await stream.read()
    assert event is not grpc.aio.EOF
    return event


async def test_watch_snapshot_then_changes(world: World) -> None:
    stream = world.stub.Watch(agent_pb2.WatchRequest())
    snapshot = []
    while (event := await next_event(stream)).type != agent_pb2.WatchEvent.SYNCED:
        snapshot.append((event.type, event.kind, event.cluster, event.key))
    assert sorted(snapshot) == sorted([
        (agent_pb2.WatchEvent.UPSERT, "nodes", "cluster-b", "node-1"),
        (agent_pb2.WatchEvent.UPSERT, "nodes", "cluster-c", "node-9"),
        (agent_pb2.WatchEvent.UPSERT, "identities", "cluster-b", "131073"),
        (agent_pb2.WatchEvent.UPSERT, "identities", "cluster-c", "196609"),
        (agent_pb2.WatchEvent.UPSERT, "ipcache", "cluster-b", "10.2.0.7"),
        (agent_pb2.WatchEvent.UPSERT, "ipcache", "cluster-b", "10.2.1.0/24"),
        (agent_pb2.WatchEvent.UPSERT, "services", "cluster-b", f"{NS}/{NAME}"),
    ])
    assert world.service.watchers == 1

    world.cache.upsert(Kind.IPCACHE, "cluster-b", "10.2.0.8", mesh_cache.IPCacheEntry(prefix="10.2.0.8", id=131_073))
    world.cache.delete(Kind.NODES, "cluster-c", "node-9")
    world.cache.upsert(Kind.SERVICE_EXPORTS, "cluster-b", f"{NS}/{NAME}", records.ServiceExport(
        cluster="cluster-b", namespace=NS, name=NAME))  # not a kind the API streams
    world.cache.upsert(Kind.NODES, "cluster-b", "node-1", NODE)
    upsert = await next_event(stream)
    assert (upsert.type, upsert.kind, upsert.key, upsert.ipcache.prefix) == (
        agent_pb2.WatchEvent.UPSERT, "ipcache", "10.2.0.8", "10.2.0.8")
    assert upsert.timestamp_unix > 0
    delete = await next_event(stream)
    assert (delete.type, delete.kind, delete.cluster, delete.key) == (
        agent_pb2.WatchEvent.DELETE, "nodes", "cluster-c", "node-9")
    assert not delete.HasField("node")
    again = await next_event(stream)
    assert again.node.name == "node-1" and again.node.ipv4_alloc_cidr == "10.2.0.0/24"
    stream.cancel()
    await helpers.eventually(lambda: world.service.watchers == 0, timeout=5)


async def test_watch_kinds_and_skip_initial(world: World) -> None:
    stream = world.stub.Watch(agent_pb2.WatchRequest(kinds=["services"]))
    first = await next_event(stream)
    assert (first.kind, first.service.name) == ("services", NAME)
    assert (await next_event(stream)).type == agent_pb2.WatchEvent.SYNCED
    world.cache.upsert(Kind.NODES, "cluster-b", "node-2", records.Node(name="node-2", cluster="cluster-b"))
    world.cache.delete(Kind.SERVICES, "cluster-b", f"{NS}/{NAME}")
    gone = await next_event(stream)
    assert (gone.type, gone.kind) == (agent_pb2.WatchEvent.DELETE, "services"), "nodes are filtered out"
    stream.cancel()

    live = world.stub.Watch(agent_pb2.WatchRequest(kinds=["identities", "nodes"], skip_initial=True))
    assert (await next_event(live)).type == agent_pb2.WatchEvent.SYNCED, "SYNCED first: the stream is live"
    world.cache.upsert(Kind.IDENTITIES, "cluster-b", "131074", records.Identity(131_074, "k8s:app=x;"))
    event = await next_event(live)
    assert (event.kind, event.identity.id) == ("identities", 131_074)
    live.cancel()


async def test_watch_rejects_unknown_kinds(world: World) -> None:
    stream = world.stub.Watch(agent_pb2.WatchRequest(kinds=["nodes", "pods"]))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream.read()
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "pods" in (raised.value.details() or "")


async def test_watch_back_pressure_cuts_off_a_consumer_that_falls_behind(world: World) -> None:
    stream = world.stub.Watch(agent_pb2.WatchRequest(kinds=["ipcache"], skip_initial=True))
    assert (await next_event(stream)).type == agent_pb2.WatchEvent.SYNCED
    # 60 changes without yielding to the loop: the stream cannot drain any of them, so its 50-change queue
    # overflows; the cache itself is never slowed.
    for i in range(60):
        ip = f"10.3.0.{i}"
        world.cache.upsert(Kind.IPCACHE, "cluster-b", ip, mesh_cache.IPCacheEntry(prefix=ip, id=2))
    assert world.cache.count("cluster-b", Kind.IPCACHE) == 62
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(5):
            while True:
                await stream.read()
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "re-watch" in (raised.value.details() or "")
    await helpers.eventually(lambda: world.service.watchers == 0, timeout=5)

    again = world.stub.Watch(agent_pb2.WatchRequest(kinds=["ipcache"]))
    events = 0
    while (await next_event(again)).type != agent_pb2.WatchEvent.SYNCED:
        events += 1
    assert events == 62, "a new Watch resyncs with a full snapshot"
    again.cancel()


async def next_batch(stream: grpc.aio.UnaryStreamCall) -> list[agent_pb2.WatchEvent]:
    async with asyncio.timeout(5):
        batch: agent_pb2.WatchEventBatch = await stream.read()
    assert batch is not grpc.aio.EOF and batch.events, "a batch is never empty"
    return list(batch.events)


async def test_watch_batched_sends_watch_events_grouped(world: World) -> None:
    plain = world.stub.Watch(agent_pb2.WatchRequest())
    batched = world.stub.WatchBatched(agent_pb2.WatchRequest(max_batch=3))
    expected = []
    while (event := await next_event(plain)).type != agent_pb2.WatchEvent.SYNCED:
        expected.append(event)
    expected.append(event)
    got: list[agent_pb2.WatchEvent] = []
    sizes = []
    while len(got) < len(expected):
        batch = await next_batch(batched)
        sizes.append(len(batch))
        got.extend(batch)
    assert [(e.type, e.kind, e.cluster, e.key) for e in got] == [(e.type, e.kind, e.cluster, e.key) for e in expected]
    for event in (*got, *expected):
        event.ClearField("timestamp_unix")  # each stream stamps its own snapshot
    assert got == expected, "the same event messages"
    assert sizes == [3, 3, 2], "the snapshot cut at max_batch, SYNCED at its end"

    # Changes made while the stream cannot send arrive together, in order; deletes carry no object.
    for i in range(5):
        ip = f"10.4.0.{i}"
        world.cache.upsert(Kind.IPCACHE, "cluster-b", ip, mesh_cache.IPCacheEntry(prefix=ip, id=2))
    world.cache.delete(Kind.IPCACHE, "cluster-b", "10.4.0.0")
    live = [event for _ in range(2) for event in await next_batch(batched)]
    assert [(e.type, e.key) for e in live] == [
        *((agent_pb2.WatchEvent.UPSERT, f"10.4.0.{i}") for i in range(5)), (agent_pb2.WatchEvent.DELETE, "10.4.0.0"),
    ]
    assert live[0].ipcache.prefix == "10.4.0.0" and not live[5].HasField("ipcache")
    plain.cancel()
    batched.cancel()
    await helpers.eventually(lambda: world.service.watchers == 0, timeout=5)


async def test_watch_batched_back_pressure_and_invalid_kinds(world: World) -> None:
    stream = world.stub.WatchBatched(agent_pb2.WatchRequest(kinds=["ipcache"], skip_initial=True))
    assert [e.type for e in await next_batch(stream)] == [agent_pb2.WatchEvent.SYNCED]
    for i in range(60):
        ip = f"10.3.0.{i}"
        world.cache.upsert(Kind.IPCACHE, "cluster-b", ip, mesh_cache.IPCacheEntry(prefix=ip, id=2))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async with asyncio.timeout(5):
            while True:
                await stream.read()
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED

    invalid = world.stub.WatchBatched(agent_pb2.WatchRequest(kinds=["pods"]))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await invalid.read()
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_batches_are_bounded_in_bytes() -> None:
    backends = {f"10.5.{i // 256}.{i % 256}": {"http": records.L4Addr("TCP", 80)} for i in range(10_000)}
    big = records.ClusterService(cluster="cluster-b", namespace=NS, name=NAME, cluster_id=2, backends=backends)
    pending = [grpc_server._Pending(agent_pb2.WatchEvent.UPSERT, mesh_cache.Change(Kind.SERVICES, "cluster-b",
                                                                                   f"{NS}/{NAME}", big), 1.0)] * 5
    batches = list(grpc_server._batches(pending, 1024))
    event_bytes = batches[0].events[0].ByteSize()
    per_batch = -(-grpc_server.MAX_BATCH_BYTES // event_bytes)  # closed by the event that reaches the bound
    assert [len(batch.events) for batch in batches] == [per_batch] * (5 // per_batch) + [5 % per_batch] * (
        5 % per_batch > 0)


async def test_health_and_reflection(world: World) -> None:
    health = health_pb2_grpc.HealthStub(world.channel)
    overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await health.Check(health_pb2.HealthCheckRequest(service=grpc_server.AGENT_SERVICE))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND, "not ready until the agent says so"
    await world.server.set_ready(True)
    ready = await health.Check(health_pb2.HealthCheckRequest(service=grpc_server.AGENT_SERVICE))
    assert ready.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(world.channel)
    call = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    response = await call.read()
    names = {service.name for service in response.list_services_response.service}
    assert {"clustermesh.v1.Agent", "grpc.health.v1.Health"} <= names
    call.cancel()


async def test_misuse(world: World) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        await world.server.run()
    with pytest.raises(ValueError, match="TLS"):
        grpc_server.GrpcServer(world.service, config.ListenAddress(tcp=config.HostPort("127.0.0.1", 0)))
    with pytest.raises(ValueError, match="max_pending"):
        grpc_server.AgentService(world.cache, services.ServiceResolver(world.cache, None, local_cluster="a",
                                                                       local_cluster_id=1),
                                 world.statuses, agent=grpc_server.AgentIdentity("a", 1, "n"), max_pending=0)


async def test_tcp_requires_client_certificates(certs_dir: certs.ClusterCerts) -> None:
    cache = mesh_cache.MeshCache()
    fill(cache)
    resolver = services.ServiceResolver(cache, None, local_cluster="cluster-a", local_cluster_id=1)
    service = grpc_server.AgentService(cache, resolver, Statuses(),
                                       agent=grpc_server.AgentIdentity("cluster-a", 1, "n"))
    server = grpc_server.GrpcServer(service, config.ListenAddress(tcp=config.HostPort("127.0.0.1", 0)),
                                    tls_files=certs_dir.server)
    async with objects.running(server):
        assert server.address.startswith("127.0.0.1:") and not server.address.endswith(":0")
        client = tls.channel_credentials(tls.load(certs_dir.admin))
        async with grpc.aio.secure_channel(server.address, client) as channel:
            response = await agent_pb2_grpc.AgentStub(channel).ResolveService(
                agent_pb2.ResolveServiceRequest(namespace=NS, name=NAME))
            assert [b.ip for b in response.backends] == ["20.0.0.2"], "peers-only mode without a local source"

        anonymous = grpc.ssl_channel_credentials(root_certificates=certs_dir.server.ca.read_bytes())
        async with grpc.aio.secure_channel(server.address, anonymous) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await agent_pb2_grpc.AgentStub(channel).GetStatus(agent_pb2.GetStatusRequest(), timeout=5)
            assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
