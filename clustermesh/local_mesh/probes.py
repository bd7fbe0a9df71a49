"""Readiness probes for the daemons of a local mesh, as Kubernetes would run them: gRPC health and HTTP GET.

Each probe is one attempt that answers True or False and never raises for a daemon that is not up yet
(refused connection, timeout, NOT_SERVING, a non-2xx status); clustermesh.local_mesh.daemon polls it.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clustermesh.local_mesh import daemon

_TIMEOUT = 1.0


def grpc_health(address: str, service: str = "", *, timeout: float = _TIMEOUT) -> daemon.Probe:
    """A probe that asks gRPC health at address (`unix:PATH` or `HOST:PORT`, plaintext) whether `service` serves."""

    async def probe() -> bool:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
            except grpc.aio.AioRpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


def http_ok(host_port: str, path: str, *, timeout: float = _TIMEOUT) -> daemon.Probe:
    """A probe that GETs http://host_port/path and is true for a 2xx answer."""
    host, _, port = host_port.rpartition(":")

    async def probe() -> bool:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
                try:
                    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host_port}\r\n\r\n".encode())
                    await writer.drain()
                    status_line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        parts = status_line.split()
        return len(parts) >= 2 and parts[1].startswith(b"2")

    return probe
