"""The agent's gRPC API (proto/clustermesh/v1/agent.proto): status, the caches, service resolution and Watch.

Owns: answering the `Agent` service from in-memory state only (MeshCache, ServiceResolver, the peers'
statuses); converting records into API messages; the listener (a unix socket, or TCP with mutual TLS), gRPC
health and reflection. Never touches etcd: a slow or dead peer cannot slow an answer.

Health: the overall service ("") is SERVING as soon as the server listens (liveness); `clustermesh.v1.Agent`
turns SERVING when the composition root calls `set_ready(True)` after the initial sync (readiness).

Watch back-pressure: every stream has its own queue, filled synchronously by the cache listener (the cache is
never blocked or slowed by a consumer). Changes are not coalesced: each one is delivered, in cache order.
A stream whose queue holds more than `max_pending` undelivered changes is cut off with RESOURCE_EXHAUSTED
("re-watch to resync"); its queue is dropped at once, so a stuck consumer costs at most `max_pending` changes
of memory. A client that gets RESOURCE_EXHAUSTED opens a new Watch and receives a fresh snapshot.

WatchBatched sends the same events in the same order, as many per message as are pending when the stream is
ready to send (at most the request's max_batch, and about MAX_BATCH_BYTES). gRPC costs each end tens of
microseconds per message whatever its size, so one message per change caps a Watch stream at a few thousand
changes per second (measured: bench/propagation.py); batched, a stream keeps up with far more, and batches
grow only when the consumer is behind, so at low rates latency is unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import logging
import pathlib
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import NamedTuple, NoReturn, Protocol, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import clustermesh
from agent import cache as mesh_cache
from agent import config, peer_status, services
from clustermesh import identity, records, tls
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

_R = TypeVar("_R")
_M = TypeVar("_M")

Kind = mesh_cache.Kind

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
DEFAULT_MAX_PENDING = 65_536
"""Undelivered changes a Watch stream may hold before it is cut off (see the module docstring)."""
DEFAULT_MAX_BATCH = 1024
"""Events per WatchBatched message when the request does not say (and the most it may ask for)."""
MAX_BATCH_BYTES = 1 << 20
"""A WatchBatched message is closed once it holds this many bytes (a client's default limit is 4 MiB)."""

WATCH_KINDS: dict[str, Kind] = {
    "nodes": Kind.NODES,
    "identities": Kind.IDENTITIES,
    "ipcache": Kind.IPCACHE,
    "services": Kind.SERVICES,
}
"""The kind names of the API (WatchRequest.kinds, WatchEvent.kind) and the cache kinds they stand for."""
_KIND_NAMES = {kind: name for name, kind in WATCH_KINDS.items()}

_UPSERT = agent_pb2.WatchEvent.UPSERT
_DELETE = agent_pb2.WatchEvent.DELETE
_SYNCED = agent_pb2.WatchEvent.SYNCED

_PEER_FIELDS = tuple(
    field.name for field in agent_pb2.PeerStatus.DESCRIPTOR.fields if field.name != "synced"
)


class StatusSource(Protocol):
    """What reports the peers' connection state (agent.mesh.Mesh)."""

    def statuses(self) -> list[peer_status.PeerStatus]:
        """One status per configured peer, at this moment."""
        ...


@dataclasses.dataclass(frozen=True)
class AgentIdentity:
    """Who this agent is, as GetStatus reports it."""

    cluster_name: str
    cluster_id: int
    node_name: str


# ----------------------------------------------------------------------------------------------------
# Records -> API messages


def node_message(cluster: str, node: records.Node) -> agent_pb2.Node:
    """The API form of a peer's node."""
    return agent_pb2.Node(
        cluster=cluster,
        name=node.name,
        cluster_id=node.cluster_id,
        addresses=[agent_pb2.NodeAddress(type=a.type, ip=a.ip) for a in node.ip_addresses or ()],
        ipv4_alloc_cidr=_cidr_text(node.ipv4_alloc_cidr),
        ipv6_alloc_cidr=_cidr_text(node.ipv6_alloc_cidr),
        ipv4_health_ip=node.ipv4_health_ip,
        ipv6_health_ip=node.ipv6_health_ip,
        labels=node.labels or {},
        wireguard_pub_key=node.wireguard_pub_key,
        encryption_key=node.encryption_key,
    )


def _cidr_text(cidr: records.CIDR | None) -> str:
    if cidr is None:
        return ""
    try:
        return str(cidr.network())
    except ValueError:
        return cidr.ip


def identity_message(cluster: str, record: records.Identity) -> agent_pb2.Identity:
    """The API form of a peer's identity."""
    return agent_pb2.Identity(id=record.id, cluster=cluster, labels=record.labels)


def ipcache_message(cluster: str, entry: mesh_cache.IPCacheEntry) -> agent_pb2.IPCacheEntry:
    """The API form of a peer's ipcache entry."""
    return agent_pb2.IPCacheEntry(
        prefix=entry.prefix,
        identity=entry.id,
        host_ip=entry.host_ip,
        cluster=cluster,
        encrypt_key=entry.key,
        namespace=entry.k8s_namespace,
        pod_name=entry.k8s_pod_name,
    )


def service_message(cluster: str, service: records.ClusterService) -> agent_pb2.Service:
    """The API form of a peer's ClusterService; frontends are its IPs, one backend per IP and port name."""
    return agent_pb2.Service(
        cluster=cluster,
        namespace=service.namespace,
        name=service.name,
        cluster_id=service.cluster_id,
        frontends=sorted(service.frontends or ()),
        backends=[
            agent_pb2.Backend(ip=ip, port=l4.port, protocol=l4.protocol, port_name=port_name, cluster=cluster,
                              cluster_id=service.cluster_id)
            for ip, ports in (service.backends or {}).items()
            for port_name, l4 in ports.items()
        ],
        include_external=service.include_external,
        shared=service.shared,
    )


def backend_message(backend: services.Backend) -> agent_pb2.Backend:
    """The API form of a resolved backend; `local` says it is in the agent's own cluster."""
    return agent_pb2.Backend(
        ip=backend.ip, port=backend.port, protocol=backend.protocol, port_name=backend.port_name,
        cluster=backend.cluster, cluster_id=backend.cluster_id, local=backend.local,
    )


def peer_message(status: peer_status.PeerStatus) -> agent_pb2.PeerStatus:
    """The API form of a peer's status: a field-by-field copy (the dataclass mirrors the message)."""
    message = agent_pb2.PeerStatus(**{name: getattr(status, name) for name in _PEER_FIELDS})
    message.synced.CopyFrom(agent_pb2.SyncStatus(**dataclasses.asdict(status.synced)))
    return message


class _Pending(NamedTuple):
    """An event to send: its type, the change (None for SYNCED) and when it happened (Unix time)."""

    type: agent_pb2.WatchEvent.Type
    change: mesh_cache.Change | None
    timestamp: float


def _event(pending: _Pending) -> agent_pb2.WatchEvent:
    event = agent_pb2.WatchEvent()
    _fill_event(event, pending)
    return event


def _fill_event(event: agent_pb2.WatchEvent, pending: _Pending) -> None:
    event.type = pending.type
    event.timestamp_unix = pending.timestamp
    change = pending.change
    if change is None:
        return
    event.kind = _KIND_NAMES[change.kind]
    event.cluster = change.cluster
    event.key = change.name
    record = change.record
    if isinstance(record, records.Node):
        event.node.CopyFrom(node_message(change.cluster, record))
    elif isinstance(record, records.Identity):
        event.identity.CopyFrom(identity_message(change.cluster, record))
    elif isinstance(record, mesh_cache.IPCacheEntry):
        event.ipcache.CopyFrom(ipcache_message(change.cluster, record))
    elif isinstance(record, records.ClusterService):
        event.service.CopyFrom(service_message(change.cluster, record))


def _batches(pending: Iterable[_Pending], max_batch: int) -> Iterator[agent_pb2.WatchEventBatch]:
    """pending as WatchEventBatch messages of at most max_batch events and about MAX_BATCH_BYTES each."""
    batch = agent_pb2.WatchEventBatch()
    size = 0
    for item in pending:
        event = batch.events.add()
        _fill_event(event, item)
        size += event.ByteSize()
        if len(batch.events) >= max_batch or size >= MAX_BATCH_BYTES:
            yield batch
            batch = agent_pb2.WatchEventBatch()
            size = 0
    if batch.events:
        yield batch


# ----------------------------------------------------------------------------------------------------
# Watch subscriptions


class _FellBehind(Exception):
    """A Watch stream's queue exceeded its bound."""


class _Subscription:
    """The undelivered changes of one Watch stream (policy in the module docstring).

    `offer` runs inside the cache's notification and only appends; `take` runs in the stream's handler.
    """

    def __init__(self, kinds: frozenset[Kind], max_pending: int) -> None:
        self._kinds = kinds
        self._max_pending = max_pending
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self.overflowed = False

    def offer(self, change: mesh_cache.Change) -> None:
        if change.kind not in self._kinds or self.overflowed:
            return
        if len(self._pending) >= self._max_pending:
            self.overflowed = True
            self._pending.clear()
        else:
            self._pending.append(_Pending(_DELETE if change.record is None else _UPSERT, change, time.time()))
        self._wakeup.set()

    async def take(self) -> list[_Pending]:
        """Every pending change (at least one), oldest first; raises _FellBehind after an overflow."""
        while not self._pending and not self.overflowed:
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.overflowed:
            raise _FellBehind
        batch = list(self._pending)
        self._pending.clear()
        return batch


# ----------------------------------------------------------------------------------------------------
# The Agent service


class AgentService(agent_pb2_grpc.AgentServicer):
    """Answers every Agent RPC from the cache, the resolver and the status source; never blocks on I/O."""

    def __init__(
        self,
        cache: mesh_cache.MeshCache,
        resolver: services.ServiceResolver,
        status: StatusSource,
        *,
        agent: AgentIdentity,
        max_pending: int = DEFAULT_MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be positive, got {max_pending}")
        self._cache = cache
        self._resolver = resolver
        self._status = status
        self._agent = agent
        self._max_pending = max_pending
        self._clock = clock
        self._started = clock()
        self.watchers = 0
        """Open Watch streams."""

    def __repr__(self) -> str:
        return f"<AgentService {self._agent.cluster_name}/{self._agent.node_name} watchers={self.watchers}>"

    async def GetStatus(
        self, request: agent_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.AgentStatus:
        return agent_pb2.AgentStatus(
            cluster_name=self._agent.cluster_name,
            cluster_id=self._agent.cluster_id,
            node_name=self._agent.node_name,
            peers=[peer_message(s) for s in sorted(self._status.statuses(), key=lambda s: s.name)],
            num_global_services=self._resolver.global_service_count(),
            uptime_seconds=self._clock() - self._started,
            version=clustermesh.__version__,
        )

    async def ListNodes(
        self, request: agent_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListNodesResponse:
        return agent_pb2.ListNodesResponse(
            nodes=self._messages(Kind.NODES, request.cluster, records.Node, node_message)
        )

    async def ListIdentities(
        self, request: agent_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListIdentitiesResponse:
        found = self._messages(Kind.IDENTITIES, request.cluster, records.Identity, identity_message)
        found.sort(key=lambda message: message.id)
        return agent_pb2.ListIdentitiesResponse(identities=found)

    async def ListIPCache(
        self, request: agent_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListIPCacheResponse:
        return agent_pb2.ListIPCacheResponse(
            entries=self._messages(Kind.IPCACHE, request.cluster, mesh_cache.IPCacheEntry, ipcache_message)
        )

    async def ListServices(
        self, request: agent_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ListServicesResponse:
        return agent_pb2.ListServicesResponse(
            services=self._messages(Kind.SERVICES, request.cluster, records.ClusterService, service_message)
        )

    def _items(self, kind: Kind, cluster: str) -> list[tuple[str, str, mesh_cache.Record]]:
        return sorted(self._cache.items(kind, cluster or None), key=lambda item: (item[0], item[1]))

    def _messages(
        self, kind: Kind, cluster: str, record_type: type[_R], to_message: Callable[[str, _R], _M]
    ) -> list[_M]:
        """The cached records of kind (of one cluster, or all if empty) as messages, sorted by cluster and name."""
        return [to_message(owner, record) for owner, _, record in self._items(kind, cluster)
                if isinstance(record, record_type)]

    async def ResolveService(
        self, request: agent_pb2.ResolveServiceRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ResolveServiceResponse:
        if not request.namespace or not request.name:
            await _reject(context, "namespace and name are required")
        resolution = self._resolver.resolve(request.namespace, request.name)
        if resolution is None:
            return agent_pb2.ResolveServiceResponse(found=False, namespace=request.namespace, name=request.name)
        return agent_pb2.ResolveServiceResponse(
            found=True,
            namespace=resolution.namespace,
            name=resolution.name,
            affinity=resolution.affinity.value,
            backends=[backend_message(b) for b in resolution.backends],
            all_backends=[backend_message(b) for b in resolution.all_backends],
            frontends=resolution.frontends,
            **{"global": resolution.global_},
        )

    async def LookupIP(
        self, request: agent_pb2.LookupIPRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.LookupIPResponse:
        prefix = _canonical_prefix(request.ip)
        if prefix is None:
            await _reject(context, f"not an IP or prefix: {request.ip[:64]!r}")
        found = self._cache.lookup_ip(prefix)
        if found is None:
            return agent_pb2.LookupIPResponse(found=False)
        cluster, entry = found
        return agent_pb2.LookupIPResponse(
            found=True, entry=ipcache_message(cluster, entry), identity=self._identity(entry.id)
        )

    def _identity(self, numeric_id: int) -> agent_pb2.Identity:
        found = self._cache.lookup_identity(numeric_id)
        if found is not None:
            return identity_message(*found)
        name = identity.RESERVED.get(numeric_id)
        return agent_pb2.Identity(id=numeric_id, labels=f"reserved:{name};" if name else "")

    async def Watch(
        self, request: agent_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.WatchEvent]:
        async for pending in self._watch(request, context):
            for item in pending:
                yield _event(item)

    async def WatchBatched(
        self, request: agent_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.WatchEventBatch]:
        max_batch = min(request.max_batch or DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH)
        async for pending in self._watch(request, context):
            for batch in _batches(pending, max_batch):
                yield batch

    async def _watch(
        self, request: agent_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Iterable[_Pending]]:
        """The events of a Watch, in runs: the snapshot and SYNCED, then whatever is pending at each wakeup."""
        unknown = [name for name in request.kinds if name not in WATCH_KINDS]
        if unknown:
            await _reject(context, f"unknown kinds {unknown}; expected some of {list(WATCH_KINDS)}")
        kinds = frozenset(WATCH_KINDS[name] for name in request.kinds) or frozenset(WATCH_KINDS.values())
        subscription = _Subscription(kinds, self._max_pending)
        # Subscribing and copying the snapshot happen without an await in between, so every change is either
        # in the snapshot or in the queue, never both and never neither.
        unsubscribe = self._cache.subscribe(subscription.offer)
        self.watchers += 1
        try:
            yield _initial([] if request.skip_initial else self._snapshot(kinds))
            while True:
                try:
                    yield await subscription.take()
                except _FellBehind:
                    log.warning("event=watch.overflow peer=%s max_pending=%d", context.peer(), self._max_pending)
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"fell behind by more than {self._max_pending} changes; re-watch to resync",
                    )
        finally:
            self.watchers -= 1
            unsubscribe()

    def _snapshot(self, kinds: Iterable[Kind]) -> list[mesh_cache.Change]:
        return [
            mesh_cache.Change(kind, cluster, name, record)
            for kind in sorted(kinds, key=lambda k: k.value)
            for cluster, name, record in self._cache.items(kind)
        ]


def _initial(snapshot: list[mesh_cache.Change]) -> Iterator[_Pending]:
    """The snapshot as upserts, then SYNCED stamped when it is reached."""
    stamp = time.time()
    for change in snapshot:
        yield _Pending(_UPSERT, change, stamp)
    yield _Pending(_SYNCED, None, time.time())


async def _reject(context: grpc.aio.ServicerContext, message: str) -> NoReturn:
    """End the call with INVALID_ARGUMENT."""
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
    # context.abort always raises; grpc is untyped, so say so for the type checker.
    raise AssertionError("context.abort returned")


def _canonical_prefix(text: str) -> str | None:
    """The ipcache key name of an IP or prefix text (host prefixes become plain IPs); None if invalid."""
    try:
        if "/" not in text:
            return str(ipaddress.ip_address(text))
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


# ----------------------------------------------------------------------------------------------------
# The server


class GrpcServer:
    """Serves an AgentService, gRPC health and reflection on one listen address while `run()` runs."""

    def __init__(
        self,
        service: AgentService,
        listen: config.ListenAddress,
        *,
        tls_files: tls.TLSFiles | None = None,
        grace: float = 1.0,
    ) -> None:
        if listen.tcp is not None and tls_files is None:
            raise ValueError("a TCP listener requires TLS files (mutual TLS)")
        self._service = service
        self._listen = listen
        self._tls_files = tls_files
        self._grace = grace
        self._health = health.aio.HealthServicer()
        self.address = str(listen)
        """Where the server listens (the bound port for TCP port 0, once `run()` set `ready`)."""
        self._running = False

    def __repr__(self) -> str:
        return f"<GrpcServer {self.address} running={self._running}>"

    async def set_ready(self, ready: bool) -> None:
        """Report the Agent service as SERVING (ready) or NOT_SERVING through gRPC health."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(AGENT_SERVICE, status)

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Listen and serve until cancelled; sets `ready` once listening.

        Raises RuntimeError if already running, OSError if the address cannot be bound, CertificateError for
        unusable TLS files. On cancellation, in-flight calls get `grace` seconds, Watch streams are ended, and
        a unix socket file is removed.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        server = grpc.aio.server()
        try:
            agent_pb2_grpc.add_AgentServicer_to_server(self._service, server)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            reflection.enable_server_reflection((AGENT_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
            await self._health.set(health.OVERALL_HEALTH, health_pb2.HealthCheckResponse.SERVING)
            self._bind(server)
            await server.start()
            log.info("event=grpc.listening address=%s", self.address)
            if ready is not None:
                ready.set()
            # Not server.wait_for_termination(): cancelling a task that awaits it cancels the server's own
            # shutdown future, and the stop() below then fails half-way.
            await asyncio.Future()
        finally:
            # Shielded: a second cancellation must not leave the server's threads and port behind.
            await asyncio.shield(self._stop(server))
            self._running = False

    def _bind(self, server: grpc.aio.Server) -> None:
        if self._listen.unix_path is not None:
            path = self._listen.unix_path
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(path)
            server.add_insecure_port(f"unix:{path}")
            return
        assert self._listen.tcp is not None and self._tls_files is not None
        port = server.add_secure_port(str(self._listen.tcp), tls.server_credentials(self._tls_files))
        if port == 0:
            raise OSError(f"cannot listen on {self._listen.tcp}")
        self.address = str(config.HostPort(self._listen.tcp.host, port))

    async def _stop(self, server: grpc.aio.Server) -> None:
        await self._health.enter_graceful_shutdown()
        await server.stop(self._grace)
        if self._listen.unix_path is not None:
            _remove_stale_socket(self._listen.unix_path)
        log.info("event=grpc.stopped address=%s", self.address)


def _remove_stale_socket(path: pathlib.Path) -> None:
    # Only a socket: a regular file at the path is a configuration mistake that binding will report.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
