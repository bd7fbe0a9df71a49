"""`clustermesh etcd init`: prepare a cluster's etcd for the mesh — Cilium's users and roles, then auth on.

The Kubernetes deployment runs it as the `etcd-init` init container of the apiserver Pod, after the etcd sidecar
started and before the apiserver does (deploy/kubernetes/). It waits for etcd to answer, up to a deadline, since
the sidecar may still be starting; then clustermesh.etcd.access applies the policy. Applying is idempotent, so a
restart over persistent data (a PVC) runs it again harmlessly: unlike Cilium's etcdinit, which needs a blank etcd.

It authenticates with the `admin-<cluster>` certificate: before auth is enabled any certificate may do
everything, and afterwards that user holds the root role. Exit codes (cli.main): 0 the etcd matches the policy,
1 etcd did not answer before the deadline or refused a change, 2 invalid flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from clustermesh import errors, identity
from clustermesh.aio import backoff
from clustermesh.cli import etcd_options
from clustermesh.etcd import access
from clustermesh.etcd import client as etcd_client

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
# One dial attempt; short, so that the deadline is honoured closely while etcd is still starting.
_ATTEMPT_TIMEOUT = 2.0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `etcd` and its action `init`."""
    parser = subparsers.add_parser("etcd", help="prepare a cluster's etcd for the mesh")
    actions = parser.add_subparsers(dest="etcd_action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init",
        help="create Cilium's etcd users and roles and enable auth (idempotent; waits for etcd)",
        description="Create the etcd users and roles of reference §4.3 (root, admin-<cluster>, remote, "
                    "local-<cluster>) and enable authentication. Safe to run on every start.",
    )
    init.add_argument("--cluster-name", required=True, metavar="NAME",
                      help="this cluster's name (the admin-<NAME> user and the remote role's keys derive from it)")
    etcd_options.add_arguments(init)
    init.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                      help=f"give up when etcd has not answered within this long (default {DEFAULT_TIMEOUT:g})")
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    """Handle `etcd init`: 0 applied (or already in place), 1 etcd unreachable or refusing, 2 invalid flags."""
    cluster = identity.validate_cluster_name(args.cluster_name)
    if not args.timeout > 0:
        raise errors.ConfigError(f"--timeout: must be a positive number of seconds, got {args.timeout}")
    config = etcd_options.config_from_args(args)
    applied = asyncio.run(initialise(config, cluster, timeout=args.timeout))
    sys.stdout.write(
        f"etcd ready for cluster {cluster}: {_listed(applied.roles_added)} roles added, "
        f"{_listed(applied.users_added)} users added, {len(applied.permissions_granted)} permissions granted, "
        "auth enabled\n"
    )
    return 0


def _listed(names: tuple[str, ...]) -> str:
    return f"{len(names)} ({', '.join(names)})" if names else "0"


async def initialise(config: etcd_client.EtcdConfig, cluster: str, *, timeout: float) -> access.Applied:
    """Wait for etcd to answer, then apply the policy of `cluster`; all within `timeout` seconds.

    Raises StoreTimeout when the deadline passes first (naming the last connection error), and StoreError
    subclasses when etcd refuses a change; a partial application is completed by the next run.
    """
    attempts: list[errors.StoreError] = []
    try:
        async with asyncio.timeout(timeout):
            etcd = await _connect(config, attempts)
            async with etcd:
                return await access.apply(etcd, access.policy(cluster))
    except TimeoutError:
        last = f" (last error: {attempts[-1]})" if attempts else ""
        raise errors.StoreTimeout(
            f"etcd at {', '.join(config.endpoints)} was not ready and initialised within {timeout:g}s{last}; "
            "check the etcd container's log and that the client certificate is signed by etcd's CA"
        ) from None


async def _connect(config: etcd_client.EtcdConfig, attempts: list[errors.StoreError]) -> etcd_client.EtcdClient:
    """Dial until etcd answers, appending each failure to `attempts`; the caller's deadline bounds it.

    The only retry on this path: access.apply() is not retried, a failure there is reported as it is.
    """
    delays = backoff.Backoff(initial=0.2, maximum=2.0)
    while True:
        try:
            return await etcd_client.EtcdClient.connect(config, timeout=_ATTEMPT_TIMEOUT)
        except errors.StoreError as exc:
            attempts.append(exc)
            log.info("event=etcd_init.waiting endpoints=%s reason=%r", ",".join(config.endpoints), str(exc))
            await delays.wait()
