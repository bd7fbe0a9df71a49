"""clustermesh.tls: loading and checking material, reloading server credentials, CertificateWatcher, SSL.

Rotation is exercised with real files from clustermesh.certs and a real grpc.aio server on loopback; etcd's
use of the material is in tests/integration/.
"""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import ssl
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clustermesh import certs, errors, tls
from tests import helpers

CLUSTER = "cluster-a"


def _mismatch_cert(target: certs.ClusterCerts, scratch: pathlib.Path, stem: str) -> None:
    """Give pair `stem` of target a certificate whose key is elsewhere, as in the middle of a rotation."""
    other = certs.init_cluster(scratch, CLUSTER)
    source = getattr(other, stem)
    shutil.copyfile(source.cert, getattr(target, stem).cert)


def test_load_verified_refuses_mismatched_pair(tmp_path: pathlib.Path) -> None:
    cluster = certs.init_cluster(tmp_path / "a", CLUSTER)
    _mismatch_cert(cluster, tmp_path / "b", "admin")
    with pytest.raises(errors.CertificateError, match="does not belong"):
        tls.load_verified(cluster.admin)


def test_load_names_missing_file(tmp_path: pathlib.Path) -> None:
    files = tls.TLSFiles(tmp_path / "ca.crt", tmp_path / "x.crt", tmp_path / "x.key")
    with pytest.raises(errors.CertificateError, match="ca file"):
        tls.load(files)
    with pytest.raises(errors.CertificateError):
        tls.ssl_context(files)


async def test_ssl_contexts_do_mutual_tls(tmp_path: pathlib.Path) -> None:
    cluster = certs.init_cluster(tmp_path, CLUSTER)
    server_context = tls.ssl_context(cluster.server, ssl.Purpose.CLIENT_AUTH)
    assert server_context.verify_mode == ssl.CERT_REQUIRED
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert")
        peers.append(dict(item[0] for item in peer["subject"])["commonName"])
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls.ssl_context(cluster.remote), server_hostname="localhost"
        )
        assert await reader.read() == b"ok"
        writer.close()
    assert peers == ["remote"]


# --- CertificateWatcher --------------------------------------------------------------------------------


@pytest.fixture
def rotating(tmp_path: pathlib.Path) -> certs.ClusterCerts:
    return certs.init_cluster(tmp_path / "certs", CLUSTER)


async def test_watcher_publishes_rotation(rotating: certs.ClusterCerts) -> None:
    seen: list[tls.TLSMaterial] = []

    async def on_change(material: tls.TLSMaterial) -> None:
        seen.append(material)

    watcher = tls.CertificateWatcher(rotating.admin, interval=0.01, on_change=on_change)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(watcher.run(ready=ready), name="watch admin certs")
        await ready.wait()
        assert watcher.version == 0
        initial = watcher.material
        certs.rotate(rotating.dir, CLUSTER)
        await helpers.eventually(lambda: watcher.version == 1, description="rotation published")
        assert seen == [watcher.material]
        assert watcher.material != initial
        assert watcher.material == tls.load(rotating.admin)
        task.cancel()


async def test_watcher_skips_half_rotated_pair(tmp_path: pathlib.Path, rotating: certs.ClusterCerts) -> None:
    # A long interval: only the explicit check() calls below poll, so each step is deterministic.
    watcher = tls.CertificateWatcher(rotating.admin, interval=3600)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(watcher.run(ready=ready), name="watch admin certs")
        await ready.wait()
        initial = watcher.material
        _mismatch_cert(rotating, tmp_path / "other", "admin")
        assert not await watcher.check()
        assert watcher.material == initial
        assert not await watcher.check()  # unchanged files are not re-read
        shutil.copyfile(tmp_path / "other" / "admin.key", rotating.admin.key)
        assert await watcher.check()
        assert watcher.version == 1
        tls.verify_pair(watcher.material)
        task.cancel()


async def test_watcher_refuses_second_run_and_bad_start(tmp_path: pathlib.Path) -> None:
    missing = tls.TLSFiles(tmp_path / "ca.crt", tmp_path / "a.crt", tmp_path / "a.key")
    with pytest.raises(errors.CertificateError):
        await tls.CertificateWatcher(missing).run()
    with pytest.raises(RuntimeError):
        _ = tls.CertificateWatcher(missing).material
    cluster = certs.init_cluster(tmp_path / "certs", CLUSTER)
    watcher = tls.CertificateWatcher(cluster.admin, interval=3600)
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(watcher.run(ready=ready), name="watch admin certs")
        await ready.wait()
        with pytest.raises(RuntimeError, match="already running"):
            await watcher.run()
        task.cancel()


# --- reloading server credentials ----------------------------------------------------------------------


@pytest.fixture
async def grpc_server(rotating: certs.ClusterCerts) -> AsyncIterator[int]:
    """A grpc.aio health server on loopback using tls.server_credentials(rotating.server); yields its port."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", tls.server_credentials(rotating.server))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def _health_check(port: int, material: tls.TLSMaterial) -> bool:
    """One call on a fresh connection (never a pooled one), so every check is a new handshake."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", tls.channel_credentials(material), options=options
    ) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
    return True


async def test_server_credentials_reload_on_change(
    tmp_path: pathlib.Path, rotating: certs.ClusterCerts, grpc_server: int
) -> None:
    old = tls.load(rotating.admin)
    assert await _health_check(grpc_server, old)
    # Half a rotation (new certificate, old key) is not served: the old pair keeps working.
    _mismatch_cert(rotating, tmp_path / "other", "server")
    assert await _health_check(grpc_server, old)
    # A whole new CA: new handshakes use it at once, without restarting the server.
    certs.init_cluster(rotating.dir, CLUSTER, force=True)
    new = tls.load(rotating.admin)
    assert await _health_check(grpc_server, new)
    assert not await _health_check(grpc_server, old)


def test_server_credentials_refuse_unusable_files(tmp_path: pathlib.Path) -> None:
    cluster = certs.init_cluster(tmp_path / "a", CLUSTER)
    _mismatch_cert(cluster, tmp_path / "b", "server")
    with pytest.raises(errors.CertificateError):
        tls.server_credentials(cluster.server)
