"""Prometheus metrics of the apiserver, `clustermesh_apiserver_*`, modelled on Cilium's (reference §9.5).

Every value is read from the publisher when scraped (a custom collector), so nothing has to be kept in step
with the code that does the work. The registry is per publisher, never the global default one.

    clustermesh_apiserver_bootstrap_seconds{source_cluster}                 start → every canary written
    clustermesh_apiserver_kvstore_initial_sync_completed{scope,source_cluster,action="write"}  0/1
    clustermesh_apiserver_kvstore_sync_queue_size{scope,source_cluster}     writes waiting
    clustermesh_apiserver_kvstore_sync_errors_total{scope,source_cluster}   failed write rounds (retried)
    clustermesh_apiserver_kvstore_writes_total{scope,source_cluster,action} puts and deletes done
    clustermesh_apiserver_kvstore_keys{scope,source_cluster}                keys published
    clustermesh_apiserver_source_events_total{kind}                         Kubernetes events received
    clustermesh_apiserver_invalid_objects_total{kind}                       objects skipped as invalid
    clustermesh_apiserver_identities{state="in-use"|"unused"}               identities held
    clustermesh_apiserver_heartbeats_total / heartbeat_failures_total
    clustermesh_apiserver_ready                                             0/1, as /readyz
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apiserver import publisher as publisher_module
from clustermesh import http_server

PREFIX = "clustermesh_apiserver_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PublisherCollector(Collector):
    """Reads the metrics above from one publisher at each scrape."""

    def __init__(self, publisher: publisher_module.Publisher) -> None:
        self.publisher = publisher

    def collect(self) -> Iterator[Metric]:
        publisher = self.publisher
        cluster = publisher.options.cluster
        bootstrap = GaugeMetricFamily(
            PREFIX + "bootstrap_seconds", "Seconds from start until every kind was synced", labels=["source_cluster"]
        )
        if publisher.ready.is_set():
            bootstrap.add_metric([cluster], publisher.bootstrap_seconds)
        yield bootstrap
        scoped = ["scope", "source_cluster"]
        synced = GaugeMetricFamily(
            PREFIX + "kvstore_initial_sync_completed",
            "Whether the initial sync of a kind is complete (its canary written)",
            labels=[*scoped, "action"],
        )
        queue = GaugeMetricFamily(PREFIX + "kvstore_sync_queue_size", "Writes waiting for etcd", labels=scoped)
        errors = CounterMetricFamily(PREFIX + "kvstore_sync_errors", "Failed write rounds (retried)", labels=scoped)
        writes = CounterMetricFamily(
            PREFIX + "kvstore_writes", "Keys written to etcd", labels=[*scoped, "action"]
        )
        published = GaugeMetricFamily(PREFIX + "kvstore_keys", "Keys published", labels=scoped)
        for status in publisher.kind_status():
            scope = [status.name, cluster]
            synced.add_metric([*scope, "write"], float(status.synced))
            queue.add_metric(scope, status.pending)
            errors.add_metric(scope, status.failures)
            writes.add_metric([*scope, "put"], status.puts)
            writes.add_metric([*scope, "delete"], status.deletes)
            published.add_metric(scope, status.keys)
        yield from (synced, queue, errors, writes, published)
        events = CounterMetricFamily(PREFIX + "source_events", "Kubernetes events received", labels=["kind"])
        invalid = CounterMetricFamily(PREFIX + "invalid_objects", "Objects skipped as invalid", labels=["kind"])
        for kind, count in publisher.inventory.events.items():
            events.add_metric([kind.value], count)
            invalid.add_metric([kind.value], publisher.inventory.invalid[kind])
        yield from (events, invalid)
        held = GaugeMetricFamily(PREFIX + "identities", "Identities held", labels=["state"])
        unused = publisher.allocator.unused
        held.add_metric(["in-use"], len(publisher.allocator) - unused)
        held.add_metric(["unused"], unused)
        yield held
        yield CounterMetricFamily(PREFIX + "heartbeats", "Heartbeats written", value=publisher.heartbeat.beats)
        yield CounterMetricFamily(
            PREFIX + "heartbeat_failures", "Heartbeat writes that failed", value=publisher.heartbeat.failures
        )
        ready = float(publisher.ready.is_set())
        yield GaugeMetricFamily(PREFIX + "ready", "Whether the initial sync is complete", value=ready)


def registry(publisher: publisher_module.Publisher) -> CollectorRegistry:
    """A registry holding only this publisher's metrics."""
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(PublisherCollector(publisher))
    return metrics


def routes(metrics: CollectorRegistry) -> dict[str, http_server.Route]:
    """The `/metrics` route over a registry."""

    def scrape() -> http_server.Response:
        return http_server.Response(200, generate_latest(metrics), CONTENT_TYPE)

    return {"/metrics": scrape}
