"""`clustermesh kv ls|get|watch` as an operator runs it: a real subprocess against a real etcd with mTLS.

Covers decoding of valid records (Cilium's own example values), the raw display of an invalid value with its
reason, JSON output, watch streaming, and exit codes (0 clean, 1 an invalid value found, 2 bad flags).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from clustermesh import keys
from clustermesh.etcd import client as etcd_client

NODE = (
    b'{"Name":"test-node-1","Cluster":"cluster3","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.2"}],'
    b'"IPv4AllocCIDR":{"IP":"10.244.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,'
    b'"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"",'
    b'"ClusterID":3,"Source":"custom-resource","EncryptionKey":0,"Labels":null,"Annotations":null,'
    b'"WireguardPubKey":"","BootID":""}'
)
IDENTITY = b"k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;"


def cli(etcd, files, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [f"--etcd-endpoints={etcd.endpoint}", f"--etcd-ca={files.ca}", f"--etcd-cert={files.cert}",
             f"--etcd-key={files.key}"]
    return subprocess.run([sys.executable, "-m", "clustermesh", "kv", *args, *flags],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
async def populated(etcd, certs_dir):
    async with await etcd_client.EtcdClient.connect(etcd.client_config(certs_dir.admin)) as admin:
        await admin.put(keys.node_key("cluster3", "test-node-1").encode(), NODE)
        await admin.put(keys.identity_key(196915).encode(), IDENTITY)
    return etcd


async def test_ls_and_get_decode_valid_records(populated, certs_dir) -> None:
    listed = await asyncio.to_thread(cli, populated, certs_dir.admin, "ls", "cilium/state/", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    entries = {e["key"]: e for e in json.loads(listed.stdout)}
    node = entries["cilium/state/nodes/v1/cluster3/test-node-1"]
    assert node["valid"] and node["kind"] == "nodes" and node["value"]["Name"] == "test-node-1"
    assert entries["cilium/state/identities/v1/id/196915"]["valid"]
    shown = await asyncio.to_thread(cli, populated, certs_dir.admin, "get", "cilium/state/nodes/v1/cluster3/")
    assert shown.returncode == 0 and '"IPv4AllocCIDR"' in shown.stdout and "test-node-1" in shown.stdout


async def test_invalid_value_is_shown_raw_with_reason(populated, certs_dir) -> None:
    async with await etcd_client.EtcdClient.connect(populated.client_config(certs_dir.admin)) as admin:
        await admin.put(keys.node_key("cluster3", "wrong-name").encode(), NODE)
        await admin.put(keys.ip_key("10.0.0.1").encode(), b'{"IP":"10.0.0.1","ID":')
    result = await asyncio.to_thread(cli, populated, certs_dir.admin, "ls", "cilium/state/", "-o", "json")
    assert result.returncode == 1
    bad = {e["key"]: e for e in json.loads(result.stdout) if not e["valid"]}
    assert set(bad) == {"cilium/state/nodes/v1/cluster3/wrong-name", "cilium/state/ip/v1/default/10.0.0.1"}
    assert "name" in bad["cilium/state/nodes/v1/cluster3/wrong-name"]["error"]
    assert bad["cilium/state/ip/v1/default/10.0.0.1"]["raw"] == '{"IP":"10.0.0.1","ID":'
    table = await asyncio.to_thread(cli, populated, certs_dir.admin, "ls", "cilium/state/nodes/")
    assert "INVALID" in table.stdout and table.returncode == 1


async def test_watch_streams_changes_as_json_lines(populated, certs_dir) -> None:
    watcher = asyncio.create_task(asyncio.to_thread(
        cli, populated, certs_dir.admin, "watch", "cilium/state/nodes/", "--count", "2", "-o", "json"))
    async with await etcd_client.EtcdClient.connect(populated.client_config(certs_dir.admin)) as admin:
        # The watch starts from "now": keep changing the key until the watcher has seen two events.
        while not watcher.done():
            await admin.put(keys.node_key("cluster3", "test-node-1").encode(), NODE)
            await admin.delete(keys.node_key("cluster3", "test-node-1").encode())
            await asyncio.wait([watcher], timeout=0.2)
    result = watcher.result()
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 2 and {e["event"] for e in events} <= {"PUT", "DELETE"}


def test_bad_flags_exit_2_with_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "clustermesh", "kv", "ls", "cilium/",
                             "--etcd-endpoints", "https://127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--etcd-ca" in result.stderr
