"""`clustermesh certs init|rotate`: create or rotate a cluster's CA, etcd server and client certificates.

Parses and validates arguments, then calls clustermesh.certs; prints each file written or kept. Errors reach
cli.main, which maps them: 2 invalid input (name, SAN), 1 unusable existing material.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from clustermesh import certs, identity


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `certs` and its actions."""
    parser = subparsers.add_parser("certs", help="create and rotate a cluster's TLS certificates")
    actions = parser.add_subparsers(dest="certs_action", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init", help="create the CA, etcd server and client certificates (keeps existing ones)"
    )
    _add_common(init)
    init.add_argument(
        "--san", action="append", default=[], metavar="HOST",
        help="extra DNS name or IP address for the server certificate (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="replace everything, including the CA")
    init.set_defaults(handler=run_init)

    rotate = actions.add_parser("rotate", help="re-issue server and client certificates from the existing CA")
    _add_common(rotate)
    rotate.set_defaults(handler=run_rotate)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, type=pathlib.Path, help="directory holding the files")
    parser.add_argument("--cluster", required=True, help="cluster name (the etcd user names derive from it)")


def _report(result: certs.ClusterCerts) -> None:
    for path in result.written:
        sys.stdout.write(f"wrote {path}\n")
    for path in result.kept:
        sys.stdout.write(f"kept  {path}\n")
    sys.stdout.flush()


def run_init(args: argparse.Namespace) -> int:
    """Handle `certs init`: 0 done, 2 invalid name or SAN, 1 existing files unusable (message on stderr)."""
    _report(certs.init_cluster(args.dir, identity.validate_cluster_name(args.cluster), sans=args.san,
                               force=args.force))
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    """Handle `certs rotate`: 0 done, 2 invalid name, 1 no usable CA in the directory (message on stderr)."""
    _report(certs.rotate(args.dir, identity.validate_cluster_name(args.cluster)))
    return 0
