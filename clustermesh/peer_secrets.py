"""Peer Secrets as mesh config: the peers a ClusterMesh resource declares, as the PeerConfigs an agent dials.

A peer Secret (clustermesh.connect's format: cluster.id, cluster.name, cluster.secret, endpoints, ca.crt,
tls.crt, tls.key) says what a mesh-config directory says with files, and EtcdConfig takes file paths (TLS
material is read again at every dial). PeerSecretFiles therefore writes each peer exactly as a local trust
exchange does — connect.write_peer_files: Cilium's peer file plus its CA and `remote` pair, keys 0600, each
file atomically and only when its content changed — into a private directory (0700), and reads it back with
mesh_config.load_peer_file: one conversion, the same checks as `--mesh-config` and `clustermesh deploy
mesh-config`. A config's digest covers the certificates and key it names, so any update of the Secret (an
endpoint, a re-issued pair, a new CA) reconnects the peer.

What cannot be used is reported per peer, never raised, and never disturbs the other peers: a peer without
a Secret (the watcher says why) has no config, and its files are removed; a Secret that fails to convert
(a missing key, a pair that does not match, the Secret of another cluster) keeps the peer's last good config,
as a half-written peer file does with --mesh-config, so a bad update never disconnects a peer.

ClusterMeshPeers composes the watcher (clustermesh.kube.cluster_mesh) with these files: the agent's
`--clustermesh-resource`. It owns the private directory, which is removed with everything in it when it stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from clustermesh import connect, mesh_config
from clustermesh.aio import tasks
from clustermesh.errors import CertificateError, ConfigError
from clustermesh.kube import cluster_mesh
from clustermesh.mesh_config import PeerConfig

if TYPE_CHECKING:
    from clustermesh.kube import kubernetes_api

log = logging.getLogger(__name__)

OnChange = Callable[[dict[str, PeerConfig], dict[str, str]], None]
"""Called with the usable peers' configs and, per unusable declared peer, why (see Resolution)."""


class Resolution(NamedTuple):
    """What a set of declared peers amounts to: configs to connect with, and why the others cannot be used.

    A peer whose Secret update failed to convert is in both: its last good config, and the reason.
    """

    configs: dict[str, PeerConfig]
    problems: dict[str, str]


class PeerSecretFiles:
    """Peer Secrets turned into PeerConfigs whose TLS files live in `directory` (see the module docstring).

    The directory must exist and be private to this process; nothing else may write into it. Not thread-safe:
    one resolve() at a time. Its blocking file I/O belongs in a worker thread.
    """

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self._configs: dict[str, PeerConfig] = {}
        self._reported: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<PeerSecretFiles {self.directory} peers={sorted(self._configs)}>"

    def resolve(self, peers: Mapping[str, cluster_mesh.PeerSecret]) -> Resolution:
        """The configs of `peers` (the watcher's whole current set), after writing what changed. Blocking.

        Files of peers that are no longer configured are removed. Each distinct problem is logged once.
        """
        configs: dict[str, PeerConfig] = {}
        problems: dict[str, str] = {}
        for cluster, peer in peers.items():
            if peer.secret is None:
                problems[cluster] = peer.problem
                continue
            try:
                configs[cluster] = self._write(cluster, peer.secret)
            except (ConfigError, CertificateError) as exc:
                previous = self._configs.get(cluster)
                if previous is None:
                    problems[cluster] = str(exc)
                else:
                    configs[cluster] = previous
                    problems[cluster] = f"{exc}; keeping the previous configuration"
        for cluster in self._configs.keys() - configs.keys():
            connect.remove_peer_files(self.directory, cluster)
        self._configs = configs
        for cluster, problem in problems.items():
            if self._reported.get(cluster) != problem:
                log.warning("event=peer_secrets.unusable cluster=%s reason=%r", cluster, problem)
        self._reported = problems
        return Resolution(dict(configs), dict(problems))

    def _write(self, cluster: str, secret: dict[str, Any]) -> PeerConfig:
        trust = connect.trust_from_secret(secret)
        if trust.name != cluster:
            metadata = secret.get("metadata") or {}
            raise ConfigError(
                f"Secret {metadata.get('namespace', '?')}/{metadata.get('name', '?')} describes cluster "
                f"{trust.name!r}, not {cluster!r}"
            )
        connect.write_peer_files(self.directory, trust)
        return mesh_config.load_peer_file(self.directory / cluster)


class ClusterMeshPeers:
    """The peers the ClusterMesh resources declare, as PeerConfigs: on_change(configs, problems) after each change.

    Secrets are read from `namespace` only; the private TLS directory is created in `tls_root` (default: the
    system's temporary directory; in a container, a memory-backed volume keeps keys off the node's disk).
    """

    def __init__(
        self,
        kubeconfig: pathlib.Path | None,
        *,
        namespace: str,
        local_cluster: str,
        on_change: OnChange,
        tls_root: pathlib.Path | None = None,
        options: kubernetes_api.KubernetesAPIOptions | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.local_cluster = local_cluster
        self.tls_root = tls_root
        self.options = options
        self._on_change = on_change
        self.directory: pathlib.Path | None = None
        """The private TLS directory while run() runs."""

    def __repr__(self) -> str:
        return f"<ClusterMeshPeers namespace={self.namespace} directory={self.directory}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Create the private directory, deliver the initial peers, set `ready`, then every change; until cancelled.

        Raises ConfigError if the directory cannot be created or the Kubernetes configuration cannot be loaded,
        RuntimeError if already running; an exception from on_change propagates. When run() ends, however it
        ends, the directory is removed with everything in it.
        """
        if self.directory is not None:
            raise RuntimeError(f"{self!r} is already running")
        try:
            directory = pathlib.Path(tempfile.mkdtemp(prefix="clustermesh-peers-", dir=self.tls_root))
        except OSError as exc:
            raise ConfigError(f"cannot create a private directory in {self.tls_root or 'the temporary directory'} "
                              f"for the peers' certificates: {exc.strerror}") from None
        self.directory = directory
        files = PeerSecretFiles(directory)
        # One worker: files are written one resolve() at a time, and the removal below queues behind a write that
        # a cancellation left running in its thread.
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="peer-secrets")
        loop = asyncio.get_running_loop()

        async def apply(peers: dict[str, cluster_mesh.PeerSecret]) -> None:
            resolution = await loop.run_in_executor(executor, files.resolve, peers)
            self._on_change(resolution.configs, resolution.problems)

        watcher = cluster_mesh.ClusterMeshWatcher(
            self.kubeconfig, namespace=self.namespace, local_cluster=self.local_cluster, on_change=apply,
            options=self.options,
        )
        log.info("event=peer_secrets.started namespace=%s directory=%s", self.namespace, directory)
        try:
            await watcher.run(ready=ready)
        finally:
            removal = loop.run_in_executor(executor, functools.partial(shutil.rmtree, directory, ignore_errors=True))
            executor.shutdown(wait=False)
            try:
                await tasks.wait_ended([removal])
            finally:
                self.directory = None
