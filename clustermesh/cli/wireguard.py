"""`clustermesh wireguard peers --agent ADDR`: the `[Peer]` sections of `wg` for every remote node an agent knows.

The agent says which cluster it is in (GetStatus) and which nodes its peers have (ListNodes: WireGuard public
key, addresses, pod CIDRs). Each remote node becomes one `[Peer]` with its public key, `Endpoint` (its
InternalIP, else its first address, and the WireGuard port), `AllowedIPs` (its pod CIDRs), and the
`PresharedKey` of the pair of clusters (clustermesh.trust.derive_psk over the local cluster's secret and the
node's cluster's secret). Secrets come from a local mesh (`--mesh DIR`, each cluster's certs/cluster.secret)
and/or `--secret CLUSTER=FILE` (repeatable; raw 32 bytes or base64, e.g. a peer Secret's cluster.secret).
Nodes without a public key are skipped with a note on stderr.

Output: `wg` configuration syntax (default) or `-o json`. Exit codes: 0 done; 1 the agent cannot be reached,
or a needed cluster secret is missing or unreadable; 2 invalid arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
from typing import Any

import grpc

from clustermesh import errors, trust
from clustermesh.api.v1 import agent_pb2, agent_pb2_grpc
from clustermesh.cli import agent_commands, output
from clustermesh.errors import ConfigError
from clustermesh.local_mesh import mesh_file

WIREGUARD_PORT = 51871
"""Cilium's WireGuard listen port (cilium_wg0)."""


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `wireguard` and its action `peers`."""
    parser = subparsers.add_parser("wireguard", help="WireGuard configuration for tunnels to peer clusters' nodes")
    actions = parser.add_subparsers(dest="wireguard_action", metavar="ACTION", required=True)
    peers = actions.add_parser("peers", help="print a [Peer] section for every remote node the agent knows")
    default = os.environ.get(agent_commands.AGENT_ENV, agent_commands.DEFAULT_AGENT)
    peers.add_argument("--agent", default=default, metavar="ADDR",
                       help=f"agent gRPC address, unix:PATH or HOST:PORT (default {default})")
    peers.add_argument("--tls-ca", type=pathlib.Path, metavar="FILE", help="CA bundle (TCP only)")
    peers.add_argument("--tls-cert", type=pathlib.Path, metavar="FILE", help="client certificate (TCP only)")
    peers.add_argument("--tls-key", type=pathlib.Path, metavar="FILE", help="client private key (TCP only)")
    peers.add_argument("--tls-server-name", metavar="NAME", help="name the agent's certificate must carry")
    peers.add_argument("--timeout", type=float, default=agent_commands.DEFAULT_TIMEOUT, metavar="SECONDS")
    peers.add_argument("--mesh", type=pathlib.Path, metavar="DIR", help="a local mesh: read every cluster's secret")
    peers.add_argument("--secret", action="append", default=[], metavar="CLUSTER=FILE",
                       help="the cluster.secret of one cluster (repeatable; overrides --mesh)")
    peers.add_argument("--port", type=int, default=WIREGUARD_PORT, help=f"WireGuard port (default {WIREGUARD_PORT})")
    peers.add_argument("-o", "--output", choices=("wg", "json"), default="wg", help="output format (default wg)")
    peers.set_defaults(handler=run_peers)


def secret_files(mesh_dir: pathlib.Path | None, specs: list[str]) -> dict[str, pathlib.Path]:
    """Cluster name → secret file, from a local mesh and CLUSTER=FILE arguments (which win)."""
    files: dict[str, pathlib.Path] = {}
    if mesh_dir is not None:
        for cluster in mesh_file.load(mesh_dir).clusters:
            if cluster.secret:
                files[cluster.name] = pathlib.Path(cluster.secret)
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--secret: expected CLUSTER=FILE, got {spec!r}")
        files[name] = pathlib.Path(path)
    return files


def _endpoint(node: agent_pb2.Node, port: int) -> str:
    addresses = [a.ip for a in node.addresses if a.type == "InternalIP"] or [a.ip for a in node.addresses]
    if not addresses:
        return ""
    ip = addresses[0]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def peers(
    status: agent_pb2.AgentStatus, nodes: agent_pb2.ListNodesResponse, secrets: dict[str, bytes], *, port: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """The peer entries of every remote node with a public key, and a note for each node skipped.

    ConfigError if the local cluster's secret or a remote node's cluster secret is missing.
    """
    local = status.cluster_name
    if local not in secrets:
        raise ConfigError(f"no secret for the agent's own cluster {local}: pass --mesh DIR or --secret {local}=FILE")
    entries: list[dict[str, Any]] = []
    skipped: list[str] = []
    for node in sorted(nodes.nodes, key=lambda n: (n.cluster, n.name)):
        if node.cluster == local:
            continue
        if not node.wireguard_pub_key:
            skipped.append(f"{node.cluster}/{node.name}: no WireGuard public key (annotation network.cilium.io/"
                           "wg-pub-key)")
            continue
        if node.cluster not in secrets:
            raise ConfigError(f"no secret for cluster {node.cluster}: pass --mesh DIR or --secret {node.cluster}=FILE")
        entries.append({
            "cluster": node.cluster,
            "cluster_id": node.cluster_id,
            "node": node.name,
            "public_key": node.wireguard_pub_key,
            "preshared_key": trust.psk_base64(secrets[local], secrets[node.cluster]),
            "endpoint": _endpoint(node, port),
            "allowed_ips": [cidr for cidr in (node.ipv4_alloc_cidr, node.ipv6_alloc_cidr) if cidr],
        })
    return entries, skipped


def wg_config(entries: list[dict[str, Any]]) -> str:
    """The entries as `[Peer]` sections of a wg(8) configuration."""
    sections = []
    for entry in entries:
        lines = [f"# {entry['cluster']}/{entry['node']} (cluster id {entry['cluster_id']})", "[Peer]",
                 f"PublicKey = {entry['public_key']}", f"PresharedKey = {entry['preshared_key']}"]
        if entry["endpoint"]:
            lines.append(f"Endpoint = {entry['endpoint']}")
        if entry["allowed_ips"]:
            lines.append(f"AllowedIPs = {', '.join(entry['allowed_ips'])}")
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


async def _fetch(args: argparse.Namespace) -> tuple[agent_pb2.AgentStatus, agent_pb2.ListNodesResponse]:
    async with agent_commands.channel(args) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        try:
            status = await stub.GetStatus(agent_pb2.GetStatusRequest(), timeout=args.timeout)
            nodes = await stub.ListNodes(agent_pb2.ListRequest(), timeout=args.timeout)
        except grpc.aio.AioRpcError as exc:
            raise errors.ClusterMeshError(f"cannot read the agent at {args.agent}: {exc.details()}") from None
    return status, nodes


def run_peers(args: argparse.Namespace) -> int:
    """Handle `wireguard peers`; see the module docstring for exit codes."""
    files = secret_files(args.mesh, args.secret)
    status, nodes = asyncio.run(_fetch(args))
    secrets: dict[str, bytes] = {}
    for name, path in files.items():
        try:
            secrets[name] = trust.load_cluster_secret(path)
        except errors.CertificateError as exc:
            raise errors.ClusterMeshError(str(exc)) from None
    try:
        entries, skipped = peers(status, nodes, secrets, port=args.port)
    except ConfigError as exc:
        # A missing secret is missing material, not a malformed command line.
        raise errors.ClusterMeshError(str(exc)) from None
    for note in skipped:
        sys.stderr.write(f"skipped {note}\n")
    if args.output == "json":
        output.print_json({"cluster": status.cluster_name, "node": status.node_name, "peers": entries})
    else:
        sys.stdout.write(wg_config(entries))
        sys.stdout.flush()
    return 0
