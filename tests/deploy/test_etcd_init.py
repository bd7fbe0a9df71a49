"""`clustermesh etcd init` as the etcd-init container runs it: a real subprocess against a real etcd (mTLS).

Covers: the users, roles and permissions of reference §4.3 with auth enabled; running it again (also after an
etcd restart over the same data, as with a PVC) changes nothing; `remote` can read its keys and write none;
it waits for an etcd that starts after it; it gives up at its deadline with exit 1 and a hint; bad flags exit 2.
The policy's key-by-key semantics are tests/integration/test_access.py.
"""

from __future__ import annotations

import asyncio
import pathlib
import subprocess
import sys
import time
from typing import NamedTuple

import pytest

from clustermesh import certs, errors, tls
from clustermesh.etcd import access, client, process

CLUSTER = "cluster-a"


def _command(endpoint: str, files: tls.TLSFiles, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clustermesh", "etcd", "init", f"--cluster-name={CLUSTER}",
            f"--etcd-endpoints={endpoint}", f"--etcd-ca={files.ca}", f"--etcd-cert={files.cert}",
            f"--etcd-key={files.key}", *extra]


async def _init(endpoint: str, files: tls.TLSFiles, *extra: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, _command(endpoint, files, *extra), capture_output=True,
                                   text=True, timeout=60)


class Snapshot(NamedTuple):
    """What init is responsible for: the users, each role's permissions, and whether auth is on."""

    users: list[str]
    roles: dict[str, list[client.Permission]]
    auth: bool


async def _snapshot(etcd: process.EtcdProcess, admin: tls.TLSFiles) -> Snapshot:
    async with await client.EtcdClient.connect(etcd.client_config(admin)) as etcd_client:
        roles = {}
        for role in access.policy(CLUSTER).roles:
            permissions = await etcd_client.role_get(role.name)
            assert permissions is not None, f"role {role.name} is missing"
            roles[role.name] = sorted(permissions)
        return Snapshot(sorted(await etcd_client.user_list()), roles, await etcd_client.auth_status())


async def test_init_is_idempotent_and_enables_auth(etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts) -> None:
    first = await _init(etcd.endpoint, certs_dir.admin)
    assert first.returncode == 0, first.stderr
    assert "3 (root, remote, local) roles added, 4 (root, admin-cluster-a, remote, local-cluster-a) users added, " \
        "8 permissions granted, auth enabled" in first.stdout
    after_first = await _snapshot(etcd, certs_dir.admin)

    second = await _init(etcd.endpoint, certs_dir.admin)
    assert second.returncode == 0, second.stderr
    assert "0 roles added, 0 users added, 0 permissions granted" in second.stdout

    await etcd.restart()
    third = await _init(etcd.endpoint, certs_dir.admin)
    assert third.returncode == 0, third.stderr

    assert await _snapshot(etcd, certs_dir.admin) == after_first
    policy = access.policy(CLUSTER)
    assert after_first == Snapshot(
        users=sorted(user.name for user in policy.users),
        roles={role.name: sorted(role.permissions) for role in policy.roles},
        auth=True,
    )


async def test_remote_is_read_only_after_init(etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts) -> None:
    result = await _init(etcd.endpoint, certs_dir.admin)
    assert result.returncode == 0, result.stderr
    state_key = b"cilium/state/nodes/v1/cluster-a/node-1"
    async with await client.EtcdClient.connect(etcd.client_config(certs_dir.admin)) as admin:
        await admin.put(state_key, b"{}")
    async with await client.EtcdClient.connect(etcd.client_config(certs_dir.remote)) as remote:
        assert (await remote.get(state_key)) is not None
        for key in (state_key, b"cilium/state/nodes/v1/cluster-a/node-2", b"cilium/.heartbeat",
                    b"cilium/cluster-config/cluster-a", b"cilium/synced/cluster-a/cilium/state/nodes/v1"):
            with pytest.raises(errors.PermissionDenied):
                await remote.put(key, b"x")
        with pytest.raises(errors.PermissionDenied):
            await remote.delete(state_key)
        with pytest.raises(errors.PermissionDenied):
            await remote.get(b"cilium/cache/nodes/v1/cluster-c/node-1")


async def test_init_waits_for_an_etcd_that_starts_later(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> None:
    port = process.free_port()
    init = await asyncio.create_subprocess_exec(
        *_command(f"https://127.0.0.1:{port}", certs_dir.admin, "--timeout=60"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert init.stdout is not None
        async with process.EtcdProcess(
            tmp_path / "etcd", name=CLUSTER, server_tls=certs_dir.server, client_port=port,
            options=etcd_options,
        ) as late_etcd:
            async with asyncio.timeout(60):
                stdout, stderr = await init.communicate()
            assert init.returncode == 0, stderr.decode()
            assert b"auth enabled" in stdout
            assert (await _snapshot(late_etcd, certs_dir.admin)).auth
    finally:
        if init.returncode is None:
            init.kill()
            await init.wait()


async def test_init_gives_up_at_its_deadline(certs_dir: certs.ClusterCerts) -> None:
    started = time.monotonic()
    result = await _init(f"https://127.0.0.1:{process.free_port()}", certs_dir.admin, "--timeout=1.5")
    assert result.returncode == 1
    assert "was not ready and initialised within 1.5s" in result.stderr
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    "changes",
    [("--cluster-name=Cluster_A",), ("--timeout=0",), ("--etcd-endpoints=ftp://127.0.0.1:2379",)],
)
async def test_bad_flags_exit_2(certs_dir: certs.ClusterCerts, changes: tuple[str, ...]) -> None:
    result = await _init("https://127.0.0.1:1", certs_dir.admin, *changes)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip()
