"""One peer's connection against real etcd processes: Cilium compatibility of reading, and faults.

Covers: Cilium's own example values (reference §2) written verbatim into peer etcds — the newest apiserver
layout behind Cilium's etcd roles (least privilege), an older Cilium without canaries or capabilities, and
KVStoreMesh's cache layout — appear in the cache with the right fields. Faults, each ending with the cache
exactly equal to the peer's etcd: etcd killed and restarted with keys deleted and added meanwhile; etcd
SIGSTOPped (detected within keepalive interval + timeout, state kept, services revoked after the TTL and
restored after); compaction while disconnected; a canary absent after reconnect (nothing swept until it
returns); the peer's cluster ID changed (drained, then reloaded); the etcd behind the endpoint replaced by
another whose revisions collide (full resync); a silent heartbeat; bad records counted and skipped while the
agent keeps serving.
Excludes: conflicts between peers (test_peer_conflicts.py), the peer set (test_mesh.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib

from agent import cache as mesh_cache
from agent import mesh
from clustermesh import codec, keys, records
from clustermesh.aio import tcp_proxy
from clustermesh.etcd import access
from clustermesh.keys import Kind
from tests.agent.peer_harness import (
    DATA_KINDS,
    FAST,
    LOCAL,
    Peer,
    cached_state,
    converged,
    identity,
    ip_entry,
    node,
    peer_cluster,
    publish_basic,
    running_mesh,
    service,
    status_of,
)
from tests.helpers import eventually

# --- Cilium's example values (reference §2), verbatim ---------------------------------------------------

CLUSTER3 = {
    "cilium/cluster-config/cluster3":
        b'{"id": 3, "capabilities": {"syncedCanaries": true, "maxConnectedClusters": 255, '
        b'"serviceExportsEnabled": false}}',
    "cilium/state/nodes/v1/cluster3/test-node-1":
        b'{"Name":"test-node-1","Cluster":"cluster3",'
        b'"IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.2"},{"Type":"InternalIP","IP":"fc00:c111::2"},'
        b'{"Type":"CiliumInternalIP","IP":"10.244.0.10"},{"Type":"CiliumInternalIP","IP":"fd00:10:244::e2d6"}],'
        b'"IPv4AllocCIDR":{"IP":"10.244.0.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,'
        b'"IPv6AllocCIDR":{"IP":"fd00:10:244::","Mask":"//////////8AAAAAAAAAAA=="},"IPv6SecondaryAllocCIDRs":null,'
        b'"IPv4HealthIP":"10.244.0.134","IPv6HealthIP":"fd00:10:244::d812","IPv4IngressIP":"","IPv6IngressIP":"",'
        b'"ClusterID":3,"Source":"custom-resource","EncryptionKey":0,'
        b'"Labels":{"kubernetes.io/hostname":"test-node-1"},'
        b'"Annotations":{"network.cilium.io/wg-pub-key":"VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI="},'
        b'"WireguardPubKey":"VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI=",'
        b'"BootID":"570d3fd1-93db-4862-ba99-6a3c2c10c38f"}',
    "cilium/state/identities/v1/id/196915":
        b"k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;",
    "cilium/state/ip/v1/default/10.244.2.74":
        b'{"IP":"10.244.2.74","HostIP":"172.18.0.2","ID":199475,"Key":5,"Metadata":"","K8sNamespace":"bar",'
        b'"K8sPodName":"cep-002","K8sPodUID":"cep-pod-uid","K8sServiceAccount":"default",'
        b'"NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"},{"Name":"dns","Port":53,"Protocol":"UDP"}]}',
    "cilium/state/services/v1/cluster3/ns-alpha/echo-service":
        b'{"cluster":"cluster3","namespace":"ns-alpha","name":"echo-service",'
        b'"frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},'
        b'"backends":{"10.244.1.10":{"http":{"Protocol":"TCP","Port":8080}}},'
        b'"labels":{},"selector":{"app":"echo"},"includeExternal":true,"shared":true,"clusterID":3}',
    "cilium/synced/cluster3/cilium/state/nodes/v1": b"2024-07-07T15:55:07+02:00",
    "cilium/synced/cluster3/cilium/state/services/v1": b"2024-07-07T15:55:07+02:00",
    "cilium/synced/cluster3/cilium/state/identities/v1": b"2024-07-07T15:55:07+02:00",
    "cilium/synced/cluster3/cilium/state/ip/v1": b"2024-07-07T15:55:07+02:00",
    "cilium/synced/cluster3/cilium/state/serviceexports/v1": b"2024-07-07T15:55:07+02:00",
    "cilium/.heartbeat": b"2024-07-07T15:55:07+02:00",
}

# An older Cilium (≈1.12-1.14): no capabilities (so no canaries, no service exports), a node with
# NodeIdentity and without Annotations/BootID, `"Mask": null` in ipcache entries, the minimal service of
# pkg/clustermesh/testdata/clusterservice.txtar, and a host entry (identity 1).
CLUSTER2 = {
    "cilium/cluster-config/cluster2": b'{"id":2,"capabilities":{}}',
    "cilium/state/nodes/v1/cluster2/old-node":
        b'{"Name":"old-node","Cluster":"cluster2","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"}],'
        b'"IPv4AllocCIDR":{"IP":"10.245.0.0","Mask":"////AA=="},"IPv6AllocCIDR":null,"IPv4HealthIP":"10.245.0.5",'
        b'"IPv6HealthIP":"","IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":2,"Source":"kvstore",'
        b'"EncryptionKey":0,"Labels":{},"NodeIdentity":0,"WireguardPubKey":""}',
    "cilium/state/services/v1/cluster2/test/echo":
        b'{"name":"echo","namespace":"test","includeExternal":true,"shared":true,"cluster":"cluster2",'
        b'"clusterID":2,"backends":{"20.0.0.2":{"tcp":{"Protocol":"TCP","Port":9090}}}}',
    "cilium/state/identities/v1/id/131078":
        b"k8s:app=echo;k8s:io.cilium.k8s.policy.cluster=cluster2;k8s:io.kubernetes.pod.namespace=test;",
    "cilium/state/ip/v1/default/10.245.0.20":
        b'{"IP":"10.245.0.20","Mask":null,"HostIP":"172.18.0.3","ID":131078,"Key":0,"Metadata":"",'
        b'"K8sNamespace":"test","K8sPodName":"echo-1"}',
    "cilium/state/ip/v1/default/172.18.0.3":
        b'{"IP":"172.18.0.3","Mask":null,"HostIP":"172.18.0.3","ID":1,"Key":0,"Metadata":""}',
}

# KVStoreMesh's rewrite of a peer (reference §2.11, §6): the cache layout, its canaries, and the MCS-API
# export of clustermesh-apiserver/clustermesh/testdata/serviceexports.txtar.
CLUSTER1 = {
    "cilium/cluster-config/cluster1":
        b'{"id":1,"capabilities":{"syncedCanaries":true,"cached":true,"maxConnectedClusters":255,'
        b'"serviceExportsEnabled":true}}',
    "cilium/cache/serviceexports/v1/cluster1/default/basic":
        b'{"cluster":"cluster1","name":"basic","namespace":"default","annotations":{"my-annotation":"foo"},'
        b'"labels":{"my-label":"test"},"exportCreationTimestamp":"2026-01-01T00:00:00Z",'
        b'"ports":[{"name":"my-port-1","protocol":"TCP","port":80}],"type":"ClusterSetIP",'
        b'"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":42}}}',
    "cilium/cache/nodes/v1/cluster1/node-1":
        b'{"Name":"node-1","Cluster":"cluster1","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.4"}],'
        b'"IPv4AllocCIDR":{"IP":"10.246.0.0","Mask":"////AA=="},"ClusterID":1}',
    "cilium/cache/identities/v1/cluster1/id/65600":
        b"k8s:app=basic;k8s:io.cilium.k8s.policy.cluster=cluster1;k8s:io.kubernetes.pod.namespace=default;",
    "cilium/cache/ip/v1/cluster1/10.246.0.7":
        b'{"IP":"10.246.0.7","HostIP":"172.18.0.4","ID":65600,"Key":0,"Metadata":""}',
    **{
        f"cilium/synced/cluster1/cilium/cache/{kind}/v1": b"2024-07-07T15:55:07Z"
        for kind in ("nodes", "services", "identities", "ip", "serviceexports")
    },
}


async def write(peer: Peer, values: dict[str, bytes]) -> None:
    for key, value in values.items():
        await peer.put_raw(key, value)


async def test_cilium_examples_and_older_variants_are_read(tmp_path: pathlib.Path) -> None:
    cache = mesh_cache.MeshCache()
    agent_mesh = mesh.Mesh(dataclasses.replace(LOCAL, cluster_id=9), cache, options=FAST)
    async with (
        peer_cluster(tmp_path, "cluster3", 3) as c3,
        peer_cluster(tmp_path, "cluster2", 2) as c2,
        peer_cluster(tmp_path, "cluster1", 1, cached=True) as c1,
    ):
        # cluster3 serves behind Cilium's etcd roles: the agent reads with the read-only `remote` user.
        await access.apply(c3.admin, access.policy("cluster3"))
        for peer, values in ((c3, CLUSTER3), (c2, CLUSTER2), (c1, CLUSTER1)):
            await write(peer, values)
        agent_mesh.set_peers({p.name: p.peer_config() for p in (c3, c2, c1)})
        async with running_mesh(agent_mesh):
            for peer in (c3, c2, c1):
                await eventually(lambda p=peer: status_of(agent_mesh, p.name).ready, timeout=10)
                await converged(cache, peer)
            s3, s2, s1 = (status_of(agent_mesh, name) for name in ("cluster3", "cluster2", "cluster1"))
            assert (s3.sync_canaries, s3.kvstoremesh, s3.synced.service_exports) == (True, False, True)
            assert (s2.sync_canaries, s2.synced.service_exports, s2.ready) == (False, False, True)
            assert (s1.kvstoremesh, s1.num_service_exports, s1.num_endpoints) == (True, 1, 1)
            assert (s3.num_nodes, s3.num_endpoints, s3.num_identities, s3.num_services) == (1, 1, 1, 1)
            assert s3.invalid_records == s2.invalid_records == s1.invalid_records == 0
            assert s3.heartbeat_age_seconds >= 0 and s2.heartbeat_age_seconds == -1

        n = cache.get(Kind.NODES, "cluster3", "test-node-1")
        assert isinstance(n, records.Node)
        assert n.ipv4_alloc_cidr == records.CIDR("10.244.0.0", bytes([255, 255, 255, 0]))
        assert str(n.ipv6_alloc_cidr.network()) == "fd00:10:244::/64"  # type: ignore[union-attr]
        assert [a.ip for a in n.ip_addresses or ()][-1] == "fd00:10:244::e2d6"
        assert (n.cluster_id, n.boot_id, n.ipv6_health_ip) == (3, "570d3fd1-93db-4862-ba99-6a3c2c10c38f",
                                                                "fd00:10:244::d812")
        assert n.annotations == {"network.cilium.io/wg-pub-key": "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI="}
        ident = cache.get(Kind.IDENTITIES, "cluster3", "196915")
        assert isinstance(ident, records.Identity) and ident.label_map()["k8s:app"] == "baz"
        entry = cache.get(Kind.IPCACHE, "cluster3", "10.244.2.74")
        assert entry == mesh_cache.IPCacheEntry(prefix="10.244.2.74", id=199475, host_ip="172.18.0.2", key=5,
                                                k8s_namespace="bar", k8s_pod_name="cep-002")
        key = "cilium/state/ip/v1/default/10.244.2.74"
        read = codec.decode_ip_identity(key, CLUSTER3[key], cluster="cluster3", cluster_id=3)  # what is not served
        assert read.k8s_pod_uid == "cep-pod-uid"
        assert [(p.name, p.port, p.protocol) for p in read.named_ports or ()] == [
            ("http", 8080, "TCP"), ("dns", 53, "UDP")]
        svc = cache.services_named("ns-alpha", "echo-service")["cluster3"]
        assert svc.backends == {"10.244.1.10": {"http": records.L4Addr("TCP", 8080)}}
        assert (svc.selector, svc.shared, svc.include_external, svc.cluster_id) == ({"app": "echo"}, True, True, 3)

        old = cache.get(Kind.NODES, "cluster2", "old-node")
        assert isinstance(old, records.Node) and old.boot_id == "" and old.annotations is None
        echo = cache.services_named("test", "echo")["cluster2"]
        assert echo.backends == {"20.0.0.2": {"tcp": records.L4Addr("TCP", 9090)}} and echo.frontends is None
        masked = cache.get(Kind.IPCACHE, "cluster2", "10.245.0.20")
        assert isinstance(masked, mesh_cache.IPCacheEntry) and masked.prefix == "10.245.0.20" and masked.id == 131078
        host = cache.get(Kind.IPCACHE, "cluster2", "172.18.0.3")
        assert isinstance(host, mesh_cache.IPCacheEntry) and host.id == 6  # a peer's host is a remote node to us

        export = cache.get(Kind.SERVICE_EXPORTS, "cluster1", "default/basic")
        assert isinstance(export, records.ServiceExport)
        assert export.session_affinity_config == records.SessionAffinityConfig(records.ClientIPConfig(42))
        assert export.ports == (records.ServicePort(name="my-port-1", protocol="TCP", port=80),)
        assert cache.get(Kind.IPCACHE, "cluster1", "10.246.0.7") is not None

    # Stopping the mesh keeps what it read.
    assert cache.count("cluster3", Kind.NODES) == 1


@contextlib.asynccontextmanager
async def one_peer(tmp_path: pathlib.Path, *, options: mesh.PeerOptions = FAST, **publish: object):
    async with peer_cluster(tmp_path, "cluster-b", 2, proxied=True) as peer:
        await publish_basic(peer, **publish)  # type: ignore[arg-type]
        cache = mesh_cache.MeshCache()
        agent_mesh = mesh.Mesh(LOCAL, cache, options=options)
        agent_mesh.set_peers({peer.name: peer.peer_config()})
        async with running_mesh(agent_mesh):
            await converged(cache, peer)
            yield peer, cache, agent_mesh


async def disconnected(agent_mesh: mesh.Mesh, name: str = "cluster-b", *, timeout: float = 10) -> None:
    await eventually(lambda: not status_of(agent_mesh, name).connected, timeout=timeout, description="disconnected")


async def churn(peer: Peer, tag: str) -> None:
    """Deletes, updates and additions of every kind."""
    await peer.delete(node(peer.name, 2, "node-0"), ip_entry("10.2.0.10", 0))
    await peer.put(
        node(peer.name, 2, f"node-{tag}", cidr="10.2.99.0/24"),
        service(peer.name, 2, "my-namespace", "my-app", ["10.2.0.77"]),
        service(peer.name, 2, "other", f"svc-{tag}", ["10.2.0.78"]),
        identity(peer.name, (2 << 16) + 900, f"app-{tag}"),
        ip_entry("10.2.0.77", (2 << 16) + 900),
    )


async def test_kill_and_restart_with_changes_meanwhile(tmp_path: pathlib.Path) -> None:
    async with one_peer(tmp_path) as (peer, cache, agent_mesh):
        deletes: list[tuple[Kind, str]] = []
        cache.subscribe(lambda change: deletes.append((change.kind, change.name)) if change.record is None else None)
        assert peer.proxy is not None
        await peer.etcd.kill()
        await disconnected(agent_mesh)
        assert cached_state(cache, peer.name) != {}  # kept while the peer is down
        peer.proxy.set_mode(tcp_proxy.Mode.REJECT)
        await peer.restart()
        await churn(peer, "x")
        peer.proxy.set_mode(tcp_proxy.Mode.FORWARD)
        await converged(cache, peer)
        assert (Kind.NODES, "node-0") in deletes and (Kind.IPCACHE, "10.2.0.10") in deletes
        status = status_of(agent_mesh, peer.name)
        assert status.ready and status.failures >= 1 and status.reconnections >= 1 and status.last_failure_unix > 0


async def test_sigstop_is_detected_within_the_keepalive_bound_then_revoked(tmp_path: pathlib.Path) -> None:
    options = dataclasses.replace(FAST, cache_ttl=1.5)
    async with one_peer(tmp_path, options=options) as (peer, cache, agent_mesh):
        before = cached_state(cache, peer.name)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        await peer.etcd.pause()
        try:
            await disconnected(agent_mesh, timeout=5)
            detected = loop.time() - stopped_at
            bound = FAST.keepalive_interval + FAST.keepalive_timeout
            assert detected <= bound + 1.0, f"hung peer detected after {detected:.2f}s (bound {bound}s)"
            assert cached_state(cache, peer.name) == before  # last-known state is kept
            await eventually(lambda: status_of(agent_mesh, peer.name).revoked, timeout=5)
            after = cached_state(cache, peer.name)
            assert after[Kind.SERVICES] == {}  # services revoked, as Cilium's RevokeCache does ...
            assert {k: after[k] for k in DATA_KINDS if k is not Kind.SERVICES} == {
                k: before[k] for k in DATA_KINDS if k is not Kind.SERVICES}  # ... the rest stays
            assert "services revoked" in status_of(agent_mesh, peer.name).status
        finally:
            peer.etcd.resume()
        await eventually(lambda: status_of(agent_mesh, peer.name).ready, timeout=10)
        assert not status_of(agent_mesh, peer.name).revoked
        await converged(cache, peer)


async def test_compaction_while_disconnected(tmp_path: pathlib.Path) -> None:
    async with one_peer(tmp_path) as (peer, cache, agent_mesh):
        assert peer.proxy is not None
        peer.proxy.set_mode(tcp_proxy.Mode.REJECT)
        await disconnected(agent_mesh)
        for round_ in range(3):
            await churn(peer, f"r{round_}")
        await peer.compact()
        peer.proxy.set_mode(tcp_proxy.Mode.FORWARD)
        await converged(cache, peer)
        # And a compaction under a live watch is harmless too.
        await churn(peer, "live")
        await peer.compact()
        await converged(cache, peer)


async def test_absent_canary_means_no_sweep(tmp_path: pathlib.Path) -> None:
    async with one_peer(tmp_path) as (peer, cache, agent_mesh):
        before = cached_state(cache, peer.name)
        assert peer.proxy is not None
        peer.proxy.set_mode(tcp_proxy.Mode.REJECT)
        await disconnected(agent_mesh)
        # The peer's etcd is being rebuilt: its canaries are gone and its export is partial.
        await peer.admin.delete_prefix(keys.synced_prefix(peer.name).encode())
        await peer.delete(node(peer.name, 2, "node-1"), node(peer.name, 2, "node-2"))
        await peer.put(node(peer.name, 2, "node-new", cidr="10.2.50.0/24"))
        peer.proxy.set_mode(tcp_proxy.Mode.FORWARD)

        def waiting() -> bool:
            status = status_of(agent_mesh, peer.name)
            return status.connected and status.status.startswith("waiting for sync canaries: nodes, services")

        await eventually(waiting, timeout=10)
        assert cached_state(cache, peer.name) == before  # nothing swept, nothing half-read
        await peer.publish_canaries()
        await converged(cache, peer)
        assert "node-1" not in cached_state(cache, peer.name)[Kind.NODES]


async def test_changed_cluster_id_drains_then_reloads(tmp_path: pathlib.Path) -> None:
    async with one_peer(tmp_path) as (peer, cache, agent_mesh):
        changes: list[mesh_cache.Change] = []
        cache.subscribe(changes.append)
        old_names = {kind: set(names) for kind, names in cached_state(cache, peer.name).items()}
        assert peer.proxy is not None
        peer.proxy.set_mode(tcp_proxy.Mode.REJECT)
        await disconnected(agent_mesh)
        await peer.admin.delete_prefix(b"cilium/")
        peer.cluster_id = 3
        await publish_basic(peer)
        peer.proxy.set_mode(tcp_proxy.Mode.FORWARD)
        await eventually(lambda: status_of(agent_mesh, peer.name).cluster_id == 3, timeout=10)
        await converged(cache, peer)
        assert all(record.cluster_id == 3 for _, _, record in cache.items(Kind.NODES, peer.name))  # type: ignore[union-attr]
        # Drained first: every old entry was deleted before the first entry of the new identity arrived.
        first_upsert = next(i for i, change in enumerate(changes) if change.record is not None)
        deleted = {(c.kind, c.name) for c in changes[:first_upsert] if c.record is None}
        assert deleted == {(kind, name) for kind, names in old_names.items() for name in names}
        # ID 2 was released: another peer may now hold it.
        async with peer_cluster(tmp_path, "cluster-c", 2) as other:
            await publish_basic(other, cidr_base="10.30")
            agent_mesh.set_peers({peer.name: peer.peer_config(), other.name: other.peer_config()})
            await eventually(lambda: status_of(agent_mesh, "cluster-c").ready, timeout=10)


async def test_replaced_etcd_behind_the_endpoint_is_fully_resynced(tmp_path: pathlib.Path) -> None:
    async with one_peer(tmp_path, nodes=4) as (peer, cache, agent_mesh):
        # Another etcd for the same cluster (an HA replica, or one rebuilt from scratch) with the same key
        # layout written in the same order: its revisions match the old ones, its values do not.
        async with peer_cluster(tmp_path / "replica", peer.name, 2, cluster_certs=peer.certs) as replica:
            await publish_basic(replica, nodes=3, backend=50)
            assert peer.proxy is not None
            peer.proxy.target_port = int(replica.etcd.endpoint.rsplit(":", 1)[1])
            peer.proxy.set_mode(tcp_proxy.Mode.REJECT)
            await disconnected(agent_mesh)
            peer.proxy.set_mode(tcp_proxy.Mode.FORWARD)
            await eventually(
                lambda: status_of(agent_mesh, peer.name).etcd_cluster_id == f"{replica.admin.cluster_id:x}",
                timeout=10,
            )
            await converged(cache, replica)
            assert cache.services_named("my-namespace", "my-app")["cluster-b"].backends.keys() == {  # type: ignore[union-attr]
                "10.2.0.50", "10.2.0.51"}


async def test_silent_heartbeat_disconnects_but_keeps_entries(tmp_path: pathlib.Path) -> None:
    async with one_peer(tmp_path) as (peer, cache, agent_mesh):
        before = cached_state(cache, peer.name)
        beats = 0

        async def beat() -> None:
            nonlocal beats
            while True:
                await peer.beat()
                beats += 1
                await asyncio.sleep(0.2)

        beating = asyncio.create_task(beat())
        try:
            # Two writes seen on the watch give the interval; the timeout is then max(3 x 0.2 s, 2 s).
            await eventually(lambda: beats >= 4, timeout=5)
            assert 0 <= status_of(agent_mesh, peer.name).heartbeat_age_seconds < 1
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        await eventually(lambda: status_of(agent_mesh, peer.name).last_error.startswith("heartbeat not written"),
                         timeout=6)
        assert status_of(agent_mesh, peer.name).failures >= 1
        assert cached_state(cache, peer.name) == before


async def test_bad_records_are_counted_and_skipped_while_serving(tmp_path: pathlib.Path) -> None:
    async with one_peer(tmp_path) as (peer, cache, agent_mesh):
        good_service = cache.services_named("my-namespace", "my-app")["cluster-b"]
        await peer.put_raw(keys.node_key(peer.name, "x"), codec.encode(node("cluster-x", 2, "x")))
        await peer.put_raw(keys.identity_key(5 << 16), codec.encode(identity("cluster-e", 5 << 16, "e")))
        await peer.put_raw(keys.ip_key("10.2.0.300"), b'{"IP":"10.2.0.300","ID":6}')
        await peer.put_raw(keys.service_key(peer.name, "my-namespace", "my-app"), b'{"cluster":"cluster-b","na')
        await peer.put(node(peer.name, 2, "after-the-bad-ones", cidr="10.2.60.0/24"))
        # Each kind has its own watch stream: wait for the last write of each.
        await eventually(lambda: status_of(agent_mesh, peer.name).invalid_records == 4
                         and cache.get(Kind.NODES, peer.name, "after-the-bad-ones") is not None, timeout=5)
        status = status_of(agent_mesh, peer.name)
        assert dict(status.invalid_by_reason) == {
            "nodes: unexpected cluster name": 1,
            "identities: ID N does not belong to the allocation range of cluster ID N": 1,
            "ip: IP": 1,
            "services: invalid value": 1,
        }
        assert status.ready
        # The truncated update did not evict the good service; a later good one replaces it.
        assert cache.services_named("my-namespace", "my-app")["cluster-b"] == good_service
        await peer.put(service(peer.name, 2, "my-namespace", "my-app", ["10.2.0.99"]))
        await converged(cache, peer)
        # A relist after a reconnect delivers only what changed: the unchanged bad records are not counted again.
        assert peer.proxy is not None
        peer.proxy.set_mode(tcp_proxy.Mode.REJECT)
        await disconnected(agent_mesh)
        await peer.put(node(peer.name, 2, "while-away", cidr="10.2.61.0/24"))
        peer.proxy.set_mode(tcp_proxy.Mode.FORWARD)
        await eventually(lambda: status_of(agent_mesh, peer.name).ready, timeout=10)
        await converged(cache, peer)
        assert status_of(agent_mesh, peer.name).invalid_records == 4
