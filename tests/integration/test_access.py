"""clustermesh.etcd.access against a real etcd with auth on: what each certificate may read and write.

Covers the least-privilege rules of reference §4.3 (`remote`, `local-<cluster>`, `admin-<cluster>`),
refusal of clients without a certificate or with one from another CA, and idempotent re-application (also
after a restart with the same data). Certificate contents are test_certs.py.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from clustermesh import certs, errors
from clustermesh.api.etcd import rpc_pb2, rpc_pb2_grpc
from clustermesh.etcd import access, client, process

CLUSTER = "cluster-a"


@pytest.fixture
async def admin(
    etcd_auth: process.EtcdProcess, certs_dir: certs.ClusterCerts
) -> AsyncIterator[client.EtcdClient]:
    async with await client.EtcdClient.connect(etcd_auth.client_config(certs_dir.admin)) as etcd:
        yield etcd


@pytest.fixture
async def seeded(admin: client.EtcdClient) -> client.EtcdClient:
    """The admin client, after writing one key in every area the roles distinguish."""
    for key in SEED_KEYS:
        await admin.put(key, b"x")
    return admin


SEED_KEYS = (
    b"cilium/.heartbeat",
    b"cilium/state/nodes/v1/cluster-a/node-1",
    b"cilium/cache/nodes/v1/cluster-c/node-1",
    b"cilium/cluster-config/cluster-a",
    b"cilium/cluster-config/cluster-ab",
    b"cilium/cluster-config/cluster-b",
    b"cilium/synced/cluster-a/cilium/state/nodes/v1",
    b"cilium/synced/cluster-ab/cilium/state/nodes/v1",
    b"cilium/synced/cluster-b/cilium/state/nodes/v1",
    b"other/key",
)

READABLE = {
    "remote": {
        b"cilium/.heartbeat",
        b"cilium/state/nodes/v1/cluster-a/node-1",
        b"cilium/cluster-config/cluster-a",
        b"cilium/synced/cluster-a/cilium/state/nodes/v1",
    },
    "local": {
        b"cilium/.heartbeat",
        b"cilium/cache/nodes/v1/cluster-c/node-1",
        b"cilium/cluster-config/cluster-a",
        b"cilium/cluster-config/cluster-ab",
        b"cilium/cluster-config/cluster-b",
        b"cilium/synced/cluster-a/cilium/state/nodes/v1",
        b"cilium/synced/cluster-ab/cilium/state/nodes/v1",
        b"cilium/synced/cluster-b/cilium/state/nodes/v1",
    },
}


async def _readable(etcd: client.EtcdClient, key: bytes) -> bool:
    try:
        await etcd.get(key)
    except errors.PermissionDenied:
        return False
    return True


@pytest.mark.parametrize("stem", ["remote", "local"])
async def test_peer_certificates_read_only_their_keys(
    etcd_auth: process.EtcdProcess, certs_dir: certs.ClusterCerts, seeded: client.EtcdClient, stem: str
) -> None:
    files = getattr(certs_dir, stem)
    async with await client.EtcdClient.connect(etcd_auth.client_config(files)) as etcd:
        readable = {key for key in SEED_KEYS if await _readable(etcd, key)}
        assert readable == READABLE[stem]
        for key in SEED_KEYS:
            with pytest.raises(errors.PermissionDenied):
                await etcd.put(key, b"y")
            with pytest.raises(errors.PermissionDenied):
                await etcd.delete(key)
        with pytest.raises(errors.PermissionDenied):
            await etcd.user_list()


async def test_remote_lists_state_but_not_cache(
    etcd_auth: process.EtcdProcess, certs_dir: certs.ClusterCerts, seeded: client.EtcdClient
) -> None:
    async with await client.EtcdClient.connect(etcd_auth.client_config(certs_dir.remote)) as etcd:
        listed = await etcd.list_prefix(b"cilium/state/")
        assert [kv.key for kv in listed.kvs] == [b"cilium/state/nodes/v1/cluster-a/node-1"]
        with pytest.raises(errors.PermissionDenied):
            await etcd.list_prefix(b"cilium/cache/")
        with pytest.raises(errors.PermissionDenied):
            await etcd.list_prefix(b"cilium/")


async def test_admin_writes_anywhere(admin: client.EtcdClient) -> None:
    for key in SEED_KEYS:
        await admin.put(key, b"y")
        kv = await admin.get(key)
        assert kv is not None and kv.value == b"y"
    assert await admin.auth_status()


async def test_unknown_user_of_the_same_ca_reads_nothing(
    etcd_auth: process.EtcdProcess, certs_dir: certs.ClusterCerts, tmp_path: pathlib.Path
) -> None:
    # A cluster's own directory is shared by the session: issue into a copy of its CA.
    directory = tmp_path / "ca"
    directory.mkdir()
    for name in ("ca.crt", "ca.key"):
        (directory / name).write_bytes((certs_dir.dir / name).read_bytes())
    files = certs.issue_client_files(directory, "nobody")
    async with await client.EtcdClient.connect(etcd_auth.client_config(files)) as etcd:
        with pytest.raises(errors.PermissionDenied):
            await etcd.get(b"cilium/state/nodes/v1/cluster-a/node-1")


async def test_certificate_from_another_ca_is_refused(
    etcd_auth: process.EtcdProcess, certs_dir: certs.ClusterCerts, tmp_path: pathlib.Path
) -> None:
    other = certs.init_cluster(tmp_path / "other", CLUSTER)
    # Trusts the right server, presents an admin certificate the server's CA did not sign.
    files = dataclasses.replace(other.admin, ca=certs_dir.ca)
    config = dataclasses.replace(etcd_auth.client_config(files), request_timeout=3.0)
    with pytest.raises(errors.StoreUnavailable):
        await client.EtcdClient.connect(config)


async def test_client_without_certificate_is_refused(
    etcd_auth: process.EtcdProcess, certs_dir: certs.ClusterCerts
) -> None:
    # EtcdConfig always carries a client pair, so dial with bare gRPC: TLS that trusts the server, no cert.
    credentials = grpc.ssl_channel_credentials(root_certificates=certs_dir.ca.read_bytes())
    target = etcd_auth.endpoint.removeprefix("https://")
    async with grpc.aio.secure_channel(target, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            request = rpc_pb2.RangeRequest(key=b"cilium/.heartbeat")
            await rpc_pb2_grpc.KVStub(channel).Range(request, timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_apply_is_idempotent_and_exact(admin: client.EtcdClient) -> None:
    wanted = access.policy(CLUSTER)
    assert await access.apply(admin, wanted) == access.Applied()
    assert set(await admin.user_list()) == {"root", "admin-cluster-a", "remote", "local-cluster-a"}
    for role in wanted.roles:
        assert set(await admin.role_get(role.name) or ()) == set(role.permissions)


async def test_apply_after_restart_with_same_data(
    etcd_auth: process.EtcdProcess, certs_dir: certs.ClusterCerts
) -> None:
    await etcd_auth.restart()
    async with await client.EtcdClient.connect(etcd_auth.client_config(certs_dir.admin)) as etcd:
        assert await etcd.auth_status()
        assert await access.apply(etcd, access.policy(CLUSTER)) == access.Applied()


async def test_apply_completes_a_partial_setup(
    etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts
) -> None:
    async with await client.EtcdClient.connect(etcd.client_config(certs_dir.admin)) as etcd_client:
        # As if a previous run stopped after creating the remote role with one of its grants.
        await etcd_client.role_add("remote")
        first = access.policy(CLUSTER).roles[1].permissions[0]
        await etcd_client.role_grant_permission(
            "remote", first.perm_type, key=first.key, range_end=first.range_end
        )
        applied = await access.apply(etcd_client, access.policy(CLUSTER, external_workloads=True))
        assert "remote" not in applied.roles_added
        assert ("remote", first) not in applied.permissions_granted
        assert "externalworkload" in applied.users_added
        assert await etcd_client.auth_status()
        assert len(await etcd_client.role_get("remote") or ()) == 4


def test_policy_matches_reference() -> None:
    wanted = access.policy("c1")
    roles = {role.name: set(role.permissions) for role in wanted.roles}
    read = client.PermType.READ
    assert roles == {
        "root": set(),
        "remote": {
            client.Permission(read, b"cilium/.heartbeat", b"cilium/.heartbeau"),
            client.Permission(read, b"cilium/state/", b"cilium/state0"),
            client.Permission(read, b"cilium/cluster-config/c1", b""),
            client.Permission(read, b"cilium/synced/c1/", b"cilium/synced/c10"),
        },
        "local": {
            client.Permission(read, b"cilium/.heartbeat", b"cilium/.heartbeau"),
            client.Permission(read, b"cilium/cache/", b"cilium/cache0"),
            client.Permission(read, b"cilium/cluster-config/", b"cilium/cluster-config0"),
            client.Permission(read, b"cilium/synced/", b"cilium/synced0"),
        },
    }
    assert {(user.name, user.role) for user in wanted.users} == {
        ("root", "root"), ("admin-c1", "root"), ("remote", "remote"), ("local-c1", "local"),
    }
