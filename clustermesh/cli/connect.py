"""`clustermesh connect --from A --to B`: make two clusters peers in both directions (clustermesh.connect).

A and B are each a local cluster directory made by `clustermesh up` (DIR/<cluster>, described by DIR/mesh.json)
or a Kubernetes cluster: `kubernetes` (the default kubeconfig), `kubernetes:KUBECONFIG`, or the path of a
kubeconfig file. For a local cluster the peer files go into each of its agents' mesh-config directories, where
running agents pick them up live. For a Kubernetes cluster the peer Secret (in `--peer-namespace`, by default
`--namespace`, where the cluster's own Secret `clustermesh-cluster` is read) and the ClusterMesh resource are
printed as YAML for `kubectl apply -f -` (or written to `--out DIR/<cluster>.yaml`), or applied with `--apply`.

Exit codes: 0 done; 1 a Kubernetes API or file failure; 2 invalid arguments, or the clusters cannot be peers
(the message gives every reason: equal names or ids, ids out of range, different maxConnectedClusters,
overlapping pod CIDRs).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import pathlib
import sys
from typing import Any

from clustermesh import connect
from clustermesh.cli import output
from clustermesh.errors import ConfigError
from clustermesh.local_mesh import mesh_file


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `connect`."""
    parser = subparsers.add_parser(
        "connect", help="make two clusters peers in both directions (local mesh directories or Kubernetes)",
        description="Exchange trust between two clusters: each learns how to read the other's etcd.",
    )
    parser.add_argument("--from", dest="source", required=True, metavar="CLUSTER",
                        help="DIR/<cluster> of a local mesh, or kubernetes[:KUBECONFIG] (or a kubeconfig path)")
    parser.add_argument("--to", dest="destination", required=True, metavar="CLUSTER", help="the other cluster, ditto")
    parser.add_argument("--namespace", default=connect.DEFAULT_NAMESPACE,
                        help="namespace of each Kubernetes cluster's own Secret clustermesh-cluster (default "
                             f"{connect.DEFAULT_NAMESPACE})")
    parser.add_argument("--peer-namespace", metavar="NS",
                        help="namespace the peer Secrets are written to and the ClusterMesh resource points at: "
                             "where the agents read them (`deploy render` makes <namespace>-peers; default "
                             "--namespace)")
    parser.add_argument("--apply", action="store_true", help="apply to Kubernetes clusters instead of printing YAML")
    parser.add_argument("--out", type=pathlib.Path, metavar="DIR",
                        help="write each Kubernetes cluster's YAML to DIR/<cluster>.yaml instead of stdout")
    output.add_argument(parser)
    parser.set_defaults(handler=run)


@dataclasses.dataclass(frozen=True)
class Side:
    """One cluster of the exchange: its trust, and where it learns about peers."""

    spec: str
    trust: connect.ClusterTrust
    mesh_configs: tuple[pathlib.Path, ...] = ()
    """A local cluster's agents' mesh-config directories."""
    kubernetes: bool = False
    kubeconfig: pathlib.Path | None = None


def load_local(directory: pathlib.Path) -> Side:
    """The side of a local cluster directory DIR/<cluster>, described by DIR/mesh.json; ConfigError otherwise."""
    if not directory.is_dir():
        raise ConfigError(f"{str(directory)!r} is neither a local cluster directory (DIR/<cluster> of "
                          "`clustermesh up`) nor a kubeconfig file (or kubernetes[:KUBECONFIG])")
    directory = directory.absolute()
    mesh = mesh_file.load(directory.parent)
    cluster = mesh.cluster(directory.name)
    trust = connect.local_trust(
        name=cluster.name, cluster_id=cluster.id, endpoints=cluster.etcd.endpoints,
        certs_dir=pathlib.Path(cluster.certs), pod_cidrs=cluster.pod_cidrs,
        max_connected_clusters=cluster.max_connected_clusters,
    )
    configs = tuple(pathlib.Path(agent.mesh_config) for agent in cluster.agents if agent.mesh_config)
    return Side(spec=str(directory), trust=trust, mesh_configs=configs)


def _kubeconfig(spec: str) -> tuple[bool, pathlib.Path | None]:
    if spec == "kubernetes":
        return True, None
    if spec.startswith("kubernetes:"):
        return True, pathlib.Path(spec.removeprefix("kubernetes:"))
    path = pathlib.Path(spec)
    if path.is_file():
        return True, path
    return False, None


async def load_side(spec: str, *, namespace: str) -> Side:
    """Parse a --from/--to value and read that cluster's trust."""
    is_kube, kubeconfig = _kubeconfig(spec)
    if is_kube:
        trust = await connect.load_kubernetes_trust(kubeconfig, namespace=namespace)
        return Side(spec=spec, trust=trust, kubernetes=True, kubeconfig=kubeconfig)
    return load_local(pathlib.Path(spec))


async def exchange(
    a: Side, b: Side, *, peer_namespace: str, apply: bool, out: pathlib.Path | None
) -> list[dict[str, Any]]:
    """Check the pair, then tell each side about the other; return one action record per side.

    A Kubernetes side gets the peer Secret in peer_namespace, where its ClusterMesh resource points.
    """
    connect.check_pair(a.trust, b.trust)
    actions = []
    for destination, peer in ((a, b), (b, a)):
        if not destination.kubernetes:
            changed = [connect.write_peer_files(directory, peer.trust) for directory in destination.mesh_configs]
            actions.append({
                "cluster": destination.trust.name, "peer": peer.trust.name, "kind": "peer-files",
                "directories": [str(directory) for directory in destination.mesh_configs], "changed": any(changed),
            })
            continue
        documents = await connect.kubernetes_documents(destination.kubeconfig, peer.trust, namespace=peer_namespace)
        action: dict[str, Any] = {"cluster": destination.trust.name, "peer": peer.trust.name, "kind": "kubernetes"}
        if apply:
            action["applied"] = await connect.apply_kubernetes(destination.kubeconfig, documents)
        elif out is not None:
            action["file"] = str(_write_yaml(out, destination.trust.name, documents))
        else:
            action["yaml"] = connect.dump_yaml(documents)
        actions.append(action)
    return actions


def _write_yaml(out: pathlib.Path, cluster: str, documents: list[dict[str, Any]]) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{cluster}.yaml"
    path.write_text(connect.dump_yaml(documents))
    return path


def run(args: argparse.Namespace) -> int:
    """Handle `connect`; see the module docstring for exit codes."""
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    a = await load_side(args.source, namespace=args.namespace)
    b = await load_side(args.destination, namespace=args.namespace)
    peer_namespace = args.peer_namespace or args.namespace
    actions = await exchange(a, b, peer_namespace=peer_namespace, apply=args.apply, out=args.out)
    if args.output == "json":
        output.print_json({"from": a.trust.name, "to": b.trust.name, "actions": actions})
        return 0
    for action in actions:
        where = f"{action['cluster']} now knows {action['peer']}"
        if action["kind"] == "peer-files":
            state = "written" if action["changed"] else "unchanged"
            sys.stdout.write(f"{where}: peer files {state} in {len(action['directories'])} agents' mesh-config\n")
        elif "applied" in action:
            sys.stdout.write(f"{where}: applied {', '.join(action['applied'])}\n")
        elif "file" in action:
            sys.stdout.write(f"{where}: kubectl apply -f {action['file']} (in {action['cluster']})\n")
        else:
            sys.stdout.write(f"# apply in {action['cluster']}: peer {action['peer']}\n{action['yaml']}")
    sys.stdout.flush()
    return 0
