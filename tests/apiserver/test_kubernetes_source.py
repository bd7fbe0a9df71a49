"""The publisher fed by the Kubernetes API source, against a fake kube-apiserver speaking list/watch.

No kube-apiserver can be installed here, so the fake API server of tests/kube/test_kubernetes_api.py stands
in for it (the real protocol: paginated lists, chunked watches resumed from resourceVersion, BOOKMARK events,
410 Gone), extended here with the collections the apiserver reads besides Nodes, Services and
ServiceExports. Covers, end to end into etcd: the initial list, watch events, a bookmark (no write), and a
410 → relist after changes made during a compacted gap (the deleted pod's entry goes, the new one comes,
nothing else is rewritten). Excludes: the source's own protocol handling (tests/kube).
"""

from __future__ import annotations

import asyncio

import pytest

from apiserver import publisher as publisher_module
from clustermesh.kube import kubernetes_api
from tests.apiserver.conftest import CLUSTER, state
from tests.helpers import eventually
from tests.kube import test_kubernetes_api as fake

NAMESPACES = fake.Resource("/api/v1/namespaces", "v1", "Namespace")
PODS = fake.Resource("/api/v1/pods", "v1", "Pod")
ENDPOINT_SLICES = fake.Resource("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice")
OPTIONS = kubernetes_api.KubernetesAPIOptions(backoff_initial=0.05, backoff_maximum=0.2, absent_recheck=0.1)


def pod(name: str, ip: str, **labels: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}", "labels": labels},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app"}]},
        "status": {"phase": "Running", "podIP": ip},
    }


def ip_key(ip: str) -> str:
    return f"cilium/state/ip/v1/default/{ip}"


@pytest.fixture
def cluster(monkeypatch) -> fake.FakeCluster:
    for resource in (NAMESPACES, PODS, ENDPOINT_SLICES):
        monkeypatch.setitem(fake.RESOURCES, resource.path, resource)
    return fake.FakeCluster()


@pytest.fixture
async def kubeconfig(tmp_path, cluster):
    server = fake.FakeAPIServer(cluster)
    yield fake.write_kubeconfig(tmp_path / "kubeconfig", server.url)
    await asyncio.to_thread(server.stop)


async def test_list_watch_bookmark_and_relist_reach_etcd(cluster, kubeconfig, admin, start_publisher) -> None:
    cluster.put(fake.NODES, {
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.2"}]},
    })
    cluster.put(NAMESPACES, {"metadata": {"name": "shop"}})
    cluster.put(PODS, pod("web-1", "10.244.0.10", app="web"))
    cluster.put(PODS, pod("web-2", "10.244.0.11", app="web"))
    cluster.put(fake.SERVICES, {
        "metadata": {"name": "web", "namespace": "shop", "annotations": {"service.cilium.io/global": "true"}},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
    cluster.put(ENDPOINT_SLICES, {
        "metadata": {"name": "web-x", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.0.10"], "conditions": {"ready": True}}],
    })
    cluster.put(fake.SERVICE_EXPORTS, {
        "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-01-01T00:00:00Z"},
    })
    source = kubernetes_api.KubernetesAPISource(kubeconfig, kinds=publisher_module.SOURCE_KINDS, options=OPTIONS)

    async with start_publisher(source) as running:
        # Initial list.
        listed = await state(admin)
        assert set(listed) == {
            f"cilium/cluster-config/{CLUSTER}",
            f"cilium/state/nodes/v1/{CLUSTER}/node-1",
            f"cilium/state/services/v1/{CLUSTER}/shop/web",
            f"cilium/state/serviceexports/v1/{CLUSTER}/shop/web",
            "cilium/state/identities/v1/id/196608",
            ip_key("10.244.0.10"),
            ip_key("10.244.0.11"),
        }
        assert b'"HostIP":"172.18.0.2","ID":196608' in listed[ip_key("10.244.0.10")].value
        assert b'"backends":{"10.244.0.10":' in listed[f"cilium/state/services/v1/{CLUSTER}/shop/web"].value

        # A watch event.
        cluster.put(PODS, pod("web-3", "10.244.0.12", app="web"))
        await eventually(lambda: _has(admin, ip_key("10.244.0.12")))
        await running.settled()
        before = await state(admin)

        # A bookmark moves the resume point and writes nothing.
        sent = cluster.bookmarks_sent
        cluster.bookmark()
        await eventually(lambda: cluster.bookmarks_sent > sent)
        await running.settled()
        assert await state(admin) == before

        # Changes during a compacted gap: the watch gets 410 Gone and the source lists again.
        with cluster.gap():
            cluster.delete(PODS, "web-2", "shop")
            cluster.put(PODS, pod("web-4", "10.244.0.13", app="web"))
        cluster.end_watches()
        await eventually(lambda: _has(admin, ip_key("10.244.0.13")))
        await running.settled()
        after = await state(admin)
        assert set(after) == set(before) - {ip_key("10.244.0.11")} | {ip_key("10.244.0.13")}
        assert {key: after[key] for key in before if key in after} == {
            key: kv for key, kv in before.items() if key != ip_key("10.244.0.11")
        }, "the relist rewrote unchanged keys"
        assert len(cluster.lists(PODS)) > 1, "the pods were not listed again"


async def _has(admin, key: str) -> bool:
    return await admin.get(key.encode()) is not None
