"""Agent bootstrap: one agent syncing a large mesh from nothing, as a ratio to a bare read of the same keys.

Fills one etcd with 25 peer clusters in KVStoreMesh's cache layout (`cilium/cache/<kind>/v1/<cluster>/...`,
with cluster configs, canaries and a heartbeat): 110,000 ipcache entries, 10,000 nodes, 10,000 identities and
2,500 global services of 10 backends. With --quick, 5 of those clusters: a fifth of the keys with the same
per-peer sizes, so the per-entry figures stay comparable (25 peers of a fifth of the size would leave the fixed
per-peer costs, a TLS connection and ~0.5 MB each, dominating both ratios). Then, in the same run, ROUNDS times
in turn (so both sides share the machine's moods; each side's figure is its best round, as a range read's
has always been here):

  bare      a paginated range read of every key under `cilium/cache/` through clustermesh's etcd client;
  agent     in a fresh process, a Mesh with one peer file per cluster (all pointing at this etcd, as agents
            behind KVStoreMesh do), timed from run() to ready with every peer synced; RSS growth per cached
            entry (from /proc/self/statm, so it includes the peer connections and the watch stores' index);
            and the ingest of one 10,000-backend service update, etcd put -> cache listener, p50 of several,
            against a bare put -> watch of the same value in the same process, rounds interleaved. The
            agent's own share (its ingest) is the median over rounds of the difference: etcd storing and
            sending a 550 KB value is most of the end-to-end time. Memory and ingest figures are medians
            over the agent processes.

    python bench/agent_bootstrap.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from agent import cache as mesh_cache
from agent import mesh
from bench import harness
from clustermesh import codec, keys, records, tls
from clustermesh.etcd import client as etcd_client
from clustermesh.etcd import watch as etcd_watch
from clustermesh.keys import Kind
from clustermesh.mesh_config import PeerConfig

CLUSTERS, QUICK_CLUSTERS = 25, 5
FIRST_PEER_ID = 2
LOCAL = mesh.LocalCluster(name="cluster-01", cluster_id=1, pod_cidrs=("10.1.0.0/16",))
BACKENDS_PER_SERVICE = 10
BIG_SERVICE_BACKENDS = 10_000
BIG_SERVICE_UPDATES = 15
INFLIGHT_TXNS = 4
SYNC_TIMEOUT = 120.0
ROUNDS = 3


PER_CLUSTER = {"nodes": 400, "identities": 400, "ipcache": 4400, "services": 100}
"""Records of each peer cluster; times 25 clusters, the totals of the module docstring."""


def cluster_ids(quick: bool) -> range:
    """The peer clusters' IDs."""
    return range(FIRST_PEER_ID, FIRST_PEER_ID + (QUICK_CLUSTERS if quick else CLUSTERS))


def cluster_name(cluster_id: int) -> str:
    return f"cluster-{cluster_id:02d}"


def cluster_records(cluster_id: int, counts: dict[str, int]) -> list[tuple[str, bytes]]:
    """(key, value) of one cluster's export in the cache layout, as KVStoreMesh writes it."""
    name = cluster_name(cluster_id)
    base = cluster_id << 16
    out: list[tuple[str, bytes]] = []
    for n in range(counts["nodes"]):
        # /26 allocation CIDRs inside the cluster's own 10.<id>.0.0/16: no overlap with any other cluster.
        cidr = f"10.{cluster_id}.{n // 4}.{n % 4 * 64}/26"
        node = records.Node(
            name=f"node-{n:04d}", cluster=name, cluster_id=cluster_id, source="custom-resource",
            ip_addresses=(records.NodeAddress("InternalIP", f"172.{cluster_id}.{n // 256}.{n % 256}"),
                          records.NodeAddress("CiliumInternalIP", f"10.{cluster_id}.{n // 4}.{n % 4 * 64 + 1}")),
            ipv4_alloc_cidr=records.CIDR.parse(cidr), ipv4_health_ip=f"10.{cluster_id}.{n // 4}.{n % 4 * 64 + 2}",
            labels={"kubernetes.io/hostname": f"node-{n:04d}"}, boot_id=f"{cluster_id:08x}-{n:04x}",
        )
        out.append((keys.cached_node_key(name, node.name), codec.encode(node)))
    for i in range(counts["identities"]):
        ident = records.Identity.from_labels(base + 256 + i, {
            "app": f"app-{i}", records.POLICY_LABEL_CLUSTER: name, "io.kubernetes.pod.namespace": f"ns-{i % 20}"})
        out.append((keys.cached_identity_key(name, ident.id), codec.encode(ident)))
    ports = (records.NamedPort("http", 8080, "TCP"),)
    for j in range(counts["ipcache"]):
        entry = records.IPIdentityPair(
            ip=f"10.{cluster_id}.{j // 256}.{j % 256}", host_ip=f"172.{cluster_id}.0.{j % 250 + 1}",
            id=base + 256 + j % counts["identities"], k8s_namespace=f"ns-{j % 20}", k8s_pod_name=f"pod-{j}",
            k8s_service_account="default", named_ports=ports,
        )
        out.append((keys.cached_ip_key(name, entry.ip), codec.encode(entry)))
    port = {"http": records.L4Addr("TCP", 8080)}
    for s in range(counts["services"]):
        service = records.ClusterService(
            cluster=name, namespace=f"ns-{s % 20}", name=f"svc-{s}", cluster_id=cluster_id, shared=True,
            include_external=True, frontends={f"10.96.{s // 256}.{s % 256}": {"http": records.L4Addr("TCP", 80)}},
            backends={f"10.{cluster_id}.{(s * BACKENDS_PER_SERVICE + b) // 256 % 256}."
                      f"{(s * BACKENDS_PER_SERVICE + b) % 256}": port for b in range(BACKENDS_PER_SERVICE)},
        )
        out.append((keys.cached_service_key(name, service.namespace, service.name), codec.encode(service)))
    return out


def cluster_meta(cluster_id: int, stamp: bytes) -> list[tuple[str, bytes]]:
    """Config, canaries: what KVStoreMesh writes around a cached cluster."""
    name = cluster_name(cluster_id)
    config = records.ClusterConfig(id=cluster_id, capabilities=records.Capabilities(
        synced_canaries=True, cached=True, max_connected_clusters=255, service_exports_enabled=True))
    meta = [(keys.cluster_config_key(name), codec.encode(config))]
    meta += [(keys.synced_canary_key(name, kind, cached=True), stamp) for kind in Kind]
    return meta


async def fill(client: etcd_client.EtcdClient, pairs: list[tuple[str, bytes]]) -> float:
    """Write pairs in MAX_TXN_OPS transactions, a few in flight; return seconds."""
    batches = iter([
        [etcd_client.put_op(key.encode(), value) for key, value in pairs[start : start + etcd_client.MAX_TXN_OPS]]
        for start in range(0, len(pairs), etcd_client.MAX_TXN_OPS)
    ])

    async def worker() -> None:
        for batch in batches:
            await client.txn(batch)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(INFLIGHT_TXNS)))
    return time.perf_counter() - started


async def bare_read(client: etcd_client.EtcdClient) -> tuple[float, int]:
    """One paginated read of every cached key; (seconds, keys)."""
    started = time.perf_counter()
    result = await client.list_prefix(keys.subtree_prefix(keys.CACHE).encode())
    return time.perf_counter() - started, len(result.kvs)


async def agent_round(spec: dict[str, Any]) -> dict[str, Any]:
    """agent_side() in a fresh interpreter, started with exec (never a fork of a gRPC process): its RSS is the
    agent's."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--agent-side", json.dumps(spec), stdout=subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"agent side failed with status {child.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def rss_bytes() -> int:
    """Resident set size of this process."""
    resident_pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def big_service(cluster_id: int, round_: int) -> records.ClusterService:
    port = {"http": records.L4Addr("TCP", 8080)}
    return records.ClusterService(
        cluster=cluster_name(cluster_id), namespace="ns-big", name="big", cluster_id=cluster_id, shared=True,
        include_external=True,
        backends={f"10.{100 + round_}.{b // 256}.{b % 256}": port for b in range(BIG_SERVICE_BACKENDS)},
    )


async def agent_side(spec: dict[str, Any]) -> dict[str, Any]:
    """The child: bootstrap a Mesh against the filled etcd; measure time, memory and one big update."""
    files = tls.TLSFiles(ca=pathlib.Path(spec["ca"]), cert=pathlib.Path(spec["cert"]), key=pathlib.Path(spec["key"]))
    peers = {
        cluster_name(cid): PeerConfig(cluster_name(cid), etcd_client.EtcdConfig((spec["endpoint"],), tls=files), "v1")
        for cid in cluster_ids(spec["quick"])
    }
    cache = mesh_cache.MeshCache()
    agent = mesh.Mesh(LOCAL, cache, options=mesh.PeerOptions(sync_timeout=600))
    agent.set_peers(peers)
    gc.collect()
    rss_before = rss_bytes()
    ready = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(agent.run(ready=ready), name="mesh")
    try:
        readiness = asyncio.create_task(ready.wait(), name="ready")
        done, _ = await asyncio.wait({readiness, task}, timeout=SYNC_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        readiness.cancel()
        if task in done:
            task.result()  # the mesh failed: raise why
        if readiness not in done:
            stuck = [f"{s.name}: {s.status}" for s in agent.statuses() if not s.ready]
            raise RuntimeError(f"not synced within {SYNC_TIMEOUT}s: {stuck}")
        bootstrap_s = time.perf_counter() - started
        statuses = agent.statuses()
        not_ready = [s.name for s in statuses if not s.ready]
        if not_ready:
            raise RuntimeError(f"peers not synced: {not_ready}")
        entries = sum(s.num_nodes + s.num_endpoints + s.num_identities + s.num_services for s in statuses)
        gc.collect()
        rss_after = rss_bytes()
        ingest, bare_ingest = await big_update(spec, files, cache)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    value = codec.encode(big_service(FIRST_PEER_ID, 0))
    key = keys.cached_service_key(cluster_name(FIRST_PEER_ID), "ns-big", "big")
    decode_s = min(_timed(lambda: codec.decode_service(key, value, cluster=cluster_name(FIRST_PEER_ID),
                                                       cluster_id=FIRST_PEER_ID)) for _ in range(5))
    return {
        "agent_bootstrap_s": bootstrap_s,
        "cached_entries": entries,
        "rss_before_mib": rss_before / 2**20,
        "rss_after_mib": rss_after / 2**20,
        "rss_bytes_per_entry": (rss_after - rss_before) / entries,
        "big_service_put_to_cache_p50_ms": harness.percentile(ingest, 50) * 1000,
        "big_service_put_to_cache_max_ms": max(ingest) * 1000,
        "bare_big_put_to_watch_p50_ms": harness.percentile(bare_ingest, 50) * 1000,
        "big_service_ingest_ms": harness.percentile([a - b for a, b in zip(ingest, bare_ingest, strict=True)], 50)
        * 1000,
        "big_service_decode_ms": decode_s * 1000,
    }


def _timed(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


async def big_update(
    spec: dict[str, Any], files: tls.TLSFiles, cache: mesh_cache.MeshCache
) -> tuple[list[float], list[float]]:
    """Seconds from the put of a 10,000-backend service to the agent's cache listener seeing it, and from a
    put of the same value to a bare watch on a scratch key; rounds interleaved, so both see the same load."""
    name = cluster_name(FIRST_PEER_ID)
    service_key = keys.cached_service_key(name, "ns-big", "big").encode()
    bare_key = b"bench/bare-put-watch"
    arrived = asyncio.Event()
    arrived_at = 0.0

    def listener(change: mesh_cache.Change) -> None:
        nonlocal arrived_at
        if change.kind is Kind.SERVICES and change.name == "ns-big/big" and change.record is not None:
            arrived_at = time.perf_counter()
            arrived.set()

    async def bare_watch(client: etcd_client.EtcdClient, start: int) -> None:
        nonlocal arrived_at
        async for batch in etcd_watch.Watch(client, bare_key, start_revision=start):
            if batch.events:
                arrived_at = time.perf_counter()
                arrived.set()

    async def timed_put(client: etcd_client.EtcdClient, key: bytes, value: bytes) -> float:
        arrived.clear()
        sent = time.perf_counter()
        await client.put(key, value)
        await arrived.wait()
        return arrived_at - sent

    unsubscribe = cache.subscribe(listener)
    agent_s, bare_s = [], []
    async with await etcd_client.EtcdClient.connect(etcd_client.EtcdConfig((spec["endpoint"],), tls=files)) as client:
        # From the current revision on, so a put racing the watch's creation is still delivered.
        watcher = asyncio.create_task(bare_watch(client, (await client.status()).revision + 1))
        try:
            for round_ in range(BIG_SERVICE_UPDATES):
                value = codec.encode(big_service(FIRST_PEER_ID, round_))
                bare_s.append(await timed_put(client, bare_key, value))
                agent_s.append(await timed_put(client, service_key, value))
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            unsubscribe()
    return agent_s, bare_s


async def run(quick: bool) -> dict[str, Any]:
    """Fill, read bare, bootstrap an agent in a child process; return the figures."""
    counts = PER_CLUSTER
    async with harness.etcd_with_tls("bootstrap") as (process, cluster_certs):
        client = await harness.admin_client(process, cluster_certs)
        try:
            stamp = codec.encode_timestamp(datetime.datetime.now(datetime.UTC))
            pairs = [pair for cid in cluster_ids(quick) for pair in cluster_records(cid, counts)]
            fill_s = await fill(client, pairs)
            meta = [pair for cid in cluster_ids(quick) for pair in cluster_meta(cid, stamp)]
            await fill(client, [*meta, (keys.HEARTBEAT_KEY, stamp)])
            spec = {"endpoint": process.endpoint, "ca": str(cluster_certs.admin.ca), "quick": quick,
                    "cert": str(cluster_certs.admin.cert), "key": str(cluster_certs.admin.key)}
            bare_rounds, agent_rounds = [], []
            for _ in range(ROUNDS):
                bare_s, bare_keys = await bare_read(client)
                bare_rounds.append(bare_s)
                agent_rounds.append(await agent_round(spec))
        finally:
            await client.close()
    agent = {key: statistics.median(round_[key] for round_ in agent_rounds) for key in agent_rounds[0]}
    agent["agent_bootstrap_s"] = min(round_["agent_bootstrap_s"] for round_ in agent_rounds)
    return {
        "clusters": len(cluster_ids(quick)),
        "per_cluster": counts,
        "keys": bare_keys,
        "fill_s": fill_s,
        "rounds": ROUNDS,
        "bare_read_s": min(bare_rounds),
        "bare_read_rounds_s": bare_rounds,
        "agent_bootstrap_rounds_s": [round_["agent_bootstrap_s"] for round_ in agent_rounds],
        **agent,
        "bootstrap_ratio": agent["agent_bootstrap_s"] / min(bare_rounds),
        "big_service_ingest_ratio": agent["big_service_put_to_cache_p50_ms"] / agent["bare_big_put_to_watch_p50_ms"],
        "agent_entries_per_s": agent["cached_entries"] / agent["agent_bootstrap_s"],
    }


def report(result: dict[str, Any]) -> None:
    """Print the figures as a table."""
    harness.print_table(f"agent bootstrap: {result['clusters']} clusters, KVStoreMesh layout, one etcd", [
        ("keys under cilium/cache/", result["keys"], ""),
        (f"bare paginated range read (best of {result['rounds']})", result["bare_read_s"], "s"),
        (f"agent run() -> ready (best of {result['rounds']})", result["agent_bootstrap_s"], "s"),
        ("  ratio to bare read", result["bootstrap_ratio"], "x"),
        ("  cached entries", result["cached_entries"], ""),
        ("  ingest rate", result["agent_entries_per_s"], "entries/s"),
        ("RSS growth per cached entry", result["rss_bytes_per_entry"], "bytes"),
        ("RSS after sync", result["rss_after_mib"], "MiB"),
        (f"{BIG_SERVICE_BACKENDS:,}-backend service put->cache p50", result["big_service_put_to_cache_p50_ms"], "ms"),
        ("  bare put->watch of the same value", result["bare_big_put_to_watch_p50_ms"], "ms"),
        ("  ratio to bare", result["big_service_ingest_ratio"], "x"),
        ("  agent's ingest (median of the differences)", result["big_service_ingest_ms"], "ms"),
        ("  decode+validate alone", result["big_service_decode_ms"], "ms"),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 of the 25 clusters")
    parser.add_argument("--json", type=pathlib.Path, help="write the figures here")
    parser.add_argument("--agent-side", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_side:
        print(json.dumps(asyncio.run(agent_side(json.loads(args.agent_side)))))
        return 0
    result = asyncio.run(run(args.quick))
    report(result)
    harness.write_json(args.json, {"benchmark": "agent_bootstrap", "quick": args.quick, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
