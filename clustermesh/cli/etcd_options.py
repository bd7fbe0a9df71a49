"""The etcd connection flags shared by every command and daemon that talks to an etcd directly."""

from __future__ import annotations

import argparse
import pathlib

from clustermesh import errors, tls
from clustermesh.etcd import client as etcd_client


def add_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Add --etcd-endpoints/--etcd-ca/--etcd-cert/--etcd-key (and --etcd-server-name) to parser."""
    group = parser.add_argument_group("etcd connection")
    group.add_argument("--etcd-endpoints", required=required, metavar="URL[,URL]",
                       help="etcd client URLs, e.g. https://127.0.0.1:2379")
    group.add_argument("--etcd-ca", type=pathlib.Path, metavar="FILE", help="CA bundle to verify etcd")
    group.add_argument("--etcd-cert", type=pathlib.Path, metavar="FILE", help="client certificate")
    group.add_argument("--etcd-key", type=pathlib.Path, metavar="FILE", help="client private key")
    group.add_argument("--etcd-server-name", metavar="NAME", help="TLS server name to expect (SNI override)")


def config_from_args(args: argparse.Namespace) -> etcd_client.EtcdConfig:
    """Build an EtcdConfig from parsed flags; raise ConfigError naming what is missing or wrong."""
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
