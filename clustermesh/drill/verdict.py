"""The verdict: does every agent serve exactly what its peers' etcds hold, and does every etcd hold what its
manifests say? Counted as stale and missing entries, which must both be zero.

Per agent, its caches (ListNodes, ListIdentities, ListIPCache, ListServices over its gRPC API) are compared with
the truth of every peer (clustermesh.drill.truth): an entry the agent serves that etcd no longer holds, or holds
with other content, is stale; one etcd holds that the agent does not serve is missing. Per cluster whose example
app the drill edited, the etcd is compared with the manifest (clustermesh.drill.app_manifest): the app's ipcache
entries and service backends, so a delete the apiserver lost shows even though agents faithfully mirror it.

While things move (churn just stopped, an apiserver republishing, agents relisting) a comparison can be dirty
for a moment; settle() compares until every row is clean or the timeout passes. Each row carries the time its
side was read, so the moment a cache reached the truth is its last change before that read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import grpc

from clustermesh import errors
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.drill import app_manifest, entries, target, truth
from clustermesh.keys import Kind

_RPC_TIMEOUT = 5.0
_EXAMPLES = 5
DEFAULT_INTERVAL = 0.2


@dataclasses.dataclass(frozen=True)
class Difference:
    """One row: an agent's cache, or a cluster's etcd against its manifests (`subject` "apiserver <cluster>")."""

    subject: str
    cluster: str
    at: float
    stale: int = 0
    missing: int = 0
    examples: tuple[str, ...] = ()
    error: str = ""

    @property
    def clean(self) -> bool:
        return not self.stale and not self.missing and not self.error


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Every row of one comparison round."""

    at: float
    rows: tuple[Difference, ...]

    @property
    def clean(self) -> bool:
        return all(row.clean for row in self.rows)

    @property
    def stale(self) -> int:
        return sum(row.stale for row in self.rows)

    @property
    def missing(self) -> int:
        return sum(row.missing for row in self.rows)


def app_subject(cluster: str) -> str:
    """The row name of a cluster's etcd compared with its manifests."""
    return f"apiserver {cluster}"


async def read_cache(agent: target.AgentTarget) -> entries.Entries:
    """Every peer entry the agent serves (its gRPC List answers); grpc.aio.AioRpcError if it does not answer."""
    request = agent_pb2.ListRequest()
    async with grpc.aio.insecure_channel(agent.grpc) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        nodes, identities, ipcache, services = await asyncio.gather(
            stub.ListNodes(request, timeout=_RPC_TIMEOUT),
            stub.ListIdentities(request, timeout=_RPC_TIMEOUT),
            stub.ListIPCache(request, timeout=_RPC_TIMEOUT),
            stub.ListServices(request, timeout=_RPC_TIMEOUT),
        )
    found: entries.Entries = {}
    for key, fingerprint in (
        *(entries.node_message(m) for m in nodes.nodes),
        *(entries.identity_message(m) for m in identities.identities),
        *(entries.ipcache_message(m) for m in ipcache.entries),
        *(entries.service_message(m) for m in services.services),
    ):
        found[key] = fingerprint
    return found


def _diff(subject: str, cluster: str, at: float, have: entries.Entries, want: entries.Entries) -> Difference:
    stale = [f"stale {key}" for key, value in have.items() if want.get(key, None) != value]
    stale_keys = {key for key, value in have.items() if want.get(key, None) != value}
    # An entry with other content is stale, not also missing: it is there, just wrong.
    missing = [f"missing {key}" for key in want if key not in have and key not in stale_keys]
    return Difference(subject, cluster, at, stale=len(stale), missing=len(missing),
                      examples=tuple(sorted(stale)[:_EXAMPLES] + sorted(missing)[:_EXAMPLES]))


async def _agent_row(agent: target.AgentTarget, want: entries.Entries) -> Difference:
    at = time.time()
    try:
        have = await read_cache(agent)
    except grpc.aio.AioRpcError as exc:
        return Difference(agent.node, agent.cluster, at, error=f"cannot list its caches: {exc.code().name}")
    return _diff(agent.node, agent.cluster, at, have, want)


def app_row(expect: app_manifest.AppExpectation, cluster_truth: truth.ClusterTruth, at: float) -> Difference:
    """A cluster's etcd (its truth) compared with what its app manifest says the apiserver must publish."""
    service = entries.EntryKey(Kind.SERVICES, expect.cluster, f"{expect.namespace}/{expect.service}")
    published = cluster_truth.entries.get(service)
    backends = entries.backend_ips(published) if published is not None else frozenset()
    pods = frozenset(
        key.name for key, value in cluster_truth.entries.items()
        if key.kind is Kind.IPCACHE and key.name in expect.known_ips and entries.ipcache_namespace(value)
        == expect.namespace
    )
    stale = sorted([f"stale ipcache {ip} (pod gone)" for ip in pods - expect.pod_ips]
                   + [f"stale backend {ip} of {service}" for ip in backends - expect.backend_ips])
    missing = sorted([f"missing ipcache {ip}" for ip in expect.pod_ips - pods]
                     + [f"missing backend {ip} of {service}" for ip in expect.backend_ips - backends])
    return Difference(app_subject(expect.cluster), expect.cluster, at, stale=len(stale), missing=len(missing),
                      examples=tuple(stale[:_EXAMPLES] + missing[:_EXAMPLES]))


async def compare(mesh: target.Target, expectations: list[app_manifest.AppExpectation]) -> Comparison:
    """One round: read the truth, then every agent's caches; rows for the apps first, then the agents."""
    at = time.time()
    try:
        truths = await truth.read(mesh)
    except errors.StoreError as exc:
        rows = [Difference(agent.node, agent.cluster, at, error=f"cannot read the truth: {exc}")
                for agent in mesh.agents]
        return Comparison(at, tuple(rows))
    app_rows = [app_row(expect, truths[expect.cluster], at) for expect in expectations]
    wanted = {
        cluster.name: {key: value for peer in mesh.peers_of(cluster.name)
                       for key, value in truths[peer].entries.items()}
        for cluster in mesh.clusters
    }
    agent_rows = await asyncio.gather(*(_agent_row(agent, wanted[agent.cluster]) for agent in mesh.agents))
    return Comparison(at, (*app_rows, *agent_rows))


async def settle(
    mesh: target.Target,
    expectations: list[app_manifest.AppExpectation],
    *,
    timeout: float,
    settled: Callable[[], bool] = lambda: True,
    interval: float = DEFAULT_INTERVAL,
) -> Comparison:
    """Compare every `interval` until a round is clean and `settled()` holds, or `timeout` passed; the last round
    is the verdict. `settled` is what else must be true (every agent ready: a disconnected agent's cache equals
    the truth whenever nothing changed meanwhile, yet it has not recovered)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        done = settled()
        comparison = await compare(mesh, expectations)
        if (comparison.clean and done) or loop.time() >= deadline:
            return comparison
        await asyncio.sleep(interval)
