"""The apiserver process: connect to etcd, then run the publisher and the servers as root tasks until stopped.

Root tasks: the publisher, the gRPC server, the health and the metrics HTTP servers (each only if its
address is set) and a stop watcher. SIGTERM and SIGINT only set the stop event; when any root task ends
(the watcher on a signal, or another one by failing) every root task is cancelled and awaited, and only then
is the etcd client closed. Leases are not revoked: a restart within their TTL rewrites nothing.

Garbage collection during the initial sync: the sync allocates the process's long-lived state (every
parsed source object and record, hundreds of thousands of containers) and next to no cyclic garbage
(~500 objects at 50,000 pods). CPython's collector runs a full collection each time the objects that
survived the young generations grow by a quarter, so it traverses the growing heap again and again:
measured, a third of the sync's CPU. Until the publisher is ready, full collections are therefore
off (young ones go on, collecting the short-lived cycles); then gc.freeze() moves everything the sync built
out of the collector's sight for good, and the usual thresholds apply to what is allocated afterwards.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from apiserver import config, grpc_server, health, metrics
from apiserver import publisher as publisher_module
from clustermesh import errors, http_server, kube
from clustermesh.aio import backoff
from clustermesh.etcd import client as etcd_client

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The third collector threshold counts young-generation collections between full ones: this many never come.
_NO_FULL_COLLECTIONS = 2**31 - 1


async def run(settings: config.Config) -> int:
    """Serve until SIGTERM/SIGINT (0) or until a root task fails (1)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        log.info(
            "event=apiserver.starting cluster=%s cluster_id=%d etcd=%s source=%s",
            settings.publisher.cluster,
            settings.publisher.cluster_id,
            ",".join(settings.etcd.endpoints),
            settings.source,
        )
        client = await _connect(settings.etcd, stop)
        if client is None:
            log.info("event=apiserver.stopped reason=signal")
            return EXIT_OK
        try:
            return await _serve(settings, client, stop)
        finally:
            await client.close()
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


async def _connect(etcd: etcd_client.EtcdConfig, stop: asyncio.Event) -> etcd_client.EtcdClient | None:
    """A client of etcd, retried with backoff until it answers (etcd may start after us); None if stopped."""
    retry = backoff.Backoff(initial=0.2, maximum=5.0)
    while not stop.is_set():
        try:
            return await etcd_client.EtcdClient.connect(etcd)
        except errors.StoreError as exc:
            log.warning("event=etcd.connect.failed endpoints=%s reason=%s", ",".join(etcd.endpoints), exc)
        stopping = asyncio.create_task(stop.wait(), name="wait for stop")
        try:
            await asyncio.wait({stopping}, timeout=retry.next_delay())
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
    return None


async def _serve(settings: config.Config, client: etcd_client.EtcdClient, stop: asyncio.Event) -> int:
    source = kube.parse_source_spec(settings.source, kinds=publisher_module.SOURCE_KINDS)
    publisher = publisher_module.Publisher(client, source, settings.publisher)
    roots: dict[str, Coroutine[Any, Any, object]] = {"publisher": _publish(publisher), "stop": stop.wait()}
    if settings.grpc_listen:
        address = settings.grpc_listen
        # gRPC wants a host; ":PORT" means every interface, as for the HTTP servers.
        grpc_address = f"[::]{address}" if address.startswith(":") else address
        server = grpc_server.GrpcServer(grpc_address, publisher, etcd_endpoints=settings.etcd.endpoints)
        roots["grpc"] = server.run()
    if settings.health_listen:
        roots["health"] = http_server.HttpServer(
            settings.health_listen, health.routes(publisher), name="health"
        ).run()
    if settings.metrics_listen:
        roots["metrics"] = http_server.HttpServer(
            settings.metrics_listen, metrics.routes(metrics.registry(publisher)), name="metrics"
        ).run()
    tasks = {asyncio.create_task(coroutine, name=name): name for name, coroutine in roots.items()}
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    failed = False
    for task in done:
        if task.cancelled() or tasks[task] == "stop":
            continue
        failed = True
        exc = task.exception()
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "ended unexpectedly"
        log.error("event=apiserver.failed task=%s reason=%s", tasks[task], reason, exc_info=exc)
    log.info("event=apiserver.stopped reason=%s", "failure" if failed else "signal")
    return EXIT_FAILED if failed else EXIT_OK


async def _publish(publisher: publisher_module.Publisher) -> None:
    """publisher.run(), without full garbage collections until it is ready (see the module docstring)."""
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], _NO_FULL_COLLECTIONS)
    resume = asyncio.create_task(_resume_collections(publisher, thresholds), name="gc resume after sync")
    try:
        await publisher.run()
    finally:
        resume.cancel()
        await asyncio.gather(resume, return_exceptions=True)
        gc.set_threshold(*thresholds)


async def _resume_collections(publisher: publisher_module.Publisher, thresholds: tuple[int, int, int]) -> None:
    await publisher.ready.wait()
    gc.freeze()
    gc.set_threshold(*thresholds)
