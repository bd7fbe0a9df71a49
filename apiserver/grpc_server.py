"""The apiserver's gRPC endpoint: the `clustermesh.v1.Apiserver` service, gRPC health and reflection.

Answers from the publisher's in-memory state, except GetSyncStatus's etcd_status (one Status call). Health
reports NOT_SERVING until the initial sync is complete, then SERVING (for the empty service name and for
`clustermesh.v1.Apiserver`), so Kubernetes gRPC probes and `grpcurl` work. Plain TCP without TLS: it serves
status, not data.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from apiserver import publisher as publisher_module
from clustermesh import errors
from clustermesh.api.v1 import apiserver_pb2 as pb
from clustermesh.api.v1 import apiserver_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Apiserver"].full_name
_STOP_GRACE = 1.0
ETCD_STATUS_TIMEOUT = 1.0


def _version() -> str:
    try:
        return importlib.metadata.version("clustermesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ApiserverService(pb_grpc.ApiserverServicer):
    """The Apiserver service over one publisher."""

    def __init__(self, publisher: publisher_module.Publisher, *, etcd_endpoints: Sequence[str]) -> None:
        self.publisher = publisher
        self.etcd_endpoints = list(etcd_endpoints)
        self.version = _version()

    async def GetClusterInfo(
        self, request: pb.GetClusterInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClusterInfo:
        options = self.publisher.options
        return pb.ClusterInfo(
            cluster_name=options.cluster,
            cluster_id=options.cluster_id,
            max_connected_clusters=options.max_clusters,
            etcd_endpoints=self.etcd_endpoints,
            pod_cidrs=self.publisher.pod_cidrs(),
            version=self.version,
        )

    async def GetSyncStatus(
        self, request: pb.GetSyncStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApiserverSyncStatus:
        return pb.ApiserverSyncStatus(
            etcd_status=await self._etcd_status(),
            ready=self.publisher.ready.is_set(),
            kinds=[
                pb.KindSyncStatus(
                    kind=status.name,
                    synced=status.synced,
                    keys=status.keys,
                    pending=status.pending,
                    puts=status.puts,
                    deletes=status.deletes,
                    failures=status.failures,
                    last_error=status.last_error,
                )
                for status in self.publisher.kind_status()
            ],
            bootstrap_seconds=self.publisher.bootstrap_seconds,
            invalid_objects=self.publisher.invalid_objects,
            source_synced=self.publisher.source_synced,
        )


    async def _etcd_status(self) -> str:
        # The one answer that asks etcd: an operator reading sync status wants to know if etcd answers now.
        try:
            status = await self.publisher.client.status(timeout=ETCD_STATUS_TIMEOUT)
        except errors.StoreError as exc:
            return f"unreachable: {exc}"
        return f"connected: etcd {status.version}, cluster id {status.cluster_id:x}, revision {status.revision}"


class GrpcServer:
    """Serves ApiserverService, health and reflection on `address` (host:port; port 0 picks one)."""

    def __init__(
        self, address: str, publisher: publisher_module.Publisher, *, etcd_endpoints: Sequence[str]
    ) -> None:
        self.address = address
        self.publisher = publisher
        self.etcd_endpoints = etcd_endpoints
        self.port = 0
        """The bound port, once run() has started serving."""

    def __repr__(self) -> str:
        return f"<GrpcServer {self.address} port={self.port}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled; sets ready once listening. RuntimeError if the address cannot be bound."""
        server = grpc.aio.server()
        pb_grpc.add_ApiserverServicer_to_server(
            ApiserverService(self.publisher, etcd_endpoints=self.etcd_endpoints), server
        )
        health_service = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        for name in ("", SERVICE_NAME):
            await health_service.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = server.add_insecure_port(self.address)
        await server.start()
        try:
            log.info("event=grpc.listening address=%s port=%d", self.address, self.port)
            if ready is not None:
                ready.set()
            await self.publisher.ready.wait()
            for name in ("", SERVICE_NAME):
                await health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
            await server.wait_for_termination()
        finally:
            # Shielded, and awaited even if cancelled again: the server must be down when run() returns.
            stopping = asyncio.ensure_future(server.stop(_STOP_GRACE))
            try:
                await asyncio.shield(stopping)
            except asyncio.CancelledError:
                await stopping
                raise
