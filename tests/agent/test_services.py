"""Global-service merging: the local view from Kubernetes objects (agent.local_services) and resolution
(agent.services) against peers' ClusterServices, per reference §8.

Covered: annotations (global, shared, affinity, legacy aliases, invalid affinity), global namespaces, ExternalName,
EndpointSlice conditions (ready, terminating+serving, not ready), several slices per service, slice moves and
deletes; the §8 matrix (local not global → local only, peer not shared → ignored), every affinity before and
after local backends disappear or terminate, the peers-only mode without a local source, and misuse (a
source without the needed kinds, a second run). The local side is fed by a scripted source (the lowest seam);
the peers' side by a MeshCache filled directly. DNS and gRPC answers are tested in their own modules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent import cache as mesh_cache
from agent import local_services, services
from agent.local_services import Affinity, BackendState
from clustermesh import kube, records
from tests.helpers import running

LOCAL, LOCAL_ID = "cluster-a", 1
NS, NAME = "my-namespace", "my-app"


class ScriptedSource:
    """A kube.Source that delivers what the test feeds it, in order; `settled()` waits until all is applied."""

    kinds = frozenset(local_services.KINDS)

    def __init__(self) -> None:
        self.queue: asyncio.Queue[kube.SourceItem] = asyncio.Queue()

    async def run(self, sink: kube.EventSink, *, ready: asyncio.Event | None = None) -> None:
        while True:
            item = await self.queue.get()
            await sink(item)
            if item is kube.SYNCED and ready is not None:
                ready.set()
            self.queue.task_done()

    def upsert(self, obj: dict[str, Any]) -> None:
        self.queue.put_nowait(kube.Event(kube.EventType.UPSERT, _key(obj), obj))

    def delete(self, obj: dict[str, Any]) -> None:
        self.queue.put_nowait(kube.Event(kube.EventType.DELETE, _key(obj), obj))

    async def settled(self) -> None:
        async with asyncio.timeout(5):
            await self.queue.join()


def _key(obj: dict[str, Any]) -> kube.ObjectKey:
    kind = kube.Kind(obj["kind"])
    return kube.ObjectKey(kind, obj["metadata"].get("namespace", "") if kind.namespaced else "",
                          obj["metadata"]["name"])


def service(name: str = NAME, namespace: str = NS, *, cluster_ip: str = "10.96.0.10", type_: str = "ClusterIP",
            annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": {"type": type_, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    }


def global_service(affinity: str | None = None, *, name: str = NAME, namespace: str = NS,
                   **extra: str) -> dict[str, Any]:
    annotations = {"service.cilium.io/global": "true", **extra}
    if affinity is not None:
        annotations["service.cilium.io/affinity"] = affinity
    return service(name, namespace, annotations=annotations)


def endpoint_slice(
    slice_name: str, endpoints: list[tuple[str, dict[str, bool]]], *, service_name: str = NAME, port: int = 8080,
    port_name: str = "http",
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": slice_name, "namespace": NS, "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": conditions} for ip, conditions in endpoints],
    }


def namespace(name: str, **annotations: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "annotations": annotations}}


READY = {"ready": True}
TERMINATING = {"ready": False, "serving": True, "terminating": True}
NOT_READY = {"ready": False, "serving": False, "terminating": False}


def remote_service(cluster: str, cluster_id: int, *backend_ips: str, shared: bool = True) -> records.ClusterService:
    return records.ClusterService(
        cluster=cluster, namespace=NS, name=NAME, cluster_id=cluster_id, shared=shared, include_external=True,
        frontends={"10.96.0.20": {"http": records.L4Addr("TCP", 80)}},
        backends={ip: {"http": records.L4Addr("TCP", 9090)} for ip in backend_ips},
    )


@pytest.fixture
def cache() -> mesh_cache.MeshCache:
    return mesh_cache.MeshCache()


@contextlib.asynccontextmanager
async def running_local(source: ScriptedSource) -> AsyncIterator[local_services.LocalServices]:
    """LocalServices over source, after the source's initial (empty) state."""
    source.queue.put_nowait(kube.SYNCED)
    async with running(local_services.LocalServices(source)) as local:
        yield local


@pytest.fixture
async def source() -> ScriptedSource:
    return ScriptedSource()


@pytest.fixture
async def local(source: ScriptedSource) -> AsyncIterator[local_services.LocalServices]:
    async with running_local(source) as running:
        yield running


def resolver(cache: mesh_cache.MeshCache, local: local_services.LocalServices | None) -> services.ServiceResolver:
    return services.ServiceResolver(cache, local, local_cluster=LOCAL, local_cluster_id=LOCAL_ID)


def view(local: local_services.LocalServices, namespace: str = NS, name: str = NAME) -> local_services.LocalService:
    found = local.get(namespace, name)
    assert found is not None, f"no local service {namespace}/{name}"
    return found


def resolved(cache: mesh_cache.MeshCache, local: local_services.LocalServices | None) -> services.Resolution:
    found = resolver(cache, local).resolve(NS, NAME)
    assert found is not None, f"{NS}/{NAME} does not resolve"
    return found


def ips(backends: tuple[services.Backend, ...]) -> list[str]:
    return sorted({backend.ip for backend in backends})


# ----------------------------------------------------------------------------------------------------
# The local view


async def test_local_service_from_service_and_slices(source: ScriptedSource,
                                                     local: local_services.LocalServices) -> None:
    source.upsert(global_service("local"))
    source.upsert(endpoint_slice("s1", [("10.1.0.1", READY), ("10.1.0.2", TERMINATING)]))
    source.upsert(endpoint_slice("s2", [("10.1.0.3", {}), ("10.1.0.4", NOT_READY)]))
    await source.settled()

    found = view(local)
    assert (found.global_, found.shared, found.affinity) == (True, True, Affinity.LOCAL)
    assert found.cluster_ips == ("10.96.0.10",)
    assert found.ports == (local_services.Port("http", 80, "TCP"),)
    assert [(b.ip, b.state) for b in found.backends] == [
        ("10.1.0.1", BackendState.ACTIVE), ("10.1.0.2", BackendState.TERMINATING), ("10.1.0.3", BackendState.ACTIVE),
    ], "ready unset counts as ready; not ready and not serving is left out"
    assert found.backends[0].ports == (local_services.Port("http", 8080, "TCP"),)
    assert local.has_namespace(NS) and not local.has_namespace("other")
    assert list(local.names()) == [(NS, NAME)]


async def test_slice_changes_and_deletes_update_the_view(source: ScriptedSource,
                                                         local: local_services.LocalServices) -> None:
    source.upsert(global_service())
    first = endpoint_slice("s1", [("10.1.0.1", READY)])
    source.upsert(first)
    source.upsert(endpoint_slice("s2", [("10.1.0.2", READY)]))
    await source.settled()
    assert [b.ip for b in view(local).backends] == ["10.1.0.1", "10.1.0.2"]

    source.upsert(endpoint_slice("s1", [("10.1.0.1", READY)], service_name="other"))  # the slice moves away
    await source.settled()
    assert [b.ip for b in view(local).backends] == ["10.1.0.2"]

    source.delete(endpoint_slice("s2", []))
    await source.settled()
    assert view(local).backends == ()

    source.delete(global_service())
    await source.settled()
    assert local.get(NS, NAME) is None


async def test_same_ip_in_two_slices_merges_ports_and_keeps_active(source: ScriptedSource,
                                                                   local: local_services.LocalServices) -> None:
    source.upsert(global_service())
    source.upsert(endpoint_slice("s1", [("10.1.0.1", TERMINATING)]))
    source.upsert(endpoint_slice("s2", [("10.1.0.1", READY)], port=8443, port_name="https"))
    await source.settled()
    (backend,) = view(local).backends
    assert backend.state is BackendState.ACTIVE
    assert {p.name for p in backend.ports} == {"http", "https"}


@pytest.mark.parametrize(
    ("annotations", "global_", "shared", "affinity"),
    [
        ({}, False, False, Affinity.NONE),
        ({"service.cilium.io/global": "true"}, True, True, Affinity.NONE),
        ({"service.cilium.io/global": "TRUE"}, True, True, Affinity.NONE),
        ({"io.cilium/global-service": "true"}, True, True, Affinity.NONE),
        ({"service.cilium.io/global": "false"}, False, False, Affinity.NONE),
        ({"service.cilium.io/global": "true", "service.cilium.io/shared": "false"}, True, False, Affinity.NONE),
        ({"service.cilium.io/global": "true", "io.cilium/shared-service": "no"}, True, False, Affinity.NONE),
        ({"service.cilium.io/global": "true", "service.cilium.io/affinity": "remote"}, True, True, Affinity.REMOTE),
        ({"service.cilium.io/global": "true", "io.cilium/service-affinity": "local"}, True, True, Affinity.LOCAL),
        ({"service.cilium.io/global": "true", "service.cilium.io/affinity": "nearest"}, True, True, Affinity.NONE),
        ({"service.cilium.io/shared": "true"}, False, False, Affinity.NONE),
    ],
)
async def test_annotations(source: ScriptedSource, local: local_services.LocalServices,
                           annotations: dict[str, str], global_: bool, shared: bool, affinity: Affinity) -> None:
    source.upsert(service(annotations=annotations))
    await source.settled()
    found = view(local)
    assert (found.global_, found.shared, found.affinity) == (global_, shared, affinity)


async def test_namespace_global_flag(source: ScriptedSource, local: local_services.LocalServices) -> None:
    source.upsert(global_service())
    await source.settled()
    assert view(local).global_  # default: namespaces are global

    source.upsert(namespace(NS, **{"clustermesh.cilium.io/global": "false"}))
    await source.settled()
    assert not view(local).global_

    source.delete(namespace(NS))
    await source.settled()
    assert view(local).global_


async def test_non_global_namespaces_by_default() -> None:
    source = ScriptedSource()
    local = local_services.LocalServices(source, default_global_namespace=False)
    task = asyncio.create_task(local.run())
    try:
        source.upsert(global_service())
        source.upsert(namespace(NS, **{"clustermesh.cilium.io/global": "true"}))
        source.upsert(global_service(name="other", namespace="plain"))
        await source.settled()
        assert view(local).global_
        assert not view(local, "plain", "other").global_
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_external_name_and_headless(source: ScriptedSource, local: local_services.LocalServices) -> None:
    source.upsert(service("ext", type_="ExternalName"))
    source.upsert(service("headless", cluster_ip="None"))
    await source.settled()
    assert local.get(NS, "ext") is None
    assert view(local, NS, "headless").cluster_ips == ()


async def test_invalid_addresses_and_ports_are_skipped(source: ScriptedSource,
                                                       local: local_services.LocalServices) -> None:
    source.upsert(global_service())
    bad = endpoint_slice("s1", [("10.1.0.1", READY), ("not-an-ip", READY)])
    bad["ports"].append({"name": "bad", "port": 70000})
    source.upsert(bad)
    await source.settled()
    (backend,) = view(local).backends
    assert backend.ip == "10.1.0.1" and [p.name for p in backend.ports] == ["http"]


async def test_misuse() -> None:
    class NodesOnly:
        kinds = frozenset({kube.Kind.NODE})

        async def run(self, sink: kube.EventSink, *, ready: asyncio.Event | None = None) -> None:
            raise AssertionError("never run")

    with pytest.raises(ValueError, match="must deliver"):
        local_services.LocalServices(NodesOnly())  # type: ignore[arg-type]

    source = ScriptedSource()
    async with running_local(source) as local:
        with pytest.raises(RuntimeError, match="already running"):
            await local.run()


# ----------------------------------------------------------------------------------------------------
# Resolution


async def test_global_service_merges_remote_backends(
    source: ScriptedSource, local: local_services.LocalServices, cache: mesh_cache.MeshCache
) -> None:
    source.upsert(global_service())
    source.upsert(endpoint_slice("s1", [("10.1.0.1", READY)]))
    await source.settled()
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", remote_service("cluster-b", 2, "20.0.0.2"))
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-c", f"{NS}/{NAME}", remote_service("cluster-c", 3, "30.0.0.3"))

    resolution = resolved(cache, local)
    assert resolution.global_ and resolution.affinity is Affinity.NONE
    assert resolution.frontends == ("10.96.0.10",), "the local ClusterIP, never the remote frontends"
    assert [(b.ip, b.port, b.cluster, b.cluster_id, b.local) for b in resolution.backends] == [
        ("10.1.0.1", 8080, LOCAL, LOCAL_ID, True),
        ("20.0.0.2", 9090, "cluster-b", 2, False),
        ("30.0.0.3", 9090, "cluster-c", 3, False),
    ]
    assert resolution.all_backends == resolution.backends

    cache.delete(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}")
    assert ips(resolved(cache, local).backends) == ["10.1.0.1", "30.0.0.3"]


async def test_local_service_not_global_uses_local_backends_only(
    source: ScriptedSource, local: local_services.LocalServices, cache: mesh_cache.MeshCache
) -> None:
    source.upsert(service())
    source.upsert(endpoint_slice("s1", [("10.1.0.1", READY)]))
    await source.settled()
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", remote_service("cluster-b", 2, "20.0.0.2"))
    resolution = resolved(cache, local)
    assert not resolution.global_
    assert ips(resolution.backends) == ips(resolution.all_backends) == ["10.1.0.1"]


async def test_local_not_shared_still_imports_remote(
    source: ScriptedSource, local: local_services.LocalServices, cache: mesh_cache.MeshCache
) -> None:
    source.upsert(global_service(**{"service.cilium.io/shared": "false"}))
    source.upsert(endpoint_slice("s1", [("10.1.0.1", READY)]))
    await source.settled()
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", remote_service("cluster-b", 2, "20.0.0.2"))
    resolution = resolved(cache, local)
    assert not resolution.shared
    assert ips(resolution.backends) == ["10.1.0.1", "20.0.0.2"]


async def test_peer_service_not_shared_is_ignored(
    source: ScriptedSource, local: local_services.LocalServices, cache: mesh_cache.MeshCache
) -> None:
    source.upsert(global_service())
    await source.settled()
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}",
                 remote_service("cluster-b", 2, "20.0.0.2", shared=False))
    assert resolved(cache, local).all_backends == ()


async def test_unknown_without_local_service(
    local: local_services.LocalServices, cache: mesh_cache.MeshCache
) -> None:
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", remote_service("cluster-b", 2, "20.0.0.2"))
    assert resolver(cache, local).resolve(NS, NAME) is None, "a service must exist locally to be resolved"
    assert resolver(cache, local).global_service_count() == 1


@pytest.mark.parametrize(
    ("affinity", "local_endpoints", "remote", "selected"),
    [
        # local: local backends while any is active; remote ones only when none is.
        ("local", [("10.1.0.1", READY)], ["20.0.0.2"], ["10.1.0.1"]),
        ("local", [], ["20.0.0.2"], ["20.0.0.2"]),
        ("local", [("10.1.0.1", TERMINATING)], ["20.0.0.2"], ["10.1.0.1", "20.0.0.2"]),
        ("local", [("10.1.0.1", NOT_READY)], ["20.0.0.2"], ["20.0.0.2"]),
        ("local", [("10.1.0.1", READY)], [], ["10.1.0.1"]),
        # remote: remote backends while there are any; local ones only when there are none.
        ("remote", [("10.1.0.1", READY)], ["20.0.0.2"], ["20.0.0.2"]),
        ("remote", [("10.1.0.1", READY)], [], ["10.1.0.1"]),
        ("remote", [("10.1.0.1", TERMINATING)], [], ["10.1.0.1"]),
        ("remote", [], [], []),
        # none: everything.
        ("none", [("10.1.0.1", READY)], ["20.0.0.2"], ["10.1.0.1", "20.0.0.2"]),
        ("none", [("10.1.0.1", TERMINATING)], ["20.0.0.2"], ["10.1.0.1", "20.0.0.2"]),
    ],
)
async def test_affinity(
    source: ScriptedSource, local: local_services.LocalServices, cache: mesh_cache.MeshCache,
    affinity: str, local_endpoints: list[tuple[str, dict[str, bool]]], remote: list[str], selected: list[str],
) -> None:
    source.upsert(global_service(affinity))
    source.upsert(endpoint_slice("s1", local_endpoints))
    await source.settled()
    if remote:
        cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", remote_service("cluster-b", 2, *remote))
    resolution = resolved(cache, local)
    assert resolution.affinity is Affinity(affinity)
    assert ips(resolution.backends) == selected
    all_local = [ip for ip, conditions in local_endpoints if conditions is not NOT_READY]
    assert ips(resolution.all_backends) == sorted(all_local + remote)


async def test_local_affinity_fails_over_when_local_backends_disappear(
    source: ScriptedSource, local: local_services.LocalServices, cache: mesh_cache.MeshCache
) -> None:
    """reference §8 service-affinity.txtar: deleting the local EndpointSlice switches to the remote backend."""
    source.upsert(global_service("local"))
    source.upsert(endpoint_slice("s1", [("10.1.0.1", READY)]))
    await source.settled()
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", remote_service("cluster-b", 2, "20.0.0.2"))
    assert ips(resolved(cache, local).backends) == ["10.1.0.1"]

    source.delete(endpoint_slice("s1", []))
    await source.settled()
    assert ips(resolved(cache, local).backends) == ["20.0.0.2"]

    source.upsert(global_service())  # the affinity annotation removed: both again
    source.upsert(endpoint_slice("s1", [("10.1.0.1", READY)]))
    await source.settled()
    assert ips(resolved(cache, local).backends) == ["10.1.0.1", "20.0.0.2"]


def test_peers_only_mode(cache: mesh_cache.MeshCache) -> None:
    peers_only = resolver(cache, None)
    assert peers_only.resolve(NS, NAME) is None
    assert not peers_only.has_namespace(NS)
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-b", f"{NS}/{NAME}", remote_service("cluster-b", 2, "20.0.0.2"))
    cache.upsert(mesh_cache.Kind.SERVICES, "cluster-c", f"{NS}/{NAME}",
                 remote_service("cluster-c", 3, "30.0.0.3", shared=False))
    resolution = peers_only.resolve(NS, NAME)
    assert resolution is not None
    assert (resolution.global_, resolution.affinity, resolution.frontends) == (True, Affinity.NONE, ())
    assert ips(resolution.backends) == ["20.0.0.2"]
    assert peers_only.has_namespace(NS)
    assert "peers-only" in repr(peers_only)


def test_select_is_pure() -> None:
    active = services.Backend("10.1.0.1", 80, "TCP", "http", LOCAL, LOCAL_ID, True)
    terminating = services.Backend("10.1.0.2", 80, "TCP", "http", LOCAL, LOCAL_ID, True, BackendState.TERMINATING)
    remote = services.Backend("20.0.0.2", 80, "TCP", "http", "cluster-b", 2, False)
    assert services.select(Affinity.LOCAL, (active, terminating), (remote,)) == (active, terminating)
    assert services.select(Affinity.LOCAL, (terminating,), (remote,)) == (terminating, remote)
    assert services.select(Affinity.REMOTE, (active,), (remote,)) == (remote,)
    assert services.select(Affinity.NONE, (active,), (remote,)) == (active, remote)
