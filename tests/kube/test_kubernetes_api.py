"""Tests of the Kubernetes API source against a fake kube-apiserver that speaks the real list/watch protocol.

The real kube-apiserver cannot be installed here, so `FakeAPIServer` stands in for it: HTTP/1.1 from
`http.server` in threads on 127.0.0.1:0, serving paginated lists (`limit`/`continue` over one snapshot),
chunked watch streams of `{"type": ..., "object": ...}` lines resumed from `resourceVersion`, BOOKMARK
events, 410 Gone for a compacted resourceVersion (as a watch ERROR event or as the HTTP status), Status
errors (404 for a CRD that is not installed, 403), and the `metadata.name=NAME` field selector on lists and
watches. The source reaches it through a kubeconfig file and the unmodified official client. Its state
(`FakeCluster`) outlives a server, so a restart keeps the history. Collections are served by path, so a
namespaced collection (the Secrets of one namespace) is a Resource of its own.

Covered: initial list and SYNCED, pagination, watch events and object shape, bookmarks advancing the resume
point, 410 → relist with deletes only for objects that vanished during the gap (both forms), API server
restart, retry of API errors, an absent ServiceExport CRD installed later, cancellation while a watch is idle
and while the sink is stalled, a bad kubeconfig, a source scoped to one namespace and name (field selector on
every request; kinds that cannot be read in a scope refused). Not covered: TLS and authentication (the client's own) and
in-cluster configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import http.server
import json
import logging
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from clustermesh import kube
from clustermesh.errors import ConfigError
from clustermesh.kube import kubernetes_api

if TYPE_CHECKING:
    from conftest import Recorder

Start = Callable[[kube.Source, kube.EventSink], Awaitable["asyncio.Task[None]"]]
UPSERT, DELETE = kube.EventType.UPSERT, kube.EventType.DELETE
DEADLINE = 10.0
FAST = kubernetes_api.KubernetesAPIOptions(backoff_initial=0.05, backoff_maximum=0.2, absent_recheck=0.1)


@dataclasses.dataclass(frozen=True)
class Resource:
    """A collection the fake serves: its path and the kind and apiVersion of its objects."""

    path: str
    api_version: str
    kind: str
    builtin: bool = True


NODES = Resource("/api/v1/nodes", "v1", "Node")
SERVICES = Resource("/api/v1/services", "v1", "Service")
SERVICE_EXPORTS = Resource(
    "/apis/multicluster.x-k8s.io/v1alpha1/serviceexports",
    "multicluster.x-k8s.io/v1alpha1",
    "ServiceExport",
    builtin=False,
)
CLUSTER_MESHES = Resource("/apis/cilium.io/v2alpha1/clustermeshes", "cilium.io/v2alpha1", "ClusterMesh", builtin=False)
PEER_NAMESPACE = "clustermesh-peers"
PEER_SECRETS = Resource(f"/api/v1/namespaces/{PEER_NAMESPACE}/secrets", "v1", "Secret")
RESOURCES = {
    resource.path: resource for resource in (NODES, SERVICES, SERVICE_EXPORTS, CLUSTER_MESHES, PEER_SECRETS)
}


def _field_selector(query: dict[str, str]) -> Callable[[dict[str, Any]], bool]:
    """Which objects a request's fieldSelector selects; the fake knows `metadata.name=NAME`, what sources send."""
    selector = query.get("fieldSelector")
    if not selector:
        return lambda obj: True
    field, _, value = selector.partition("=")
    assert field == "metadata.name", f"the fake does not support fieldSelector={selector}"
    return lambda obj: bool(obj["metadata"]["name"] == value)


class FakeCluster:
    """The state behind the fake API server: objects, one resourceVersion counter, and the watch history.

    Every field is guarded by `changed` (re-entrant, so `gap` can group changes); watchers wait on it.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition(threading.RLock())
        self.resource_version = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {path: {} for path in RESOURCES}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.compacted = 0
        self.snapshots: dict[tuple[int, str], list[dict[str, Any]]] = {}
        self.bookmarks = 0
        self.bookmarks_sent = 0
        self.watch_generation = 0
        self.active_watches = 0
        self.expired_as_http = False
        self.missing: set[str] = set()
        self.failures: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def put(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object; returns it as stored (with kind, apiVersion, resourceVersion)."""
        with self.changed:
            self.resource_version += 1
            stored = copy.deepcopy(obj)
            stored["kind"], stored["apiVersion"] = resource.kind, resource.api_version
            metadata = stored["metadata"]
            metadata["resourceVersion"] = str(self.resource_version)
            metadata.setdefault("creationTimestamp", "2024-05-06T07:08:09Z")
            key = (metadata.get("namespace", ""), metadata["name"])
            change = "MODIFIED" if key in self.objects[resource.path] else "ADDED"
            self.objects[resource.path][key] = stored
            self.history.append((self.resource_version, resource.path, change, stored))
            self.changed.notify_all()
            return copy.deepcopy(stored)

    def delete(self, resource: Resource, name: str, namespace: str = "") -> None:
        with self.changed:
            self.resource_version += 1
            gone = self.objects[resource.path].pop((namespace, name))
            gone = copy.deepcopy(gone)
            gone["metadata"]["resourceVersion"] = str(self.resource_version)
            self.history.append((self.resource_version, resource.path, "DELETED", gone))
            self.changed.notify_all()

    def compact(self) -> int:
        """Forget the history up to now: watching from an older resourceVersion gets 410 Gone."""
        with self.changed:
            self.compacted = self.resource_version
            self.history = [entry for entry in self.history if entry[0] > self.compacted]
            self.changed.notify_all()
            return self.compacted

    @contextlib.contextmanager
    def gap(self) -> Iterator[None]:
        """Changes made inside are compacted before any watcher sees them, as during a long disconnect."""
        with self.changed:
            yield
            self.compact()

    def bookmark(self) -> None:
        """Have every watch that allows bookmarks send one at the current resourceVersion."""
        with self.changed:
            self.bookmarks += 1
            self.changed.notify_all()

    def end_watches(self) -> None:
        """End every open watch stream normally, as the API server does at timeoutSeconds."""
        with self.changed:
            self.watch_generation += 1
            self.changed.notify_all()

    def record(self, path: str, query: dict[str, str]) -> None:
        with self.changed:
            self.requests.append((path, query))

    def lists(self, resource: Resource) -> list[dict[str, str]]:
        with self.changed:
            return [query for path, query in self.requests if path == resource.path and "watch" not in query]

    def watches(self, resource: Resource) -> list[dict[str, str]]:
        with self.changed:
            return [query for path, query in self.requests if path == resource.path and "watch" in query]


class _HTTPServer(http.server.ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them.
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], cluster: FakeCluster) -> None:
        super().__init__(address, _Handler)
        self.cluster = cluster
        self.stopping = False
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr lines."""

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {name: values[-1] for name, values in urllib.parse.parse_qs(url.query).items()}
        cluster = self.server.cluster
        cluster.record(url.path, query)
        resource = RESOURCES.get(url.path)
        with cluster.changed:
            missing = url.path in cluster.missing
            failure = cluster.failures.get(url.path)
        if resource is None or missing:
            self._status(404, "NotFound", "the server could not find the requested resource")
        elif failure is not None:
            self._status(failure, "Forbidden", f'cannot list resource "{resource.kind}"')
        elif query.get("watch") in ("true", "1"):
            self._watch(resource, query)
        else:
            self._list(resource, query)

    def _send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        self._send_json(code, {**status, "message": message, "reason": reason, "code": code})

    def _list(self, resource: Resource, query: dict[str, str]) -> None:
        cluster = self.server.cluster
        limit = int(query.get("limit", "0"))
        selected = _field_selector(query)
        collection = f"{resource.path}?{query.get('fieldSelector', '')}"
        with cluster.changed:
            if "continue" in query:
                snapshot, offset = (int(part) for part in query["continue"].split(":"))
                if snapshot < cluster.compacted:
                    self._status(410, "Expired", "The provided continue parameter is too old")
                    return
                items = cluster.snapshots[(snapshot, collection)]
            else:
                snapshot, offset = cluster.resource_version, 0
                items = [
                    copy.deepcopy(obj) for _, obj in sorted(cluster.objects[resource.path].items()) if selected(obj)
                ]
                cluster.snapshots[(snapshot, collection)] = items
        end = offset + limit if limit else len(items)
        metadata = {"resourceVersion": str(snapshot)}
        if end < len(items):
            metadata["continue"] = f"{snapshot}:{end}"
        page = [copy.deepcopy(item) for item in items[offset:end]]
        if resource.builtin:
            # Typed lists of built-in kinds carry kind and apiVersion on the list only.
            for item in page:
                del item["kind"], item["apiVersion"]
        list_kind = f"{resource.kind}List"
        self._send_json(
            200, {"kind": list_kind, "apiVersion": resource.api_version, "metadata": metadata, "items": page}
        )

    def _watch(self, resource: Resource, query: dict[str, str]) -> None:
        cluster = self.server.cluster
        self._position = int(query["resourceVersion"])
        self._selected = _field_selector(query)
        bookmarks_allowed = query.get("allowWatchBookmarks") == "true"
        self._deadline = time.monotonic() + int(query.get("timeoutSeconds", "1800"))
        with cluster.changed:
            if self._position < cluster.compacted and cluster.expired_as_http:
                self._status(410, "Expired", f"too old resource version: {self._position}")
                return
            self._generation, self._bookmarks_seen = cluster.watch_generation, cluster.bookmarks
            cluster.active_watches += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                lines: list[dict[str, Any]]
                with cluster.changed:
                    # Short waits so that a client hanging up is noticed, as the real server does.
                    if not cluster.changed.wait_for(self._has_news, timeout=0.05):
                        lines, ended = [], self._client_gone()
                    else:
                        lines, ended = self._news(resource, bookmarks_allowed)
                for line in lines:
                    self._chunk(json.dumps(line).encode() + b"\n")
                    if line["type"] == "BOOKMARK":
                        with cluster.changed:
                            cluster.bookmarks_sent += 1
                if ended:
                    break
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
        finally:
            with cluster.changed:
                cluster.active_watches -= 1

    def _has_news(self) -> bool:
        cluster = self.server.cluster
        return (
            self.server.stopping
            or cluster.watch_generation != self._generation
            or cluster.resource_version > self._position
            or cluster.bookmarks != self._bookmarks_seen
            or time.monotonic() >= self._deadline
        )

    def _news(self, resource: Resource, bookmarks_allowed: bool) -> tuple[list[dict[str, Any]], bool]:
        """The lines to send now and whether the stream ends after them; called holding the lock."""
        cluster = self.server.cluster
        if self.server.stopping or cluster.watch_generation != self._generation:
            return [], True
        if time.monotonic() >= self._deadline:
            return [], True
        if self._position < cluster.compacted:
            if cluster.expired_as_http:
                # The stream just ends; the client's next watch request gets the HTTP 410.
                return [], True
            message = f"too old resource version: {self._position} ({cluster.compacted})"
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
            return [{"type": "ERROR", "object": {**status, "reason": "Expired", "code": 410}}], True
        lines: list[dict[str, Any]] = [
            {"type": change, "object": obj}
            for version, path, change, obj in cluster.history
            if version > self._position and path == resource.path and self._selected(obj)
        ]
        self._position = cluster.resource_version
        if cluster.bookmarks != self._bookmarks_seen:
            self._bookmarks_seen = cluster.bookmarks
            if bookmarks_allowed:
                metadata = {"resourceVersion": str(self._position)}
                bookmark = {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata}
                lines.append({"type": "BOOKMARK", "object": bookmark})
        return lines, False

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


class FakeAPIServer:
    """A kube-apiserver stand-in serving `cluster` on 127.0.0.1 (a free port, or `port` to come back on)."""

    def __init__(self, cluster: FakeCluster, port: int = 0) -> None:
        self._httpd = _HTTPServer(("127.0.0.1", port), cluster)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake apiserver :{self.port}",
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving: end watches, cut every connection, join every thread. Blocking."""
        cluster = self._httpd.cluster
        with cluster.changed:
            self._httpd.stopping = True
            cluster.changed.notify_all()
        self._httpd.shutdown()
        with self._httpd.connections_lock:
            for connection in self._httpd.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join()


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig whose current context is the fake server, over plain HTTP without credentials."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "spec": {"podCIDR": "10.0.0.0/24"}}


def node_key(name: str) -> kube.ObjectKey:
    return kube.ObjectKey(kube.Kind.NODE, "", name)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll a condition that lives behind the fake server's threads until it holds (DEADLINE at most)."""
    async with asyncio.timeout(DEADLINE):
        while not predicate():  # noqa: ASYNC110 - no event announces these conditions to this loop
            await asyncio.sleep(0.01)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def server(cluster: FakeCluster) -> Iterator[FakeAPIServer]:
    fake = FakeAPIServer(cluster)
    yield fake
    fake.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, server: FakeAPIServer) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", server.url)


def source_for(
    kubeconfig: Path, *kinds: kube.Kind, options: kubernetes_api.KubernetesAPIOptions = FAST
) -> kubernetes_api.KubernetesAPISource:
    return kubernetes_api.KubernetesAPISource(kubeconfig, kinds=kinds or [kube.Kind.NODE], options=options)


async def test_initial_list_is_delivered_as_plain_objects_then_synced(
    cluster: FakeCluster, kubeconfig: Path, recorder: Recorder, start: Start
) -> None:
    stored_node = cluster.put(NODES, node("node-a", zone="z1"))
    stored_service = cluster.put(SERVICES, {"metadata": {"name": "web", "namespace": "shop"}, "spec": {}})
    source = source_for(kubeconfig, kube.Kind.NODE, kube.Kind.SERVICE)

    await start(source, recorder)

    assert recorder.items[-1] is kube.SYNCED
    assert recorder.items.count(kube.SYNCED) == 1
    # Exactly what the server stored: camelCase keys, and kind/apiVersion restored on typed-list items.
    assert recorder.state() == {
        node_key("node-a"): stored_node,
        kube.ObjectKey(kube.Kind.SERVICE, "shop", "web"): stored_service,
    }
    [node_list] = cluster.lists(NODES)
    assert node_list["limit"] == "500"
    assert "resourceVersion" not in node_list, "a relist must read the latest state, not a cache"


async def test_lists_are_paginated(
    cluster: FakeCluster, kubeconfig: Path, recorder: Recorder, start: Start
) -> None:
    for index in range(5):
        cluster.put(NODES, node(f"node-{index}"))
    options = dataclasses.replace(FAST, page_size=2)

    await start(source_for(kubeconfig, options=options), recorder)

    assert set(recorder.state()) == {node_key(f"node-{index}") for index in range(5)}
    pages = cluster.lists(NODES)
    assert [page.get("continue") for page in pages] == [None, "105:2", "105:4"]
    assert all(page["limit"] == "2" for page in pages)


async def test_watch_events_become_upserts_and_deletes(
    cluster: FakeCluster, kubeconfig: Path, recorder: Recorder, start: Start
) -> None:
    cluster.put(NODES, node("node-a"))
    await start(source_for(kubeconfig), recorder)
    listed_at = cluster.lists(NODES)[0]

    added = cluster.put(NODES, node("node-b"))
    assert (await recorder.wait_for_event(UPSERT, node_key("node-b"))).obj == added
    modified = cluster.put(NODES, node("node-b", role="edge"))
    await recorder.wait_for(lambda: recorder.state().get(node_key("node-b")) == modified)
    cluster.delete(NODES, "node-b")
    deleted = await recorder.wait_for_event(DELETE, node_key("node-b"))

    assert deleted.obj["metadata"]["labels"] == {"role": "edge"}
    [watch] = cluster.watches(NODES)
    assert watch["resourceVersion"] == "101"
    assert watch["allowWatchBookmarks"] == "true"
    assert int(watch["timeoutSeconds"]) == FAST.watch_timeout
    assert "resourceVersion" not in listed_at


async def test_a_bookmark_advances_the_resume_point(
    cluster: FakeCluster, kubeconfig: Path, recorder: Recorder, start: Start
) -> None:
    cluster.put(NODES, node("node-a"))
    await start(source_for(kubeconfig), recorder)
    await eventually(lambda: cluster.active_watches == 1)
    for index in range(3):
        cluster.put(SERVICES, {"metadata": {"name": f"svc-{index}", "namespace": "default"}})

    cluster.bookmark()
    await eventually(lambda: cluster.bookmarks_sent == 1)
    # Without the bookmark the source would resume from 101, now compacted: it would have to relist.
    compacted = cluster.compact()
    cluster.end_watches()
    await eventually(lambda: len(cluster.watches(NODES)) == 2)

    assert cluster.watches(NODES)[1]["resourceVersion"] == str(compacted) == "104"
    cluster.put(NODES, node("node-b"))
    await recorder.wait_for_event(UPSERT, node_key("node-b"))
    assert len(cluster.lists(NODES)) == 1


@pytest.mark.parametrize("expired_as_http", [False, True], ids=["error-event", "http-status"])
async def test_410_gone_relists_and_sweeps_only_what_vanished(
    cluster: FakeCluster,
    kubeconfig: Path,
    recorder: Recorder,
    start: Start,
    expired_as_http: bool,
) -> None:
    cluster.expired_as_http = expired_as_http
    for name in ("node-a", "node-b", "node-c"):
        cluster.put(NODES, node(name))
    await start(source_for(kubeconfig), recorder)
    await eventually(lambda: cluster.active_watches == 1)
    mark = recorder.mark()

    with cluster.gap():
        cluster.delete(NODES, "node-b")
        changed = cluster.put(NODES, node("node-c", changed="yes"))
        cluster.put(NODES, node("node-d"))
    await eventually(lambda: len(cluster.lists(NODES)) == 2)
    # A change after the relist is delivered after everything the relist caused.
    cluster.put(NODES, node("node-z"))
    await recorder.wait_for_event(UPSERT, node_key("node-z"))

    assert recorder.since(mark) == [
        (UPSERT, "Node/node-c"),
        (UPSERT, "Node/node-d"),
        (DELETE, "Node/node-b"),
        (UPSERT, "Node/node-z"),
    ]
    assert recorder.state()[node_key("node-c")] == changed
    assert recorder.items.count(kube.SYNCED) == 1
    if expired_as_http:
        assert cluster.watches(NODES)[1]["resourceVersion"] == "103", "resumed with the old version first"


async def test_reconnects_after_an_api_server_restart_and_resumes_the_watch(
    cluster: FakeCluster,
    server: FakeAPIServer,
    kubeconfig: Path,
    recorder: Recorder,
    start: Start,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="clustermesh.kube.kubernetes_api")
    cluster.put(NODES, node("node-a"))
    await start(source_for(kubeconfig), recorder)
    await eventually(lambda: cluster.active_watches == 1)

    await asyncio.to_thread(server.stop)
    cluster.put(NODES, node("node-b"))
    cluster.delete(NODES, "node-a")
    await eventually(lambda: "event=kube.watch.failed kind=Node" in caplog.text)
    restarted = FakeAPIServer(cluster, port=server.port)
    try:
        await recorder.wait_for_event(DELETE, node_key("node-a"))
        assert set(recorder.state()) == {node_key("node-b")}
        assert len(cluster.lists(NODES)) == 1, "resumed from the resourceVersion, no relist"
    finally:
        await asyncio.to_thread(restarted.stop)


async def test_api_errors_are_retried_until_they_clear(
    cluster: FakeCluster, kubeconfig: Path, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clustermesh.kube.kubernetes_api")
    cluster.put(NODES, node("node-a"))
    cluster.failures[NODES.path] = 403
    ready = asyncio.Event()
    task = asyncio.create_task(source_for(kubeconfig).run(recorder, ready=ready))
    try:
        await eventually(lambda: caplog.text.count("event=kube.list.failed kind=Node") >= 2)
        assert "hint=" in caplog.text
        assert recorder.items == [], "nothing is delivered, or declared synced, before a list succeeds"

        with cluster.changed:
            del cluster.failures[NODES.path]
        async with asyncio.timeout(DEADLINE):
            await ready.wait()
        assert set(recorder.state()) == {node_key("node-a")}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_absent_service_export_crd_counts_as_empty_until_installed(
    cluster: FakeCluster,
    kubeconfig: Path,
    recorder: Recorder,
    start: Start,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="clustermesh.kube.kubernetes_api")
    cluster.missing.add(SERVICE_EXPORTS.path)
    cluster.put(NODES, node("node-a"))

    await start(source_for(kubeconfig, kube.Kind.NODE, kube.Kind.SERVICE_EXPORT), recorder)
    assert set(recorder.state()) == {node_key("node-a")}
    assert "event=kube.kind.absent kind=ServiceExport" in caplog.text

    with cluster.changed:
        cluster.missing.clear()
        export = cluster.put(SERVICE_EXPORTS, {"metadata": {"name": "web", "namespace": "shop"}})
    key = kube.ObjectKey(kube.Kind.SERVICE_EXPORT, "shop", "web")
    assert (await recorder.wait_for_event(UPSERT, key)).obj == export


async def test_cancellation_interrupts_an_idle_watch_promptly(
    cluster: FakeCluster, kubeconfig: Path, recorder: Recorder, start: Start
) -> None:
    options = dataclasses.replace(FAST, watch_timeout=300)
    task = await start(source_for(kubeconfig, kube.Kind.NODE, kube.Kind.SERVICE, options=options), recorder)
    await eventually(lambda: cluster.active_watches == 2)

    task.cancel()
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await task
    await eventually(lambda: cluster.active_watches == 0)


async def test_cancellation_while_the_sink_is_stalled(cluster: FakeCluster, kubeconfig: Path) -> None:
    for index in range(20):
        cluster.put(NODES, node(f"node-{index}"))
    called = asyncio.Event()

    async def stalled_sink(item: kube.SourceItem) -> None:
        called.set()
        await asyncio.Event().wait()

    options = dataclasses.replace(FAST, max_pending=1)
    task = asyncio.create_task(source_for(kubeconfig, kube.Kind.NODE, options=options).run(stalled_sink))
    async with asyncio.timeout(DEADLINE):
        await called.wait()
    for index in range(20):
        cluster.put(NODES, node(f"node-{index}", changed="yes"))

    task.cancel()
    async with asyncio.timeout(2):
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_unusable_kubeconfig_is_a_config_error(tmp_path: Path, recorder: Recorder) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")

    with pytest.raises(ConfigError, match="cannot load the Kubernetes configuration"):
        await source_for(kubeconfig).run(recorder)


def peer_secret(name: str, value: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": PEER_NAMESPACE}, "type": "Opaque", "data": {"v": value}}


async def test_a_source_scoped_to_one_name_reads_that_object_only(
    cluster: FakeCluster, kubeconfig: Path, recorder: Recorder, start: Start
) -> None:
    cluster.put(PEER_SECRETS, peer_secret("wanted", "MQ=="))
    cluster.put(PEER_SECRETS, peer_secret("other", "MQ=="))
    source = kubernetes_api.KubernetesAPISource(
        kubeconfig, kinds=[kube.ConfigKind.SECRET], namespace=PEER_NAMESPACE, name="wanted", options=FAST
    )
    key = kube.ObjectKey(kube.ConfigKind.SECRET, PEER_NAMESPACE, "wanted")

    await start(source, recorder)
    assert set(recorder.state()) == {key}

    cluster.put(PEER_SECRETS, peer_secret("other", "Mg=="))
    changed = cluster.put(PEER_SECRETS, peer_secret("wanted", "Mg=="))
    await recorder.wait_for(lambda: recorder.state().get(key) == changed)
    cluster.delete(PEER_SECRETS, "wanted", PEER_NAMESPACE)
    await recorder.wait_for_event(DELETE, key)

    assert {item.key for item in recorder.events()} == {key}
    requests = cluster.lists(PEER_SECRETS) + cluster.watches(PEER_SECRETS)
    assert len(requests) >= 2, "a list, then a watch"
    # What RBAC needs to authorize the requests by resourceNames.
    assert all(query["fieldSelector"] == "metadata.name=wanted" for query in requests), requests


@pytest.mark.parametrize(
    ("kind", "namespace", "name"),
    [
        (kube.ConfigKind.SECRET, None, None),  # never every Secret of a cluster
        (kube.Kind.NODE, "default", None),  # not readable one namespace at a time
        (kube.ConfigKind.SECRET, None, "wanted"),  # a name needs its namespace
        (kube.ConfigKind.SECRET, PEER_NAMESPACE, ""),
    ],
)
def test_a_kind_outside_its_scope_is_a_programming_error(
    kind: kube.AnyKind, namespace: str | None, name: str | None
) -> None:
    with pytest.raises(ValueError):
        kubernetes_api.KubernetesAPISource(None, kinds=[kind], namespace=namespace, name=name)
