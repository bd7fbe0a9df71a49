"""The `clustermesh` operator command: parse arguments, dispatch to a subcommand, map errors to exit codes.

Exit codes scripts can trust: 0 success, 1 a runtime failure (etcd unreachable, a check failed),
2 invalid usage or configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from clustermesh import __version__, errors
from clustermesh.cli import agent_commands, certs, connect, deploy, drill, etcd_init, kv, output, up, wireguard

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

SUBCOMMANDS = (certs, kv, agent_commands, deploy, etcd_init, up, connect, wireguard, drill)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="clustermesh", description="Operate a Cilium-compatible cluster mesh."
    )
    parser.add_argument("--version", action="version", version=f"clustermesh {__version__}")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(args.handler(args))
    except errors.ConfigError as exc:
        output.error(str(exc))
        return EXIT_USAGE
    except errors.ClusterMeshError as exc:
        output.error(str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
