"""The etcd connection flags shared by every command and daemon that talks to an etcd directly."""

from __future__ import annotations

import argparse
import pathlib

from clustermesh import errors, tls
from clustermesh.etcd import client as etcd_client
from clustermesh.local_mesh import mesh_file


def add_arguments(parser: argparse.ArgumentParser, *, required: bool = True, local_mesh: bool = False) -> None:
    """Add --etcd-endpoints/--etcd-ca/--etcd-cert/--etcd-key (and --etcd-server-name) to parser.

    With local_mesh, also --mesh DIR --cluster NAME: the etcd and admin credentials of a cluster started by
    `clustermesh up --dir DIR`, so an operator need not spell out certificate paths.
    """
    group = parser.add_argument_group("etcd connection")
    group.add_argument("--etcd-endpoints", required=required and not local_mesh, metavar="URL[,URL]",
                       help="etcd client URLs, e.g. https://127.0.0.1:2379")
    if local_mesh:
        group.add_argument("--mesh", type=pathlib.Path, metavar="DIR",
                           help="a local mesh directory (clustermesh up --dir); use with --cluster")
        group.add_argument("--cluster", metavar="NAME", help="the cluster of --mesh whose etcd to read")
    group.add_argument("--etcd-ca", type=pathlib.Path, metavar="FILE", help="CA bundle to verify etcd")
    group.add_argument("--etcd-cert", type=pathlib.Path, metavar="FILE", help="client certificate")
    group.add_argument("--etcd-key", type=pathlib.Path, metavar="FILE", help="client private key")
    group.add_argument("--etcd-server-name", metavar="NAME", help="TLS server name to expect (SNI override)")


def config_from_args(args: argparse.Namespace) -> etcd_client.EtcdConfig:
    """Build an EtcdConfig from parsed flags; raise ConfigError naming what is missing or wrong."""
    if getattr(args, "mesh", None) is not None:
        return _from_local_mesh(args)
    endpoints = tuple(e.strip() for e in (args.etcd_endpoints or "").split(",") if e.strip())
    if not endpoints:
        raise errors.ConfigError("--etcd-endpoints: at least one endpoint URL is required")
    for endpoint in endpoints:
        if not endpoint.startswith(("https://", "http://", "unix://", "unixs://")):
            raise errors.ConfigError(f"--etcd-endpoints: {endpoint!r} is not an http(s):// or unix:// URL")
    paths = {"--etcd-ca": args.etcd_ca, "--etcd-cert": args.etcd_cert, "--etcd-key": args.etcd_key}
    given = {flag: path for flag, path in paths.items() if path is not None}
    files = None
    if given:
        missing = [flag for flag in paths if flag not in given]
        if missing:
            raise errors.ConfigError(f"{', '.join(missing)} required together with {', '.join(given)}")
        for flag, path in given.items():
            if not path.is_file():
                raise errors.ConfigError(f"{flag}: no such file {path}")
        files = tls.TLSFiles(ca=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key)
    elif any(e.startswith(("https://", "unixs://")) for e in endpoints):
        raise errors.ConfigError("--etcd-ca, --etcd-cert and --etcd-key are required for https:// endpoints")
    return etcd_client.EtcdConfig(endpoints=endpoints, tls=files, server_name=args.etcd_server_name)


def _from_local_mesh(args: argparse.Namespace) -> etcd_client.EtcdConfig:
    if not args.cluster:
        raise errors.ConfigError("--mesh needs --cluster NAME (which cluster's etcd to read)")
    if args.etcd_endpoints:
        raise errors.ConfigError("--mesh and --etcd-endpoints exclude each other")
    etcd = mesh_file.load(args.mesh).cluster(args.cluster).etcd
    files = tls.TLSFiles(ca=pathlib.Path(etcd.ca), cert=pathlib.Path(etcd.cert), key=pathlib.Path(etcd.key))
    return etcd_client.EtcdConfig(endpoints=tuple(etcd.endpoints), tls=files)
