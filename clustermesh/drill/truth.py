"""The source of truth a verdict compares agents with: what each cluster's etcd holds, decoded by the codec.

Each cluster's `cilium/state/` is read in one paginated list at one revision, with the admin pair of the mesh
file, and decoded exactly as a peer's agent decodes it (clustermesh.codec, with the cluster's name, ID and
max-connected-clusters), so a record an agent must reject is not expected in its cache either. State identities
and ipcache entries name no cluster in their keys: the identity range check keeps the cluster's own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable

from clustermesh import codec, keys, records
from clustermesh.drill import entries, target
from clustermesh.errors import DecodeError
from clustermesh.etcd import client as etcd_client
from clustermesh.keys import Kind

_STATE_PREFIX = keys.subtree_prefix(keys.STATE).encode()


@dataclasses.dataclass(frozen=True)
class ClusterTruth:
    """One cluster's entries as its etcd holds them at `revision`; `invalid` counts records agents must skip."""

    cluster: str
    revision: int
    entries: entries.Entries
    invalid: int


def _decoders(cluster: target.ClusterTarget) -> dict[Kind, Callable[[str, bytes], records.Record]]:
    name, cluster_id, max_clusters = cluster.name, cluster.cluster_id, cluster.max_connected_clusters
    return {
        Kind.NODES: functools.partial(codec.decode_node, cluster=name, cluster_id=cluster_id),
        Kind.SERVICES: functools.partial(codec.decode_service, cluster=name, cluster_id=cluster_id),
        Kind.IDENTITIES: functools.partial(codec.decode_identity, cluster=name, cluster_id=cluster_id,
                                           max_clusters=max_clusters),
        Kind.IPCACHE: functools.partial(codec.decode_ip_identity, cluster=name, cluster_id=cluster_id,
                                        max_clusters=max_clusters),
    }


def _entry(cluster: str, record: records.Record) -> tuple[entries.EntryKey, entries.Fingerprint]:
    if isinstance(record, records.Node):
        return entries.node(cluster, record)
    if isinstance(record, records.ClusterService):
        return entries.service(cluster, record)
    if isinstance(record, records.Identity):
        return entries.identity(cluster, record)
    assert isinstance(record, records.IPIdentityPair)
    return entries.ipcache(cluster, record)


async def read_cluster(cluster: target.ClusterTarget) -> ClusterTruth:
    """Read and decode one cluster's state; StoreError if its etcd cannot be read."""
    async with await etcd_client.EtcdClient.connect(cluster.etcd, timeout=cluster.etcd.request_timeout) as client:
        listed = await client.list_prefix(_STATE_PREFIX)
    decoders = _decoders(cluster)
    found: entries.Entries = {}
    invalid = 0
    for kv in listed.kvs:
        try:
            key = kv.key.decode()
        except UnicodeDecodeError:
            invalid += 1
            continue
        parsed = keys.parse_key(key)
        if parsed is None or parsed.kind not in decoders or parsed.cached:
            continue
        # Node and service keys name their cluster: another cluster's (a shared etcd) is not this one's truth.
        if parsed.cluster is not None and parsed.cluster != cluster.name:
            continue
        try:
            record = decoders[parsed.kind](key, kv.value)
        except DecodeError:
            invalid += 1
            continue
        entry_key, fingerprint = _entry(cluster.name, record)
        found[entry_key] = fingerprint
    return ClusterTruth(cluster=cluster.name, revision=listed.revision, entries=found, invalid=invalid)


async def read(mesh: target.Target) -> dict[str, ClusterTruth]:
    """Every cluster's truth, read concurrently; StoreError if any etcd cannot be read."""
    truths = await asyncio.gather(*(read_cluster(cluster) for cluster in mesh.clusters))
    return {truth.cluster: truth for truth in truths}
