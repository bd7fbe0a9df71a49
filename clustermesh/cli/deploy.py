"""`clustermesh deploy render|mesh-config`: the Kubernetes manifests of one cluster, certificates included.

Parses and validates the options, then calls clustermesh.deploy_render: certificates are created or kept in the
state directory, and the manifests go to `-o DIR` (one file per part, Secrets with mode 0600) or to stdout as
one multi-document YAML stream, ready for `kubectl apply -f`. What was written or kept is reported on stderr,
so stdout stays applyable. The agents read their peers from the ClusterMesh resource by default; with
`--peer-source mesh-config` they mount a Secret instead, which `mesh-config` renders from the ClusterMesh
resource and the peer Secrets `clustermesh connect` wrote. Exit codes (cli.main): 0 rendered,
1 unusable certificates in the state directory, 2 invalid options or input.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import yaml

from clustermesh import deploy_render, errors, identity


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `deploy` and its actions `render` and `mesh-config`."""
    parser = subparsers.add_parser("deploy", help="deploy the mesh on Kubernetes")
    actions = parser.add_subparsers(dest="deploy_action", metavar="ACTION", required=True)
    render = actions.add_parser(
        "render",
        help="render every manifest one cluster needs, Secrets with certificates included",
        description="Render the namespace, ClusterMesh CRD, RBAC, apiserver Deployment (with its etcd), agent "
                    "DaemonSet and Secrets of one cluster. Certificates are kept in --state-dir and reused by "
                    "later renders unless --rotate or --force is given.",
    )
    render.add_argument("--cluster-name", required=True, metavar="NAME", help="this cluster's name")
    render.add_argument("--cluster-id", required=True, type=int, metavar="ID",
                        help="this cluster's ID (1..max-connected-clusters), unique in the mesh")
    render.add_argument("--max-connected-clusters", type=int, default=int(identity.ClusterIDMode.DEFAULT),
                        choices=[int(mode) for mode in identity.ClusterIDMode],
                        help="the mesh's cluster ID space; every cluster must agree (default 255)")
    render.add_argument("--namespace", default=deploy_render.DEFAULT_NAMESPACE,
                        help=f"namespace of everything rendered (default {deploy_render.DEFAULT_NAMESPACE})")
    render.add_argument("--service-type", type=deploy_render.ServiceType,
                        choices=list(deploy_render.ServiceType), default=deploy_render.ServiceType.CLUSTER_IP,
                        help="how peers reach this cluster's etcd (default ClusterIP: peers inside the same "
                             "network; LoadBalancer or NodePort across networks)")
    render.add_argument("--endpoint", action="append", default=[], metavar="URL",
                        help="https://HOST:PORT peers dial this cluster's etcd by (the load balancer's address, "
                             "a node IP with the NodePort); repeatable; handed to peers by `clustermesh connect`. "
                             "Default: the Service's in-cluster name")
    render.add_argument("--san", action="append", default=[], metavar="HOST",
                        help="another DNS name or IP address for the etcd server certificate (repeatable); the "
                             "hosts of --endpoint are added anyway. A new name re-issues that certificate alone, "
                             "from the same CA")
    render.add_argument("--image", default=deploy_render.DEFAULT_IMAGE,
                        help=f"image with both daemons, built from the Dockerfile (default "
                             f"{deploy_render.DEFAULT_IMAGE})")
    render.add_argument("--etcd-image", default=deploy_render.DEFAULT_ETCD_IMAGE,
                        help=f"etcd image (default {deploy_render.DEFAULT_ETCD_IMAGE})")
    render.add_argument("--etcd-storage", type=deploy_render.EtcdStorage,
                        choices=list(deploy_render.EtcdStorage), default=deploy_render.EtcdStorage.EMPTY_DIR,
                        help="etcd data on an emptyDir (default) or a PersistentVolumeClaim")
    render.add_argument("--etcd-storage-size", default=deploy_render.DEFAULT_STORAGE_SIZE, metavar="SIZE",
                        help=f"claim size with --etcd-storage pvc (default {deploy_render.DEFAULT_STORAGE_SIZE})")
    render.add_argument("--pod-cidr", action="append", default=[], metavar="CIDR",
                        help="this cluster's pod CIDR (repeatable): agents refuse peers that overlap it")
    render.add_argument("--peer-source", type=deploy_render.PeerSource, choices=list(deploy_render.PeerSource),
                        default=deploy_render.PeerSource.CLUSTER_MESH_RESOURCE,
                        help="where agents read their peers: the ClusterMesh resource and its peer Secrets "
                             "(default; the agents may list and watch Secrets in --peer-namespace only), or a "
                             f"mounted mesh-config Secret {deploy_render.PEERS_SECRET} (`deploy mesh-config`; no "
                             "Secret access)")
    render.add_argument("--peer-namespace", metavar="NS",
                        help="namespace of the peer Secrets, for `clustermesh connect --peer-namespace` (default "
                             f"<namespace>{deploy_render.PEER_NAMESPACE_SUFFIX}); must not be --namespace")
    render.add_argument("--state-dir", type=pathlib.Path, metavar="DIR",
                        help=f"where the CA, certificates and cluster secret are kept (default "
                             f"{deploy_render.DEFAULT_STATE_ROOT}/<cluster-name>)")
    render.add_argument("-o", "--output-dir", type=pathlib.Path, metavar="DIR",
                        help="write one file per part into DIR (default: everything to stdout)")
    renewal = render.add_mutually_exclusive_group()
    renewal.add_argument("--rotate", action="store_true",
                         help="re-issue every certificate from the existing CA (peers keep trusting this cluster)")
    renewal.add_argument("--force", action="store_true",
                         help="replace the CA and every certificate (peers must be connected again)")
    renewal.add_argument("--no-secrets", action="store_true",
                         help="leave the Secrets out and touch no state (Secrets managed elsewhere)")
    render.set_defaults(handler=run_render)

    mesh_config = actions.add_parser(
        "mesh-config",
        help="render the agents' mesh-config Secret (with --peer-source mesh-config) from the ClusterMesh "
             "resource and its peer Secrets",
        description="Read the cluster's ClusterMesh resource and the peer Secrets it references (as `kubectl get "
                    "-o yaml` prints them) and print the Secret the agents mount as their mesh-config directory "
                    "(Cilium's format), ready for `kubectl apply -f -`.",
    )
    mesh_config.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                             help="YAML with the ClusterMesh and the peer Secrets ('-' reads stdin); repeatable")
    mesh_config.add_argument("--namespace", default=deploy_render.DEFAULT_NAMESPACE,
                             help=f"namespace of the agents (default {deploy_render.DEFAULT_NAMESPACE})")
    mesh_config.set_defaults(handler=run_mesh_config)


def run_mesh_config(args: argparse.Namespace) -> int:
    """Handle `deploy mesh-config`: 0 printed, 2 unreadable input or a peer that cannot be resolved."""
    documents: list[Any] = []
    for name in args.filename:
        try:
            text = sys.stdin.read() if name == "-" else pathlib.Path(name).read_text()
            documents += yaml.safe_load_all(text)
        except OSError as exc:
            raise errors.ConfigError(f"-f {name}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise errors.ConfigError(f"-f {name}: not valid YAML: {' '.join(str(exc).split())}") from None
    secret = deploy_render.mesh_config_secret(documents, namespace=args.namespace)
    sys.stdout.write(deploy_render.dump([secret]))
    sys.stdout.flush()
    return 0


def run_render(args: argparse.Namespace) -> int:
    """Handle `deploy render`: 0 rendered, 1 unusable state directory, 2 invalid options (message on stderr)."""
    options = deploy_render.Options(
        cluster_name=args.cluster_name,
        cluster_id=args.cluster_id,
        max_connected_clusters=args.max_connected_clusters,
        namespace=args.namespace,
        image=args.image,
        etcd_image=args.etcd_image,
        service_type=args.service_type,
        etcd_storage=args.etcd_storage,
        etcd_storage_size=args.etcd_storage_size,
        endpoints=tuple(args.endpoint),
        sans=tuple(args.san),
        pod_cidrs=tuple(args.pod_cidr),
        peer_source=args.peer_source,
        peer_namespace=args.peer_namespace,
    )
    material = None
    if not args.no_secrets:
        state_dir = args.state_dir or deploy_render.DEFAULT_STATE_ROOT / options.cluster_name
        material = deploy_render.prepare_material(state_dir, options, rotate=args.rotate, force=args.force)
        for path in material.written:
            sys.stderr.write(f"wrote {path}\n")
        for path in material.kept:
            sys.stderr.write(f"kept  {path}\n")
    files = deploy_render.render(options, material)
    if args.output_dir is None:
        documents = [document for documents in files.values() for document in documents]
        sys.stdout.write(deploy_render.header(options) + deploy_render.dump(documents))
        sys.stdout.flush()
        return 0
    for path in deploy_render.write(args.output_dir, files, options):
        sys.stderr.write(f"rendered {path}\n")
    sys.stderr.write(f"apply with: kubectl apply -f {args.output_dir}\n")
    return 0
