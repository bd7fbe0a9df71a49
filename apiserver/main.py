"""Command line of the apiserver: flags and a YAML file (flags win) → Config, then the daemon until stopped.

    clustermesh-apiserver --cluster-name NAME --cluster-id ID
        --etcd-endpoints URL[,URL] --etcd-ca F --etcd-cert F --etcd-key F
        --source manifests:DIR | kubernetes[:KUBECONFIG]
        [--max-connected-clusters 255|511] [--grpc-listen ADDR] [--metrics-listen ADDR] [--health-listen ADDR]
        [--config FILE]

Any invalid flag or setting prints one line, `clustermesh-apiserver: error: <what and which value>`, and exits
with status 2. Otherwise the exit status is 0 after SIGTERM/SIGINT and 1 if the daemon failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import yaml

from apiserver import config, daemon
from clustermesh.cli import etcd_options
from clustermesh.errors import ConfigError

PROG = "clustermesh-apiserver"
EXIT_USAGE = 2
LOG_FORMAT = "time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors (reported as one line), not usage dumps."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    """The flags; every default is None so that the config file can fill what was not given."""
    parser = _Parser(prog=PROG, description="Publish this cluster's state into its etcd for Cluster Mesh peers.")
    parser.add_argument("--config", type=pathlib.Path, metavar="FILE", help="YAML file with the same settings")
    for setting in config.SETTINGS:
        if setting.name.startswith("etcd-"):
            continue
        shown = str(setting.default).lower() if isinstance(setting.default, bool) else setting.default
        default = "" if setting.default is None else f" (default: {shown})"
        parser.add_argument(setting.flag, dest=setting.dest, metavar="VALUE", help=setting.help + default)
    etcd_options.add_arguments(parser, required=False)
    return parser


def load_file(path: pathlib.Path) -> dict[str, Any]:
    """The settings of a YAML config file, keyed by Setting.dest; ConfigError naming the file and the problem."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config: {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"--config: {path} must hold a mapping of settings")
    values = {}
    for name, value in document.items():
        setting = config.SETTINGS_BY_NAME.get(str(name))
        if setting is None:
            raise ConfigError(f"--config: {path}: unknown setting {name!r}")
        values[setting.dest] = value
    return values


def parse(argv: Sequence[str] | None = None) -> config.Config:
    """The configuration from argv (default sys.argv[1:]); ConfigError if anything is invalid."""
    args = build_parser().parse_args(argv)
    values = load_file(args.config) if args.config is not None else {}
    for setting in config.SETTINGS:
        given = getattr(args, setting.dest)
        if given is not None:
            values[setting.dest] = given
    return config.build(values)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the apiserver; the exit status as documented in the module docstring."""
    try:
        settings = parse(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT, stream=sys.stderr)
    return asyncio.run(daemon.run(settings))
