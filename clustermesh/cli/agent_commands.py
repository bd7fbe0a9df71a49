"""`clustermesh status|nodes|identities|ipcache|services|resolve`: read an agent over its gRPC API.

Each command is one call to the agent (`--agent unix:PATH` by default, or `HOST:PORT` with `--tls-*` for
mutual TLS), printed as a table for people or, with `-o json`, as the API message with every field (proto
field names). `status` follows `cilium-dbg status --all-clusters` (reference §9.2).

Exit codes: 0 success; 1 the agent cannot be reached or answers an error, `status` with a peer that is not
ready, `resolve` of an unknown service; 2 invalid arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from clustermesh import errors, tls
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.cli import output
from clustermesh.local_mesh import mesh_file
from clustermesh.local_mesh import status as local_status

DEFAULT_AGENT = "unix:/var/run/clustermesh/agent.sock"
"""The agent's default listen address (agent.config.DEFAULT_LISTEN; the same string, as no import may join them)."""
AGENT_ENV = "CLUSTERMESH_AGENT"
DEFAULT_TIMEOUT = 10.0
# How often `status --wait` asks again: fast enough to feel immediate, slow enough to cost agents nothing.
_WAIT_POLL = 0.5
# Listing a large mesh (hundreds of thousands of ipcache entries) exceeds gRPC's 4 MiB default.
MAX_RECEIVE_BYTES = 512 * 1024 * 1024

Call = Callable[[agent_pb2_grpc.AgentStub, argparse.Namespace, float], Awaitable[Message]]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register status, nodes, identities, ipcache, services and resolve."""
    status = subparsers.add_parser("status", help="the agent's view of every peer cluster")
    _common(status)
    status.add_argument("--mesh", type=pathlib.Path, metavar="DIR",
                        help="every agent of a local mesh (clustermesh up --dir DIR) instead of --agent")
    status.add_argument("--wait", action="store_true",
                        help="wait until every peer is ready; --timeout bounds the whole wait (exit 1 at expiry)")
    status.set_defaults(handler=_status)

    for name, help_text, call, printer in (
        ("nodes", "nodes of the peer clusters, as cached by the agent", _list_nodes, _print_nodes),
        ("identities", "security identities of the peer clusters", _list_identities, _print_identities),
        ("ipcache", "IP to identity entries of the peer clusters", _list_ipcache, _print_ipcache),
        ("services", "global services the peer clusters share", _list_services, _print_services),
    ):
        parser = subparsers.add_parser(name, help=help_text)
        _common(parser)
        parser.add_argument("--cluster", default="", metavar="NAME", help="only this peer's entries")
        parser.set_defaults(handler=_handler(call, printer))

    resolve = subparsers.add_parser("resolve", help="the backends a service resolves to, after affinity")
    resolve.add_argument("service", metavar="NS/NAME", type=_namespaced_name, help="e.g. my-namespace/my-app")
    _common(resolve)
    resolve.set_defaults(handler=_handler(_resolve, _print_resolution, _found))


def _common(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(AGENT_ENV, DEFAULT_AGENT)
    parser.add_argument("--agent", default=default, metavar="ADDR",
                        help=f"agent gRPC address, unix:PATH or HOST:PORT (default {default}; env {AGENT_ENV})")
    parser.add_argument("--tls-ca", type=pathlib.Path, metavar="FILE", help="CA bundle (TCP only)")
    parser.add_argument("--tls-cert", type=pathlib.Path, metavar="FILE", help="client certificate (TCP only)")
    parser.add_argument("--tls-key", type=pathlib.Path, metavar="FILE", help="client private key (TCP only)")
    parser.add_argument("--tls-server-name", metavar="NAME", help="name the agent's certificate must carry")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})")
    output.add_argument(parser)


def _namespaced_name(text: str) -> tuple[str, str]:
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {text!r}")
    return namespace, name


def _handler(
    call: Call, render: Callable[[Any], None], verdict: Callable[[Any], int] = lambda response: 0
) -> Callable[[argparse.Namespace], int]:
    """A handler that makes the call, prints the response as a table (render) or JSON, and exits per verdict."""

    def handle(args: argparse.Namespace) -> int:
        response = asyncio.run(_call(args, call))
        if args.output == "json":
            output.print_json(to_json(response))
        else:
            render(response)
        return verdict(response)

    return handle


def to_json(message: Message) -> dict[str, Any]:
    """An API message as JSON-ready builtins: proto field names, every field present."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def channel(args: argparse.Namespace) -> grpc.aio.Channel:
    """A channel to the agent the flags name; ConfigError for an incomplete or misplaced TLS set."""
    options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
    given = {flag: path for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert),
                                           ("--tls-key", args.tls_key)) if path is not None}
    if args.agent.startswith("unix:"):
        if given:
            raise errors.ConfigError(f"{', '.join(given)}: TLS applies only to a HOST:PORT agent address")
        return grpc.aio.insecure_channel(args.agent, options=options)
    if len(given) != 3:
        raise errors.ConfigError(
            f"--agent {args.agent}: a TCP agent address needs --tls-ca, --tls-cert and --tls-key (mutual TLS)"
        )
    material = tls.load(tls.TLSFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key))
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.aio.secure_channel(args.agent, tls.channel_credentials(material), options=options)


async def _call(args: argparse.Namespace, call: Call) -> Message:
    async with channel(args) as agent_channel:
        stub = agent_pb2_grpc.AgentStub(agent_channel)
        try:
            return await call(stub, args, args.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise errors.ClusterMeshError(f"cannot reach the agent at {args.agent}: {exc.details()}") from None
            raise errors.ClusterMeshError(f"the agent at {args.agent} answered {exc.code().name}: {exc.details()}"
                                          ) from None


# ----------------------------------------------------------------------------------------------------
# Calls


async def _get_status(stub: agent_pb2_grpc.AgentStub, args: argparse.Namespace, timeout: float) -> Message:
    return await stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=timeout)


async def _list_nodes(stub: agent_pb2_grpc.AgentStub, args: argparse.Namespace, timeout: float) -> Message:
    return await stub.ListNodes(agent_pb2.ListRequest(cluster=args.cluster), timeout=timeout)


async def _list_identities(stub: agent_pb2_grpc.AgentStub, args: argparse.Namespace, timeout: float) -> Message:
    return await stub.ListIdentities(agent_pb2.ListRequest(cluster=args.cluster), timeout=timeout)


async def _list_ipcache(stub: agent_pb2_grpc.AgentStub, args: argparse.Namespace, timeout: float) -> Message:
    return await stub.ListIPCache(agent_pb2.ListRequest(cluster=args.cluster), timeout=timeout)


async def _list_services(stub: agent_pb2_grpc.AgentStub, args: argparse.Namespace, timeout: float) -> Message:
    return await stub.ListServices(agent_pb2.ListRequest(cluster=args.cluster), timeout=timeout)


async def _resolve(stub: agent_pb2_grpc.AgentStub, args: argparse.Namespace, timeout: float) -> Message:
    namespace, name = args.service
    return await stub.ResolveService(agent_pb2.ResolveServiceRequest(namespace=namespace, name=name),
                                     timeout=timeout)


# ----------------------------------------------------------------------------------------------------
# Tables and verdicts


def format_age(seconds: float) -> str:
    """A duration the way Go prints one, to the second: 45s, 3m2s, 1h0m5s; 'never' for a negative one."""
    if seconds < 0:
        return "never"
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"


def status_lines(status: agent_pb2.AgentStatus, now_unix: float) -> list[str]:
    """The status text, one line per item, modelled on `cilium-dbg status --all-clusters`."""
    ready = sum(1 for peer in status.peers if peer.ready)
    lines = [
        f"Agent:         {status.cluster_name} (id {status.cluster_id}), node {status.node_name}, "
        f"clustermesh {status.version}, up {format_age(status.uptime_seconds)}",
        f"ClusterMesh:   {ready}/{len(status.peers)} remote clusters ready, "
        f"{status.num_global_services} global-services",
    ]
    for peer in status.peers:
        last_failure = "never" if not peer.last_failure_unix else f"{format_age(now_unix - peer.last_failure_unix)} ago"
        lines.append(
            f"   {peer.name}: {'ready' if peer.ready else 'not-ready'}, {peer.num_nodes} nodes, "
            f"{peer.num_endpoints} endpoints, {peer.num_identities} identities, {peer.num_services} services, "
            f"{peer.num_service_exports} MCS-API service exports, "
            f"{peer.failures} failures (last: {last_failure})"
        )
        connection = "connected" if peer.connected else "disconnected"
        etcd = f"   └  etcd: {connection}: {peer.etcd_endpoint or '-'}"
        if peer.etcd_cluster_id:
            etcd += f" - ID: {peer.etcd_cluster_id}"
        etcd += f", last event {_ago(peer.last_event_age_seconds)}, heartbeat {_ago(peer.heartbeat_age_seconds)}"
        lines.append(etcd)
        lines.append(
            f"   └  remote configuration: retrieved={_bool(peer.config_retrieved)}, cluster-id={peer.cluster_id}, "
            f"kvstoremesh={_bool(peer.kvstoremesh)}, sync-canaries={_bool(peer.sync_canaries)}"
        )
        synced = peer.synced
        lines.append(
            f"   └  synchronization status: nodes={_bool(synced.nodes)}, endpoints={_bool(synced.endpoints)}, "
            f"identities={_bool(synced.identities)}, services={_bool(synced.services)}, "
            f"service-exports={_bool(synced.service_exports)}"
        )
        # Status, refusal and last error often say the same thing: print each distinct message once.
        shown: list[str] = []
        for label, text in (("status", peer.status), ("refused", peer.refused_reason),
                            ("last error", peer.last_error)):
            if text and not any(text in earlier for earlier in shown):
                lines.append(f"   └  {label}: {text}")
                shown.append(text)
        if peer.revoked:
            lines.append("   └  revoked: cache TTL expired while disconnected; its services are withdrawn")
        if peer.invalid_records or peer.reconnections:
            lines.append(f"   └  invalid records: {peer.invalid_records}, reconnections: {peer.reconnections}")
    return lines


def _ago(seconds: float) -> str:
    return "never" if seconds < 0 else f"{format_age(seconds)} ago"


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _status(args: argparse.Namespace) -> int:
    """`status`: one agent (--agent) or every agent of a local mesh (--mesh), once or --wait until ready."""
    if args.mesh is None and not args.wait:
        return _handler(_get_status, _print_status, _all_ready)(args)
    reports = asyncio.run(_wait_for_reports(args))
    ready = all(report.synced for report in reports)
    if args.output == "json":
        output.print_json([
            {"cluster": r.cluster, "node": r.node, "address": r.address, "ready": r.synced, "error": r.error,
             "status": to_json(r.status) if r.status is not None else None}
            for r in reports
        ])
        return 0 if ready else 1
    now = time.time()
    for report in reports:
        print(f"== {report.cluster}/{report.node} ({report.address})")
        if report.status is None:
            print(f"   unreachable: {report.error}")
            continue
        for line in status_lines(report.status, now):
            print(line)
    if not ready:
        output.error("not ready: " + "; ".join(filter(None, (r.waiting_for() for r in reports))))
    return 0 if ready else 1


async def _wait_for_reports(args: argparse.Namespace) -> list[local_status.AgentReport]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while True:
        call_timeout = max(0.1, min(local_status.DEFAULT_TIMEOUT, deadline - loop.time()))
        reports = await _read_reports(args, call_timeout)
        if not args.wait or all(r.synced for r in reports) or loop.time() >= deadline:
            return reports
        await asyncio.sleep(min(_WAIT_POLL, max(0.0, deadline - loop.time())))


async def _read_reports(args: argparse.Namespace, timeout: float) -> list[local_status.AgentReport]:
    if args.mesh is not None:
        return await local_status.read_mesh(mesh_file.load(args.mesh), timeout=timeout)
    # A lone agent is ready when every peer it knows of is; it must know of at least one.
    try:
        response = await _call(args, lambda stub, _, __: _get_status(stub, args, timeout))
    except errors.ClusterMeshError as exc:
        return [local_status.AgentReport("?", "?", args.agent, (), error=str(exc))]
    assert isinstance(response, agent_pb2.AgentStatus)
    peers = tuple(peer.name for peer in response.peers) or ("(no peers configured)",)
    return [local_status.AgentReport(response.cluster_name, response.node_name, args.agent, peers, status=response)]


def _print_status(status: agent_pb2.AgentStatus) -> None:
    for line in status_lines(status, time.time()):
        print(line)


def _all_ready(status: agent_pb2.AgentStatus) -> int:
    return 0 if all(peer.ready for peer in status.peers) else 1


def _print_nodes(response: agent_pb2.ListNodesResponse) -> None:
    output.print_table(
        ("CLUSTER", "NAME", "CLUSTER-ID", "ADDRESSES", "IPV4-CIDR", "IPV6-CIDR"),
        ((n.cluster, n.name, n.cluster_id, " ".join(f"{a.type}={a.ip}" for a in n.addresses),
          n.ipv4_alloc_cidr, n.ipv6_alloc_cidr) for n in response.nodes),
    )


def _print_identities(response: agent_pb2.ListIdentitiesResponse) -> None:
    output.print_table(("ID", "CLUSTER", "LABELS"), ((i.id, i.cluster, i.labels) for i in response.identities))


def _print_ipcache(response: agent_pb2.ListIPCacheResponse) -> None:
    output.print_table(
        ("PREFIX", "IDENTITY", "CLUSTER", "HOST-IP", "POD"),
        ((e.prefix, e.identity, e.cluster, e.host_ip, f"{e.namespace}/{e.pod_name}" if e.pod_name else "")
         for e in response.entries),
    )


def _print_services(response: agent_pb2.ListServicesResponse) -> None:
    output.print_table(
        ("CLUSTER", "SERVICE", "FRONTENDS", "BACKENDS", "SHARED"),
        ((s.cluster, f"{s.namespace}/{s.name}", " ".join(s.frontends),
          " ".join(_backend_address(b) for b in s.backends), _bool(s.shared)) for s in response.services),
    )


def _backend_address(backend: agent_pb2.Backend) -> str:
    host = f"[{backend.ip}]" if ":" in backend.ip else backend.ip
    return f"{host}:{backend.port}/{backend.protocol}"


def _found(response: agent_pb2.ResolveServiceResponse) -> int:
    return 0 if response.found else 1


def _print_resolution(response: agent_pb2.ResolveServiceResponse) -> None:
    if not response.found:
        output.error(f"service {response.namespace}/{response.name} not found")
        return
    scope = "global" if getattr(response, "global") else "local only (not global)"
    frontends = ", ".join(response.frontends) or "none"
    print(f"{response.namespace}/{response.name}: {scope}, affinity={response.affinity}, frontends: {frontends}")
    preferred = {_backend_key(b) for b in response.backends}
    output.print_table(
        ("BACKEND", "PORT-NAME", "CLUSTER", "CLUSTER-ID", "LOCAL", "SELECTED"),
        ((_backend_address(b), b.port_name, b.cluster, b.cluster_id, _bool(b.local),
          "(preferred)" if _backend_key(b) in preferred else "") for b in response.all_backends),
    )


def _backend_key(backend: agent_pb2.Backend) -> tuple[str, int, str, str, str]:
    return backend.ip, backend.port, backend.protocol, backend.port_name, backend.cluster
