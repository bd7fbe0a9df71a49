"""Fixtures shared by the whole suite: a clean environment, a cluster's certificates and real etcd processes.

The etcd fixtures run the real binary (from the dev install; a missing one is an error, never a skip) on
loopback ports with mutual TLS from a throwaway CA, one fresh process per test.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from clustermesh import certs
from clustermesh.etcd import access, client, process

CLUSTER = "cluster-a"

# Environment that would redirect or reconfigure what tests talk to: kubeconfig, etcdctl defaults, and proxies
# (gRPC honours grpc_proxy/http(s)_proxy, which would send loopback etcd traffic to a proxy).
_ENV_EXACT = ("KUBECONFIG",)
_ENV_PREFIXES = ("ETCDCTL_",)
_ENV_PROXY = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "grpc_proxy")

# Fast enough for tests, all still realistic: a progress notification every second so idle watches advance,
# keepalive pings allowed every second, a single member that leads at once, and no fsync for throwaway data.
ETCD_TEST_OPTIONS = process.EtcdOptions(
    progress_notify_interval=1.0,
    grpc_keepalive_min_time=1.0,
    election_timeout=0.1,
    heartbeat_interval=0.01,
    unsafe_no_fsync=True,
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove KUBECONFIG, ETCDCTL_* and proxy variables for the duration of each test."""
    proxies = {name.lower() for name in _ENV_PROXY}
    for name in list(os.environ):
        if name in _ENV_EXACT or name.startswith(_ENV_PREFIXES) or name.lower() in proxies:
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> certs.ClusterCerts:
    """CA and server/admin/remote/local pairs of "cluster-a", shared by the whole session; read-only."""
    return certs.init_cluster(tmp_path_factory.mktemp("certs"), CLUSTER)


@pytest.fixture
def etcd_options() -> process.EtcdOptions:
    """The EtcdOptions of the `etcd` fixture, for tests that start their own EtcdProcess."""
    return ETCD_TEST_OPTIONS


@pytest_asyncio.fixture
async def etcd(
    tmp_path: pathlib.Path, certs_dir: certs.ClusterCerts, etcd_options: process.EtcdOptions
) -> AsyncIterator[process.EtcdProcess]:
    """A running etcd with mutual TLS and no auth, stopped at teardown."""
    async with process.EtcdProcess(
        tmp_path / "etcd", name=CLUSTER, server_tls=certs_dir.server, options=etcd_options
    ) as etcd_process:
        yield etcd_process


@pytest_asyncio.fixture
async def etcd_auth(etcd: process.EtcdProcess, certs_dir: certs.ClusterCerts) -> process.EtcdProcess:
    """The `etcd` fixture with Cilium's users and roles (clustermesh.etcd.access) and auth enabled."""
    async with await client.EtcdClient.connect(etcd.client_config(certs_dir.admin)) as admin:
        await access.apply(admin, access.policy(CLUSTER))
    return etcd
