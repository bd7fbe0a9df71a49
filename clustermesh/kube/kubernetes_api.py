"""The Kubernetes API source (`kubernetes[:KUBECONFIG]`): objects listed and watched from a live API server.

Each requested kind gets a reflector, a thread running the official (blocking) client's list+watch loop:
list (paginated, one consistent snapshot), then watch from the list's resourceVersion with bookmarks, keeping
the resourceVersion of every event and BOOKMARK so a broken or timed-out watch resumes where it stopped. A 410
Gone (HTTP status, or an ERROR event with code 410) means that resourceVersion is compacted: the reflector
lists again and the emitter delivers only the difference (mark-and-sweep), so objects deleted during the gap
get their DELETE and unchanged ones produce nothing. Any other failure is logged and retried after a jittered
exponential backoff (clustermesh.aio.backoff); nothing is ever given up on. ServiceExport and ClusterMesh are
served by CRDs that may be absent: a 404 means "none" (delivered as an empty, listed kind) and the reflector
checks again every `absent_recheck` seconds.

A source reads every namespace by default. Given a `namespace`, it reads that one only, and given a `name` too,
only the object of that name, with a `metadata.name` field selector on both the list and the watch: RBAC
authorizes such requests by `resourceNames`, so a Role can limit a reader to the objects it is pointed at.
Secrets can only be read that way, one namespace at a time: no source ever lists every Secret of a cluster.

Responses are requested with `_preload_content=False` and decoded as raw JSON, which is faster than the
client's model classes and keeps the objects exactly as the API server wrote them (camelCase keys), the same
shape a manifest file gives. Only this module and clustermesh.kube.object_api (single objects, for the
trust exchange) call the Kubernetes API.

Threads and the event loop meet in `_Channel`: reflectors hand messages over with `call_soon_threadsafe`;
at most `max_pending` messages are in flight, so when the sink is slow the reflectors stop reading (TCP then
pushes back on the API server) instead of buffering without bound. On cancellation `run()` sets the stop
flag, shuts down the sockets of in-flight responses so blocked reads return at once, and joins every thread.
A request still waiting for response headers from a hung API server is bounded by its read timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import urllib3
from kubernetes import client, config

from clustermesh.aio import backoff
from clustermesh.errors import ConfigError, DecodeError
from clustermesh.kube import emitter, errors, event, objects

log = logging.getLogger(__name__)

# A watch stream is given this much longer than its server-side timeoutSeconds before a silent connection
# counts as hung: the API server ends the watch (sending a bookmark ~2s before) at timeoutSeconds.
_WATCH_READ_MARGIN = 5.0

_Lister = Callable[..., Any]

# The one table from kinds to API endpoints. The *_for_all_namespaces calls watch every namespace at once.
_LISTERS: dict[objects.AnyKind, Callable[[client.ApiClient], _Lister]] = {
    objects.Kind.NODE: lambda api: client.CoreV1Api(api).list_node,
    objects.Kind.NAMESPACE: lambda api: client.CoreV1Api(api).list_namespace,
    objects.Kind.POD: lambda api: client.CoreV1Api(api).list_pod_for_all_namespaces,
    objects.Kind.SERVICE: lambda api: client.CoreV1Api(api).list_service_for_all_namespaces,
    objects.Kind.ENDPOINT_SLICE: lambda api: (
        client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces
    ),
    objects.Kind.SERVICE_EXPORT: lambda api: functools.partial(
        client.CustomObjectsApi(api).list_cluster_custom_object,
        "multicluster.x-k8s.io",
        "v1alpha1",
        "serviceexports",
    ),
    # Cluster-scoped (clustermesh.connect writes it; its CRD is clustermesh/schemas/clustermesh-crd.json).
    objects.ConfigKind.CLUSTER_MESH: lambda api: functools.partial(
        client.CustomObjectsApi(api).list_cluster_custom_object,
        "cilium.io",
        "v2alpha1",
        "clustermeshes",
    ),
}
# The kinds a source may read in one namespace, and how.
_NAMESPACED_LISTERS: dict[objects.AnyKind, Callable[[client.ApiClient, str], _Lister]] = {
    objects.ConfigKind.SECRET: lambda api, namespace: functools.partial(
        client.CoreV1Api(api).list_namespaced_secret, namespace
    ),
}
# Kinds served by a CRD that a cluster may not have installed: 404 means "none".
_OPTIONAL: frozenset[objects.AnyKind] = frozenset({objects.Kind.SERVICE_EXPORT, objects.ConfigKind.CLUSTER_MESH})


@dataclasses.dataclass(frozen=True, slots=True)
class KubernetesAPIOptions:
    """Timeouts, paging, retry and buffering of the Kubernetes API source."""

    connect_timeout: float = 5.0
    watch_timeout: int = 30
    """Server-side timeoutSeconds of one watch request; the watch is then resumed from its resourceVersion."""
    list_timeout: float = 30.0
    """Read timeout of one list page."""
    page_size: int = 500
    backoff_initial: float = 0.5
    backoff_maximum: float = 30.0
    absent_recheck: float = 60.0
    """How often to check whether the CRD of an absent optional kind has been installed."""
    max_pending: int = 256
    """Messages read from the API but not yet delivered, over all kinds, before reflectors stop reading."""

    def __post_init__(self) -> None:
        if min(self.connect_timeout, self.watch_timeout, self.list_timeout, self.absent_recheck) <= 0:
            raise ValueError("Kubernetes API timeouts and intervals must be positive")
        if self.page_size < 1 or self.max_pending < 1:
            raise ValueError("page_size and max_pending must be at least 1")


class KubernetesAPISource:
    """Objects of `kinds` listed and watched from the API server that `kubeconfig` points at.

    Without a kubeconfig, the in-cluster service account configuration is used, else the default kubeconfig.
    With `namespace`, only that namespace is read, and with `name` too, only objects of that name (see the
    module docstring). A kind that cannot be read in the asked scope (every namespace, or one) is a
    programming error: ValueError.
    """

    def __init__(
        self,
        kubeconfig: Path | None = None,
        *,
        kinds: Iterable[objects.AnyKind | str],
        namespace: str | None = None,
        name: str | None = None,
        options: KubernetesAPIOptions | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.kinds = objects.parse_kinds(kinds)
        self.namespace = namespace
        self.name = name
        self.options = options if options is not None else KubernetesAPIOptions()
        listers = _LISTERS if namespace is None else _NAMESPACED_LISTERS
        unsupported = sorted(kind for kind in self.kinds if kind not in listers)
        if unsupported:
            scope = "across namespaces" if namespace is None else "one namespace at a time"
            raise ValueError(f"{', '.join(unsupported)} cannot be read {scope}")
        if name is not None and (not name or namespace is None):
            raise ValueError("a name selects objects in one namespace: give a non-empty name and a namespace")
        self._running = False

    def __repr__(self) -> str:
        where = self.kubeconfig if self.kubeconfig is not None else "default configuration"
        scope = "".join(f" {field}={value}" for field, value in (("namespace", self.namespace), ("name", self.name))
                        if value is not None)
        return f"<KubernetesAPISource {where} kinds={','.join(sorted(self.kinds))}{scope}>"

    async def run(self, sink: event.EventSink, *, ready: asyncio.Event | None = None) -> None:
        """Deliver every requested kind's objects, SYNCED once all are listed, then changes; until cancelled.

        Sets `ready` after SYNCED was delivered. API errors are retried forever and never raised. Raises
        ConfigError if the Kubernetes configuration cannot be loaded, RuntimeError if already running.
        Cancellation stops and joins the reflector threads before it propagates.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            configuration = await asyncio.to_thread(load_configuration, self.kubeconfig)
            with client.ApiClient(configuration) as api_client:
                await self._run(api_client, emitter.Emitter(sink), ready)
        finally:
            self._running = False

    async def _run(
        self, api_client: client.ApiClient, out: emitter.Emitter, ready: asyncio.Event | None
    ) -> None:
        inbox: asyncio.Queue[_Message] = asyncio.Queue()
        channel = _Channel(asyncio.get_running_loop(), inbox, self.options.max_pending)
        threads: list[threading.Thread] = []
        try:
            for kind in sorted(self.kinds):
                reflector = _Reflector(kind, self._lister(kind, api_client), self.options, channel,
                                       scope=self._scope())
                thread = threading.Thread(target=reflector.run, name=f"kube reflector {kind}{self._scope()}",
                                          daemon=True)
                thread.start()
                threads.append(thread)
            unlisted = set(self.kinds)
            while True:
                message = await inbox.get()
                if isinstance(message, _Exited):
                    threads.remove(message.thread)
                    message.thread.join()
                    raise message.error or RuntimeError(f"the {message.kind} reflector stopped unexpectedly")
                if isinstance(message, _Listed):
                    await out.replace(message.kind, message.objects)
                    unlisted.discard(message.kind)
                    if not unlisted and not out.synced:
                        await out.mark_synced()
                        if ready is not None:
                            ready.set()
                elif message.type is event.EventType.UPSERT:
                    await out.upsert(message.key, message.obj)
                else:
                    await out.delete(message.key, message.obj)
                channel.delivered()
        finally:
            channel.stop(len(threads))
            await _join(inbox, threads)

    def _scope(self) -> str:
        """The scope for log lines and thread names: empty for every namespace, else ` namespace=NS [name=N]`."""
        if self.namespace is None:
            return ""
        return f" namespace={self.namespace}" + (f" name={self.name}" if self.name is not None else "")

    def _lister(self, kind: objects.AnyKind, api_client: client.ApiClient) -> _Lister:
        """The list (and, with watch=True, watch) call of `kind` in this source's scope."""
        if self.namespace is None:
            return _LISTERS[kind](api_client)
        lister = _NAMESPACED_LISTERS[kind](api_client, self.namespace)
        if self.name is not None:
            lister = functools.partial(lister, field_selector=f"metadata.name={self.name}")
        return lister


async def _join(inbox: asyncio.Queue[_Message], threads: list[threading.Thread]) -> None:
    """Wait until every thread has posted its exit, even across a second cancellation, then join them."""
    cancelled = False
    while threads:
        try:
            message = await inbox.get()
        except asyncio.CancelledError:
            cancelled = True
            continue
        if isinstance(message, _Exited):
            threads.remove(message.thread)
            # Exit is the thread's last act, so this join returns at once.
            message.thread.join()
    if cancelled:
        raise asyncio.CancelledError


def load_configuration(kubeconfig: Path | None) -> client.Configuration:
    """A fresh client configuration (never the library's global default). Blocking."""
    configuration = client.Configuration()
    where = str(kubeconfig) if kubeconfig is not None else "the in-cluster service account or ~/.kube/config"
    try:
        if kubeconfig is not None:
            config.load_kube_config(
                config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
            )
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration, persist_config=False)
    except Exception as exc:  # the loaders raise ConfigException, OSError, YAML and key errors alike
        raise ConfigError(f"cannot load the Kubernetes configuration from {where}: {exc}") from exc
    return configuration


class _Stopped(Exception):
    """Raised in a reflector thread when the source is stopping."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Listed:
    """A kind's complete current state, from a list."""

    kind: objects.AnyKind
    objects: dict[objects.ObjectKey, dict[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Changed:
    """One watch event."""

    type: event.EventType
    key: objects.ObjectKey
    obj: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Exited:
    """A reflector thread's last message: why it ended (None when it was stopped)."""

    kind: objects.AnyKind
    thread: threading.Thread
    error: BaseException | None


_Message = _Listed | _Changed | _Exited


class _Channel:
    """Reflector threads to the source's task: bounded hand-off, the stop flag, and interruptible responses.

    `post`, `sleep` and `stream` are called from reflector threads; `delivered` and `stop` from the loop.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[_Message], capacity: int
    ) -> None:
        self._loop = loop
        self._inbox = inbox
        self._credits = threading.Semaphore(capacity)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._streams: set[urllib3.BaseHTTPResponse] = set()  # guarded by _lock

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def post(self, message: _Listed | _Changed) -> None:
        """Hand a message to the loop; blocks while `capacity` are undelivered; raises _Stopped."""
        if self.stopping:
            raise _Stopped
        self._credits.acquire()
        if self.stopping:
            raise _Stopped
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, message)

    def post_exit(self, message: _Exited) -> None:
        """Hand over a thread's exit; never blocks (it takes no credit)."""
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, message)

    def delivered(self) -> None:
        """Return the credit of a message that has been delivered to the sink."""
        self._credits.release()

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`; raises _Stopped as soon as the source is stopping."""
        if self._stopping.wait(seconds):
            raise _Stopped

    @contextlib.contextmanager
    def stream(self, response: urllib3.BaseHTTPResponse) -> Iterator[urllib3.BaseHTTPResponse]:
        """Register `response` so that `stop` can interrupt reads; release or discard its connection after."""
        with self._lock:
            if self.stopping:
                response.close()
                raise _Stopped
            self._streams.add(response)
        try:
            yield response
        except BaseException:
            # Partly read: its connection cannot go back to the pool.
            response.close()
            raise
        else:
            if self.stopping:
                # Possibly cut short by stop(): the socket is half shut down.
                response.close()
            else:
                response.release_conn()
        finally:
            with self._lock:
                self._streams.discard(response)

    def stop(self, threads: int) -> None:
        """Make every reflector stop: set the flag, wake blocked posts, cut in-flight responses short."""
        self._stopping.set()
        # One credit per thread: each wakes at most once more, sees the flag and leaves.
        self._credits.release(max(threads, 1))
        with self._lock:
            for response in self._streams:
                with contextlib.suppress(ValueError, RuntimeError, OSError):
                    response.shutdown()


class _Reflector:
    """The list+watch loop of one kind, run in its own thread; talks to the loop only through the channel.

    Its fields are touched by its own thread only.
    """

    def __init__(
        self, kind: objects.AnyKind, lister: _Lister, options: KubernetesAPIOptions, channel: _Channel, *,
        scope: str = "",
    ) -> None:
        self._kind = kind
        self._scope = scope
        self._lister = lister
        self._options = options
        self._channel = channel
        self._backoff = backoff.Backoff(initial=options.backoff_initial, maximum=options.backoff_maximum)
        self._resource_version: str | None = None
        self._absent = False

    def run(self) -> None:
        """Thread body: loop until stopped; always posts _Exited, with the error if one escaped."""
        error: BaseException | None = None
        try:
            while True:
                self._step()
        except _Stopped:
            pass
        except BaseException as exc:
            # A bug, not an API failure (those are retried in _step): run() raises it.
            error = exc
        finally:
            self._channel.post_exit(_Exited(self._kind, threading.current_thread(), error))

    def _step(self) -> None:
        if self._channel.stopping:
            raise _Stopped
        watching = self._resource_version is not None
        try:
            if watching:
                self._watch()
            else:
                self._list()
        except errors.KubeAPIError as exc:
            if self._channel.stopping:
                raise _Stopped from None
            # A watch that cannot resume relists at once; a list failing with 410 (its continue token
            # expired) goes through the backoff so that a misbehaving server cannot make this spin.
            if watching and (
                isinstance(exc, errors.ResourceExpired)
                or (isinstance(exc, errors.NotFound) and self._kind in _OPTIONAL)
            ):
                log.info(
                    "event=kube.relist kind=%s resource_version=%s reason=%s",
                    self._kind,
                    self._resource_version,
                    json.dumps(str(exc)),
                )
                self._resource_version = None
                return
            delay = self._backoff.next_delay()
            hint = ' hint="grant list and watch on this kind"' if isinstance(exc, errors.Forbidden) else ""
            log.warning(
                "event=kube.%s.failed kind=%s%s attempt=%d retry_in=%.2fs error=%s%s",
                "watch" if watching else "list",
                self._kind,
                self._scope,
                self._backoff.attempts,
                delay,
                json.dumps(str(exc)),
                hint,
            )
            self._channel.sleep(delay)

    def _list(self) -> None:
        """List every object (paginated, one snapshot), hand the state over, keep its resourceVersion."""
        listed: dict[objects.ObjectKey, dict[str, Any]] = {}
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": self._options.page_size}
            if token:
                params["_continue"] = token
            try:
                page = self._get(self._options.list_timeout, params)
            except errors.NotFound:
                if self._kind not in _OPTIONAL:
                    raise
                self._report_absent()
                return
            try:
                items = objects.list_items(page)
            except DecodeError as exc:
                raise errors.KubeAPIError(f"malformed list response: {exc}") from exc
            for item in items:
                key = self._key(item)
                if key is not None:
                    listed[key] = item
            metadata = page.get("metadata")
            if not isinstance(metadata, dict):
                raise errors.KubeAPIError("list response without metadata")
            token = metadata.get("continue")
            if not token:
                break
        resource_version = metadata.get("resourceVersion")
        if not isinstance(resource_version, str) or not resource_version:
            raise errors.KubeAPIError("list response without metadata.resourceVersion")
        self._channel.post(_Listed(self._kind, listed))
        log.info(
            "event=kube.list.complete kind=%s%s objects=%d resource_version=%s",
            self._kind,
            self._scope,
            len(listed),
            resource_version,
        )
        self._resource_version = resource_version
        self._absent = False
        self._backoff.reset()

    def _report_absent(self) -> None:
        """The kind is not served: it has no objects. Say so once, hand over the empty state, wait."""
        if not self._absent:
            log.info('event=kube.kind.absent kind=%s hint="CRD not installed; treated as empty"', self._kind)
            self._absent = True
        self._channel.post(_Listed(self._kind, {}))
        self._backoff.reset()
        self._channel.sleep(self._options.absent_recheck)

    def _watch(self) -> None:
        """Watch from the current resourceVersion until the server ends the stream; raises on failures."""
        params = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "resource_version": self._resource_version,
            "timeout_seconds": self._options.watch_timeout,
        }
        with self._api_errors():
            response = self._request(self._options.watch_timeout + _WATCH_READ_MARGIN, params)
            with self._channel.stream(response):
                self._backoff.reset()
                for line in _lines(response):
                    self._on_watch_event(line)

    def _on_watch_event(self, line: bytes) -> None:
        try:
            watch_event = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            raise errors.KubeAPIError(f"malformed watch event: {exc}") from exc
        event_type = watch_event.get("type") if isinstance(watch_event, dict) else None
        obj = watch_event.get("object") if isinstance(watch_event, dict) else None
        if not isinstance(obj, dict):
            raise errors.KubeAPIError(f"malformed watch event: {line[:200]!r}")
        if event_type == "ERROR":
            code = obj.get("code")
            raise errors.from_status(code if isinstance(code, int) else 0, str(obj.get("message") or obj))
        metadata = obj.get("metadata")
        resource_version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if event_type in ("ADDED", "MODIFIED", "DELETED"):
            key = self._key(obj)
            if key is not None:
                change = event.EventType.DELETE if event_type == "DELETED" else event.EventType.UPSERT
                self._channel.post(_Changed(change, key, obj))
        elif event_type != "BOOKMARK":
            log.warning("event=kube.watch.unknown kind=%s type=%s", self._kind, json.dumps(str(event_type)))
        if isinstance(resource_version, str) and resource_version:
            self._resource_version = resource_version

    def _key(self, obj: Any) -> objects.ObjectKey | None:
        """The key of an object from the API, or None (logged) if it is malformed."""
        try:
            if not isinstance(obj, dict):
                raise DecodeError(str(self._kind), "not a mapping")
            return objects.object_key(self._kind, obj)
        except DecodeError as exc:
            log.warning("event=kube.object.invalid kind=%s reason=%s", self._kind, json.dumps(str(exc)))
            return None

    def _get(self, read_timeout: float, params: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming request, its body decoded as a JSON object."""
        with self._api_errors():
            response = self._request(read_timeout, params)
            with self._channel.stream(response):
                body = response.read()
        try:
            document = msgspec.json.decode(body)
        except msgspec.DecodeError as exc:
            raise errors.KubeAPIError(f"malformed response: {exc}") from exc
        if not isinstance(document, dict):
            raise errors.KubeAPIError("malformed response: not a JSON object")
        return document

    def _request(self, read_timeout: float, params: dict[str, Any]) -> urllib3.BaseHTTPResponse:
        response: urllib3.BaseHTTPResponse = self._lister(
            _preload_content=False,
            _request_timeout=(self._options.connect_timeout, read_timeout),
            **params,
        )
        return response

    @contextlib.contextmanager
    def _api_errors(self) -> Iterator[None]:
        """Translate the client's exceptions into the KubeAPIError tree (the one place that does)."""
        try:
            yield
        except client.ApiException as exc:
            if not exc.status:
                raise errors.KubeUnavailable(str(exc.reason)) from exc
            raise errors.from_status(exc.status, status_message(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise errors.KubeUnavailable(f"{type(exc).__name__}: {exc}") from exc


def status_message(exc: client.ApiException) -> str:
    """The `message` of the Status object in an error response, else the HTTP reason."""
    try:
        status = json.loads(exc.body or "")
    except ValueError:
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return str(status["message"])
    return str(exc.reason)


def _lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The non-empty lines of a watch stream as they arrive (the API server sends one event per chunk)."""
    buffer = b""
    # amt=None yields each HTTP chunk as soon as it arrives; watch responses are always chunked.
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer
