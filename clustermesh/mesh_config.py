"""Cilium's mesh-config directory: which peer clusters to connect to, and how to reach each one's etcd.

One file per peer (reference §4.1): the file name is the peer's cluster name, the content an etcd client YAML
with go.etcd.io `clientv3/yaml` keys — `endpoints`, `trusted-ca-file` (or the older `ca-file`), `cert-file`,
`key-file`; relative paths are resolved against the directory. As in Cilium, only regular files whose content
contains `endpoints:` are peer files (a Kubernetes secret volume also holds the certificates they name), and
the file named after the local cluster is ignored. Hidden entries (a secret volume's `..data` symlink and
timestamped directories) are skipped; everything else follows symlinks, so a secret update, which swaps
`..data` to a new directory, shows up as changed files.

load_peer_file() reads and validates one file. MeshConfigWatcher follows the directory and hands the whole
desired peer set to a callback after every change. Connecting to the peers is the agent's business.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import pathlib
from collections.abc import Callable
from typing import Any

import watchfiles
import yaml

from clustermesh import identity, tls
from clustermesh.aio import tasks
from clustermesh.errors import ConfigError
from clustermesh.etcd import client as etcd_client

log = logging.getLogger(__name__)

# Cilium's test for "this file describes a peer" (pkg/clustermesh/common/config.go).
_PEER_MARKER = b"endpoints:"
_SCHEMES = ("https://", "http://", "unixs://", "unix://")
_TLS_SCHEMES = ("https://", "unixs://")
_DEBOUNCE_MS = 50
_STEP_MS = 25
# watchfiles yields an empty batch after this long without events, and every batch triggers a stat-only
# rescan: that covers events the kernel dropped or never sends (network file systems, some volume plugins).
_RESCAN_INTERVAL_MS = 1000

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """How to reach one peer: its cluster name (the file name), its etcd, and a sha256 over the file's content
    and the content of the certificate files it names (so a rotation in place reconnects the peer)."""

    name: str
    etcd: etcd_client.EtcdConfig
    digest: str


def load_peer_file(path: pathlib.Path) -> PeerConfig:
    """Read and validate one peer file; ConfigError naming the file and the bad field otherwise.

    The certificate files it names must exist and be readable; their content is part of the digest, so a
    rotation in place is a new config. Keys of the etcd client YAML that clustermesh does not use are
    ignored, as etcd's loader ignores unknown ones.
    """
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return _parse(path, content)


def _parse(path: pathlib.Path, content: bytes) -> PeerConfig:
    if not identity.cluster_name_valid(path.name):
        raise ConfigError(
            f"{path}: file name {path.name!r} is not a valid cluster name (at most 32 of [a-z0-9-], "
            "alphanumeric at both ends); a peer file must be named after the peer's cluster"
        )
    try:
        document = yaml.load(content, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of etcd client settings, got {type(document).__name__}")
    endpoints = _endpoints(path, document.get("endpoints"))
    ca = _file_field(path, document, "trusted-ca-file") or _file_field(path, document, "ca-file")
    cert = _file_field(path, document, "cert-file")
    key = _file_field(path, document, "key-file")
    files = None
    if ca or cert or key:
        missing = [field for field, value in (("trusted-ca-file", ca), ("cert-file", cert), ("key-file", key))
                   if value is None]
        if missing:
            raise ConfigError(f"{path}: {', '.join(missing)} missing: mutual TLS needs a CA, a cert and a key")
        assert ca is not None and cert is not None and key is not None
        files = tls.TLSFiles(ca=ca, cert=cert, key=key)
    elif any(endpoint.startswith(_TLS_SCHEMES) for endpoint in endpoints):
        raise ConfigError(f"{path}: endpoints use TLS but trusted-ca-file, cert-file and key-file are not set")
    return PeerConfig(
        name=path.name,
        etcd=etcd_client.EtcdConfig(endpoints=endpoints, tls=files),
        digest=_digest(path, content, files),
    )


def _digest(path: pathlib.Path, content: bytes, files: tls.TLSFiles | None) -> str:
    digest = hashlib.sha256(content)
    for certificate_file in _tls_paths(files):
        try:
            digest.update(certificate_file.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read {certificate_file}: {exc.strerror}") from None
    return digest.hexdigest()


def _tls_paths(files: tls.TLSFiles | None) -> tuple[pathlib.Path, ...]:
    return () if files is None else (files.ca, files.cert, files.key)


def _endpoints(path: pathlib.Path, value: Any) -> tuple[str, ...]:
    # etcd's loader wants a list; a single URL string is accepted too, as hand-written files often have one.
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: endpoints: expected a non-empty list of URLs")
    for item in items:
        if not isinstance(item, str) or not item.startswith(_SCHEMES):
            raise ConfigError(f"{path}: endpoints: {str(item)[:80]!r} is not an https://, http:// or unix:// URL")
    return tuple(items)


def _file_field(path: pathlib.Path, document: dict[str, Any], field: str) -> pathlib.Path | None:
    value = document.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {field}: expected a file path, got {type(value).__name__}")
    resolved = path.parent / value
    if not resolved.is_file():
        raise ConfigError(f"{path}: {field}: no such file {resolved}")
    return resolved


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


# (device, inode, size, mtime) of the file a name resolves to; stat() follows symlinks, so a secret volume's
# `..data` swap changes it.
_Signature = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """What one directory entry was at its last read: a peer config, an error, or not a peer file (None).

    certificates holds the signatures of the certificate files a peer config names, taken when it was read:
    a rotation that rewrites them, and not the peer file, must be noticed too.
    """

    signature: _Signature
    outcome: PeerConfig | ConfigError | None
    certificates: tuple[_Signature | None, ...] = ()


class MeshConfigWatcher:
    """Follows a mesh-config directory and reports the desired peers after every change.

    on_change(desired) is called from run()'s task with every valid peer file's config, keyed by name: once
    at start, then whenever that set changes. A file that becomes unreadable or invalid is logged (file and
    reason, once per distinct reason) and its peer keeps the last good config, so a half-written update
    never disconnects a peer; a file that disappears or stops being a peer file removes its peer.
    """

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        local_cluster: str,
        on_change: Callable[[dict[str, PeerConfig]], None],
    ) -> None:
        self.directory = directory
        self.local_cluster = local_cluster
        self._on_change = on_change
        self._entries: dict[str, _Entry] = {}
        self._desired: dict[str, PeerConfig] = {}
        self._delivered: dict[str, PeerConfig] | None = None
        self._running = False

    def __repr__(self) -> str:
        return f"<MeshConfigWatcher {self.directory} peers={sorted(self._desired)} running={self._running}>"

    @property
    def desired(self) -> dict[str, PeerConfig]:
        """The peers of the last scan (a copy)."""
        return dict(self._desired)

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Scan, deliver, set `ready`, then follow the directory until cancelled.

        Raises ConfigError if the directory does not exist at start or cannot be listed later, RuntimeError
        if already running; an exception from on_change propagates. Cancellation stops the file watcher
        and waits for it.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        if not self.directory.is_dir():
            raise ConfigError(f"mesh-config directory {self.directory} does not exist")
        self._running = True
        stop = asyncio.Event()
        changed = asyncio.Event()
        watcher = asyncio.create_task(self._watch(changed, stop), name=f"watch mesh-config {self.directory}")
        try:
            await self._rescan()
            if ready is not None:
                ready.set()
            while True:
                await changed.wait()
                changed.clear()
                if watcher.done():
                    await watcher
                    raise ConfigError(f"the watcher of mesh-config directory {self.directory} ended")
                await self._rescan()
        finally:
            stop.set()
            await tasks.join(watcher)
            self._running = False

    async def _watch(self, changed: asyncio.Event, stop: asyncio.Event) -> None:
        try:
            async for _ in watchfiles.awatch(
                self.directory,
                watch_filter=None,
                debounce=_DEBOUNCE_MS,
                step=_STEP_MS,
                stop_event=stop,
                rust_timeout=_RESCAN_INTERVAL_MS,
                yield_on_timeout=True,
                recursive=False,
            ):
                changed.set()
        finally:
            changed.set()

    async def _rescan(self) -> None:
        # The scan only reads the file system and returns a value, so one abandoned by cancellation changes
        # nothing; it runs in a thread so a slow volume never stalls the event loop.
        entries = await asyncio.to_thread(_scan, self.directory, self.local_cluster, dict(self._entries))
        for name, entry in entries.items():
            previous = self._entries.get(name)
            if isinstance(entry.outcome, ConfigError) and (
                previous is None or str(previous.outcome) != str(entry.outcome)
            ):
                kept = "keeping its previous config" if name in self._desired else "not connecting"
                log.warning("event=mesh_config.invalid cluster=%s file=%s reason=%r action=%r",
                            name, self.directory / name, str(entry.outcome), kept)
        self._entries = entries
        desired: dict[str, PeerConfig] = {}
        for name, entry in entries.items():
            if isinstance(entry.outcome, PeerConfig):
                desired[name] = entry.outcome
            elif isinstance(entry.outcome, ConfigError) and name in self._desired:
                desired[name] = self._desired[name]
        self._desired = desired
        if desired != self._delivered:
            log.info("event=mesh_config.changed directory=%s peers=%s", self.directory, ",".join(sorted(desired)))
            self._delivered = dict(desired)
            self._on_change(dict(desired))


def _scan(directory: pathlib.Path, local_cluster: str, previous: dict[str, _Entry]) -> dict[str, _Entry]:
    """Every peer-file candidate of the directory; unchanged files keep their last outcome unless it failed."""
    entries: dict[str, _Entry] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"cannot list mesh-config directory {directory}: {exc.strerror}") from None
    for name in names:
        if name.startswith("."):
            continue
        path = directory / name
        try:
            st = path.stat()
        except OSError:
            continue  # a dangling symlink mid-swap, or removed since listdir
        if not path.is_file():
            continue
        signature = _signature(st)
        before = previous.get(name)
        if before is not None and before.signature == signature and _unchanged(before):
            entries[name] = before
            continue
        outcome = _read(path, local_cluster)
        entries[name] = _Entry(signature, outcome, _certificate_signatures(outcome))
    return entries


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _unchanged(entry: _Entry) -> bool:
    """True if the entry read well and none of the certificate files it names changed since."""
    return not isinstance(entry.outcome, ConfigError) and _certificate_signatures(entry.outcome) == entry.certificates


def _certificate_signatures(outcome: PeerConfig | ConfigError | None) -> tuple[_Signature | None, ...]:
    if not isinstance(outcome, PeerConfig):
        return ()
    signatures: list[_Signature | None] = []
    for certificate_file in _tls_paths(outcome.etcd.tls):
        try:
            signatures.append(_signature(certificate_file.stat()))
        except OSError:
            signatures.append(None)
    return tuple(signatures)


def _read(path: pathlib.Path, local_cluster: str) -> PeerConfig | ConfigError | None:
    try:
        content = path.read_bytes()
    except OSError as exc:
        return ConfigError(f"{path}: cannot read: {exc.strerror}")
    if _PEER_MARKER not in content:
        return None
    if path.name == local_cluster:
        log.debug("event=mesh_config.ignored file=%s reason=%r", path, "configuration of the local cluster")
        return None
    try:
        return _parse(path, content)
    except ConfigError as exc:
        return exc
