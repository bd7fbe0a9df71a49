"""TLS material: where certificate files are, reading them, and the credentials built from them.

The one place that loads certificates for clients and servers: gRPC channel credentials, gRPC server
credentials that pick up rotated files on the next handshake, an ssl.SSLContext for non-gRPC sockets, and
CertificateWatcher, which polls the files and tells a client when to re-dial with new material.
A rotation replaces the certificate and the key in two renames; every reloader here checks that the pair
matches before using it, so the moment between the two renames is skipped rather than served.
Creating certificates is clustermesh.certs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pathlib
import ssl
import threading
from typing import Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clustermesh import errors

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """Paths of a CA bundle and a certificate/key pair (client or server)."""

    ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path


@dataclasses.dataclass(frozen=True)
class TLSMaterial:
    """The bytes of a TLSFiles set, read at one moment."""

    ca: bytes
    cert: bytes
    key: bytes


def load(files: TLSFiles) -> TLSMaterial:
    """Read the three files; raise CertificateError naming the file that could not be read."""
    parts: dict[str, bytes] = {}
    for field in ("ca", "cert", "key"):
        path: pathlib.Path = getattr(files, field)
        try:
            parts[field] = path.read_bytes()
        except OSError as exc:
            raise errors.CertificateError(f"cannot read {field} file {path}: {exc.strerror}") from exc
    return TLSMaterial(**parts)


def channel_credentials(material: TLSMaterial) -> grpc.ChannelCredentials:
    """Client credentials for mutual TLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


def verify_pair(material: TLSMaterial) -> None:
    """Raise CertificateError unless CA bundle and certificate parse and the key matches the certificate."""
    try:
        x509.load_pem_x509_certificates(material.ca)
        cert = x509.load_pem_x509_certificates(material.cert)[0]
        key = serialization.load_pem_private_key(material.key, password=None)
    except (ValueError, TypeError) as exc:
        raise errors.CertificateError(f"unusable certificate material: {exc}") from exc
    if key.public_key() != cert.public_key():
        raise errors.CertificateError("the private key does not belong to the certificate")


def load_verified(files: TLSFiles) -> TLSMaterial:
    """load() then verify_pair(); raise CertificateError naming the files when the pair does not match."""
    material = load(files)
    try:
        verify_pair(material)
    except errors.CertificateError as exc:
        raise errors.CertificateError(f"{files.cert} / {files.key}: {exc}") from exc
    return material


# What changes when a file is replaced or rewritten; stat() follows symlinks, so a Kubernetes secret
# volume's symlink swap shows up as a new inode. None stands for a missing file.
_Stamp = tuple[tuple[int, int, int, int] | None, ...]


def _stamp(files: TLSFiles) -> _Stamp:
    stamps: list[tuple[int, int, int, int] | None] = []
    for path in (files.ca, files.cert, files.key):
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(stamps)


class _Reloader:
    """The last good material of a TLSFiles set, re-read only when the files' stamp changes.

    Shared by the server credentials' fetch callback and CertificateWatcher: both must skip unchanged files
    without reading them, and must never hand out a set that is inconsistent mid-rotation.
    """

    def __init__(self, files: TLSFiles) -> None:
        """Read and verify the files now; raise CertificateError if they are unusable."""
        self.files = files
        self.stamp = _stamp(files)
        self.material = load_verified(files)

    def reload(self) -> TLSMaterial | None:
        """New, consistent material if the files changed to some since the last call; None otherwise."""
        stamp = _stamp(self.files)
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        try:
            material = load_verified(self.files)
        except errors.CertificateError as exc:
            # Mid-rotation or a broken file: keep the last good material; the next change retries.
            log.warning("certificate files changed but are not usable yet, keeping the current ones: %s", exc)
            return None
        if material == self.material:
            return None
        self.material = material
        return material


def _server_configuration(material: TLSMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert)], root_certificates=material.ca
    )


class _ServerConfigurationFetcher:
    """The fetch callback of dynamic server credentials: a new configuration when the files changed to a
    consistent set, None (keep serving the current one) otherwise. gRPC calls it before every handshake,
    from its own threads, so it only stats the files unless they changed."""

    def __init__(self, files: TLSFiles) -> None:
        self._lock = threading.Lock()
        self._reloader = _Reloader(files)

    def initial(self) -> grpc.ServerCertificateConfiguration:
        return _server_configuration(self._reloader.material)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            material = self._reloader.reload()
        if material is None:
            return None
        log.info("server certificate reloaded from %s", self._reloader.files.cert)
        return _server_configuration(material)


def server_credentials(files: TLSFiles) -> grpc.ServerCredentials:
    """mTLS server credentials (client certificates required) that re-read the files when they change.

    New handshakes use new material; established connections keep theirs. Raise CertificateError if the
    files are unusable now.
    """
    fetcher = _ServerConfigurationFetcher(files)
    # gRPC documents None from the fetcher as "keep the current configuration"; the stubs omit it.
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial(), fetcher, require_client_authentication=True,  # type: ignore[arg-type]
    )


def ssl_context(files: TLSFiles, purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH) -> ssl.SSLContext:
    """An SSLContext for mutual TLS, read from the files now (no reload).

    SERVER_AUTH builds a client context (verifies the server against files.ca); CLIENT_AUTH builds a server
    context that requires a client certificate signed by files.ca.
    """
    try:
        context = ssl.create_default_context(purpose, cafile=str(files.ca))
        context.load_cert_chain(files.cert, files.key)
    except OSError as exc:
        raise errors.CertificateError(
            f"cannot use {files.cert} / {files.key} with CA {files.ca}: {exc}"
        ) from exc
    if purpose is ssl.Purpose.CLIENT_AUTH:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class OnChange(Protocol):
    """Called by CertificateWatcher with each new consistent material."""

    async def __call__(self, material: TLSMaterial, /) -> None: ...


class CertificateWatcher:
    """Polls a TLSFiles set and publishes each new, consistent version of its material.

    `version` counts published changes (0 is the material read when run() started); a client remembers the
    version it dialed with and re-dials when it moves. Only run() and check() mutate the watcher's state,
    from the one task that runs it.
    """

    def __init__(self, files: TLSFiles, *, interval: float = 2.0, on_change: OnChange | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.files = files
        self.interval = interval
        self._on_change = on_change
        self._version = 0
        self._reloader: _Reloader | None = None
        self._running = False

    def __repr__(self) -> str:
        return f"<CertificateWatcher {self.files.cert} version={self._version} running={self._running}>"

    @property
    def version(self) -> int:
        """How many times new material has been published since run() started."""
        return self._version

    @property
    def material(self) -> TLSMaterial:
        """The last published material; raise RuntimeError before run() has read the files."""
        if self._reloader is None:
            raise RuntimeError("CertificateWatcher.run() has not read the files yet")
        return self._reloader.material

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Read the files, set `ready`, then poll every `interval` until cancelled.

        Raise CertificateError if the files are unusable at start, RuntimeError if already running; an
        exception from on_change propagates out of run().
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        try:
            self._reloader = _Reloader(self.files)
            self._version = 0
            if ready is not None:
                ready.set()
            while True:
                await asyncio.sleep(self.interval)
                await self.check()
        finally:
            self._running = False

    async def check(self) -> bool:
        """Poll once now (run() calls it every interval); return whether new material was published.

        Only valid while run() is active; unchanged files are not re-read, an inconsistent set is skipped.
        """
        if self._reloader is None:
            raise RuntimeError("CertificateWatcher.check() needs run() to have read the files")
        material = self._reloader.reload()
        if material is None:
            return False
        self._version += 1
        log.info("certificate material changed: %s (version %d)", self.files.cert, self._version)
        if self._on_change is not None:
            await self._on_change(material)
        return True
