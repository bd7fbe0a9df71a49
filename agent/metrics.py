"""The agent's Prometheus metrics and the HTTP endpoint that serves them (`--metrics-listen`, path /metrics).

Modelled on Cilium's agent metrics (reference §9.5), without the `cilium_` namespace. Every series is
computed at scrape time from the peers' statuses and the resolver through a custom collector, so there is
no second copy of the state to keep in step, and a peer removed from the mesh disappears from the next scrape.
Labels: `source_cluster` and `source_node_name` (this agent), plus `target_cluster` (the peer):

    clustermesh_remote_clusters                          peers configured
    clustermesh_remote_cluster_readiness_status          1 when the peer is connected and synced
    clustermesh_remote_cluster_connected                 1 while the connection to the peer's etcd is up
    clustermesh_remote_cluster_failures                  connection failures so far
    clustermesh_remote_cluster_last_failure_ts           unix time of the last failure (0: never)
    clustermesh_remote_cluster_nodes                     the peer's nodes in the cache (Cilium's name)
    clustermesh_remote_cluster_entries{kind}             the peer's cached entries per kind
    clustermesh_remote_cluster_cache_revoked             1 while the peer's entries are revoked (TTL expired)
    clustermesh_remote_cluster_reconnections_total       reconnections so far
    clustermesh_remote_cluster_rejected_records_total{reason}   records skipped because validation failed
    clustermesh_remote_cluster_last_event_age_seconds    since the last event or heartbeat (absent: none yet)
    clustermesh_global_services                          services the peers share

The endpoint is served by clustermesh.http_server, in the event loop, rather than by prometheus_client's
threaded server: the collector reads state owned by the event loop, which must not be read from another thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent import peer_status
from clustermesh import http_server

METRICS_PATH = "/metrics"

StatusesFn = Callable[[], list[peer_status.PeerStatus]]


class MeshCollector(Collector):
    """Turns the peers' statuses into the series listed in the module docstring, at every scrape."""

    def __init__(
        self, statuses: StatusesFn, global_services: Callable[[], int], *, cluster_name: str, node_name: str
    ) -> None:
        self._statuses = statuses
        self._global_services = global_services
        self._source = (cluster_name, node_name)

    def collect(self) -> Iterator[Metric]:
        source_labels = ["source_cluster", "source_node_name"]
        peer_labels = [*source_labels, "target_cluster"]
        statuses = sorted(self._statuses(), key=lambda s: s.name)

        def gauge(name: str, documentation: str, labels: list[str] = peer_labels) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"clustermesh_{name}", documentation, labels=labels)

        remote_clusters = gauge("remote_clusters", "Number of remote clusters configured", source_labels)
        remote_clusters.add_metric(list(self._source), len(statuses))
        global_services = gauge("global_services", "Number of services the remote clusters share", source_labels)
        global_services.add_metric(list(self._source), self._global_services())

        readiness = gauge("remote_cluster_readiness_status", "Whether the remote cluster is connected and synced")
        connected = gauge("remote_cluster_connected", "Whether the connection to the remote cluster's etcd is up")
        failures = gauge("remote_cluster_failures", "Connection failures to the remote cluster")
        last_failure = gauge("remote_cluster_last_failure_ts", "Unix time of the last failure (0: never)")
        nodes = gauge("remote_cluster_nodes", "Nodes of the remote cluster in the cache")
        entries = gauge("remote_cluster_entries", "Cached entries of the remote cluster, per kind",
                        [*peer_labels, "kind"])
        revoked = gauge("remote_cluster_cache_revoked",
                        "Whether the remote cluster's entries are revoked (cache TTL expired while disconnected)")
        event_age = gauge("remote_cluster_last_event_age_seconds",
                          "Seconds since the last event or heartbeat from the remote cluster")
        reconnections = CounterMetricFamily("clustermesh_remote_cluster_reconnections",
                                            "Reconnections to the remote cluster", labels=peer_labels)
        rejected = CounterMetricFamily("clustermesh_remote_cluster_rejected_records",
                                       "Records of the remote cluster skipped because they failed validation",
                                       labels=[*peer_labels, "reason"])
        for status in statuses:
            labels = [*self._source, status.name]
            readiness.add_metric(labels, float(status.ready))
            connected.add_metric(labels, float(status.connected))
            failures.add_metric(labels, status.failures)
            last_failure.add_metric(labels, status.last_failure_unix)
            nodes.add_metric(labels, status.num_nodes)
            for kind, count in (("nodes", status.num_nodes), ("endpoints", status.num_endpoints),
                                ("identities", status.num_identities), ("services", status.num_services),
                                ("serviceexports", status.num_service_exports)):
                entries.add_metric([*labels, kind], count)
            revoked.add_metric(labels, float(status.revoked))
            if status.last_event_age_seconds >= 0:
                event_age.add_metric(labels, status.last_event_age_seconds)
            reconnections.add_metric(labels, status.reconnections)
            for reason, count in status.invalid_by_reason:
                rejected.add_metric([*labels, reason], count)
        yield from (remote_clusters, global_services, readiness, connected, failures, last_failure, nodes, entries,
                    revoked, event_age, reconnections, rejected)


def registry(collector: MeshCollector) -> CollectorRegistry:
    """A registry with the mesh collector and the process collector (RSS, CPU, open files)."""
    result = CollectorRegistry(auto_describe=False)
    result.register(collector)
    ProcessCollector(registry=result)
    return result


def routes(metrics: CollectorRegistry) -> dict[str, http_server.Route]:
    """The `/metrics` route over a registry, for clustermesh.http_server."""

    def scrape() -> http_server.Response:
        return http_server.Response(200, generate_latest(metrics), CONTENT_TYPE_LATEST)

    return {METRICS_PATH: scrape}
