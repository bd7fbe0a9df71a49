"""A cluster's mesh secret and the WireGuard pre-shared key a pair of clusters derives from their two secrets.

Every cluster holds `cluster.secret`: 32 random bytes created with its certificates (beside them, as
`<certs dir>/cluster.secret`, mode 0600) and handed to each peer by `clustermesh connect` (the `cluster.secret`
key of the peer Secret). Two clusters that trust each other both know both secrets, so each can derive, on
its own, the same pre-shared key for the WireGuard tunnels between their nodes: HKDF-SHA256 (RFC 5869) over the
two secrets in byte order, which makes the key independent of which side computes it, and different for every
pair. The PSK adds a symmetric layer on top of WireGuard's Curve25519 handshake, keyed by the pair's trust
rather than by any single node's key.

Does not own: certificates (clustermesh.certs), the exchange itself (clustermesh.connect), node keys.
Never log what this module returns.
"""

# STABLE WIRE FORMAT: the derivation (salt, info, input order) must never change, or two clusters running
# different versions would derive different keys and their tunnels would fail the handshake.

from __future__ import annotations

import base64
import binascii
import pathlib
import secrets

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clustermesh import certs, errors

SECRET_FILE = "cluster.secret"
"""The file name of a cluster's secret inside its certificates directory."""

SECRET_BYTES = 32
PSK_BYTES = 32
"""WireGuard's pre-shared keys are 32 bytes, written in base64 (`wg genpsk`)."""

_PSK_SALT = b"clustermesh wireguard psk v1"
_PSK_INFO = b"clustermesh pair psk"


def secret_path(certs_dir: pathlib.Path) -> pathlib.Path:
    """Where the cluster secret of a certificates directory lives."""
    return certs_dir / SECRET_FILE


def ensure_cluster_secret(certs_dir: pathlib.Path) -> bytes:
    """The cluster's secret, created (32 random bytes, mode 0600) if the directory has none yet.

    Idempotent: an existing secret is kept, so a second `clustermesh up` keeps the keys of every pair.
    Raise CertificateError if an existing file is not a valid secret or cannot be read or written.
    """
    path = secret_path(certs_dir)
    if path.exists():
        return load_cluster_secret(path)
    value = secrets.token_bytes(SECRET_BYTES)
    certs.write_atomic(path, value, mode=0o600)
    return value


def load_cluster_secret(path: pathlib.Path) -> bytes:
    """Read a secret file (raw 32 bytes, or their base64 as in a Secret volume); CertificateError otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.CertificateError(f"cannot read cluster secret {path}: {exc.strerror}") from exc
    try:
        return parse_secret(data)
    except ValueError as exc:
        raise errors.CertificateError(f"{path}: {exc}") from None


def parse_secret(data: bytes) -> bytes:
    """A cluster secret from its raw 32 bytes or their base64 text; ValueError for anything else."""
    if len(data) == SECRET_BYTES:
        return data
    try:
        decoded = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        decoded = b""
    if len(decoded) != SECRET_BYTES:
        raise ValueError(f"a cluster secret is {SECRET_BYTES} bytes (raw or base64), got {len(data)} bytes")
    return decoded


def derive_psk(secret_a: bytes, secret_b: bytes) -> bytes:
    """The 32-byte WireGuard PSK of the pair of clusters holding secret_a and secret_b.

    Symmetric: derive_psk(a, b) == derive_psk(b, a). ValueError if a secret is not 32 bytes, or if both are
    equal (a cluster has no tunnel to itself, and two clusters sharing a secret share no trust boundary).
    """
    for secret in (secret_a, secret_b):
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a cluster secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if secret_a == secret_b:
        raise ValueError("both clusters hold the same secret: a pair needs two distinct cluster secrets")
    # Byte order, not argument order: both sides feed HKDF the same input. The secrets have a fixed length,
    # so plain concatenation is unambiguous.
    low, high = sorted((secret_a, secret_b))
    return HKDF(algorithm=hashes.SHA256(), length=PSK_BYTES, salt=_PSK_SALT, info=_PSK_INFO).derive(low + high)


def psk_base64(secret_a: bytes, secret_b: bytes) -> str:
    """derive_psk as `wg` writes a key: base64 of the 32 bytes."""
    return base64.b64encode(derive_psk(secret_a, secret_b)).decode("ascii")

