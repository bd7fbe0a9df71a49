"""The agent's Prometheus metrics: the collector over peer statuses and the /metrics HTTP endpoint.

Covered: every series of agent.metrics with its labels and values, a peer leaving (its series disappear at the
next scrape), valid exposition text parsed back by prometheus_client, and the endpoint over real HTTP, served by
clustermesh.http_server as the agent serves it (GET, HEAD, 404, 405, a second run refused). Statuses come from
a fake status source (the lowest seam).
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import metrics, peer_status
from clustermesh import http_server
from tests.agent import test_services as objects

SOURCE = {"source_cluster": "cluster-a", "source_node_name": "node-a1"}


def peer(name: str, **fields: object) -> peer_status.PeerStatus:
    return peer_status.PeerStatus(name=name, **fields)  # type: ignore[arg-type]


class World:
    def __init__(self) -> None:
        self.statuses: list[peer_status.PeerStatus] = []
        self.global_services = 0
        self.collector = metrics.MeshCollector(lambda: list(self.statuses), lambda: self.global_services,
                                               cluster_name="cluster-a", node_name="node-a1")
        self.registry = metrics.registry(self.collector)

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, {**SOURCE, **labels})


def test_series_per_peer() -> None:
    world = World()
    world.global_services = 4
    world.statuses = [
        peer("cluster-b", connected=True, ready=True, failures=2, last_failure_unix=1_700_000_000.0, num_nodes=3,
             num_endpoints=25, num_identities=8, num_services=4, num_service_exports=1, reconnections=2,
             last_event_age_seconds=0.5, invalid_by_reason=(("identity out of range", 3), ("bad IP", 1))),
        peer("cluster-c", revoked=True),
    ]
    assert world.value("clustermesh_remote_clusters") == 2
    assert world.value("clustermesh_global_services") == 4
    assert world.value("clustermesh_remote_cluster_readiness_status", target_cluster="cluster-b") == 1
    assert world.value("clustermesh_remote_cluster_readiness_status", target_cluster="cluster-c") == 0
    assert world.value("clustermesh_remote_cluster_connected", target_cluster="cluster-b") == 1
    assert world.value("clustermesh_remote_cluster_failures", target_cluster="cluster-b") == 2
    assert world.value("clustermesh_remote_cluster_last_failure_ts", target_cluster="cluster-b") == 1_700_000_000.0
    assert world.value("clustermesh_remote_cluster_last_failure_ts", target_cluster="cluster-c") == 0
    assert world.value("clustermesh_remote_cluster_nodes", target_cluster="cluster-b") == 3
    for kind, count in (("nodes", 3), ("endpoints", 25), ("identities", 8), ("services", 4), ("serviceexports", 1)):
        assert world.value("clustermesh_remote_cluster_entries", target_cluster="cluster-b", kind=kind) == count
    assert world.value("clustermesh_remote_cluster_cache_revoked", target_cluster="cluster-c") == 1
    assert world.value("clustermesh_remote_cluster_cache_revoked", target_cluster="cluster-b") == 0
    assert world.value("clustermesh_remote_cluster_reconnections_total", target_cluster="cluster-b") == 2
    assert world.value("clustermesh_remote_cluster_rejected_records_total", target_cluster="cluster-b",
                       reason="identity out of range") == 3
    assert world.value("clustermesh_remote_cluster_last_event_age_seconds", target_cluster="cluster-b") == 0.5
    assert world.value("clustermesh_remote_cluster_last_event_age_seconds", target_cluster="cluster-c") is None, (
        "no event yet: no sample rather than a made-up age")

    world.statuses = world.statuses[:1]
    assert world.value("clustermesh_remote_clusters") == 1
    assert world.value("clustermesh_remote_cluster_cache_revoked", target_cluster="cluster-c") is None


async def test_endpoint_serves_valid_exposition() -> None:
    world = World()
    world.statuses = [peer("cluster-b", ready=True)]
    server = http_server.HttpServer("127.0.0.1:0", metrics.routes(world.registry), name="metrics")
    async with objects.running(server):
        url = f"http://127.0.0.1:{server.port}"

        def fetch(path: str, method: str = "GET") -> tuple[int, str, str]:
            request = urllib.request.Request(url + path, method=method)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, response.headers["Content-Type"], response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers["Content-Type"], exc.read().decode()

        status, content_type, body = await asyncio.to_thread(fetch, "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        families = {family.name: family for family in text_string_to_metric_families(body)}
        assert families["clustermesh_remote_cluster_readiness_status"].samples[0].labels == {
            **SOURCE, "target_cluster": "cluster-b"}
        assert "process_resident_memory_bytes" in families, "process metrics for memory per entry"

        world.statuses = []
        _, _, later = await asyncio.to_thread(fetch, "/metrics?x=1")
        assert "clustermesh_remote_clusters{" in later and 'target_cluster="cluster-b"' not in later

        assert (await asyncio.to_thread(fetch, "/metrics", "HEAD"))[2] == ""
        assert (await asyncio.to_thread(fetch, "/other"))[0] == 404
        assert (await asyncio.to_thread(fetch, "/metrics", "POST"))[0] == 405
        with pytest.raises(RuntimeError, match="already running"):
            await server.run()
