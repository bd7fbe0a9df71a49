"""Certificate authority: create a cluster's CA and issue the server and client certificates signed by it.

Owns the trust material of one cluster on disk (reference §4.2): `ca`, the etcd `server` pair, and the client
pairs whose CN is the etcd user they authenticate as (`admin-<cluster>`, `remote`, `local-<cluster>`).
Every file is written atomically (temp file + rename) and private keys are created with mode 0600, so a reader
(etcd, an agent, CertificateWatcher) never sees a half-written or world-readable file.
Does not own: loading material for connections or watching it for rotation (clustermesh.tls), etcd users and
roles (clustermesh.etcd.access).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
import re
import secrets
from collections.abc import Iterable, Sequence

from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clustermesh import errors, tls

# Cilium's chart issues leaves for 1095 days; the CA outlives several leaf rotations.
LEAF_VALIDITY = datetime.timedelta(days=1095)
CA_VALIDITY = datetime.timedelta(days=3650)
# Tolerate clocks that lag the issuer's a little.
_BACKDATE = datetime.timedelta(minutes=5)

# Names every server certificate carries: loopback for local meshes and tests, and the name peers dial
# (`https://<cluster>.mesh.cilium.io:<port>`, Cilium's default clustermesh domain).
_LOOPBACK_SANS = ("localhost", "127.0.0.1", "::1")
MESH_DOMAIN = "mesh.cilium.io"

REMOTE_USER = "remote"

_DNS_LABEL = re.compile(r"^(\*|[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)$")

PrivateKey = ec.EllipticCurvePrivateKey


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key, able to sign leaves."""

    cert: x509.Certificate
    key: PrivateKey


@dataclasses.dataclass(frozen=True)
class Leaf:
    """An issued certificate with its private key."""

    cert: x509.Certificate
    key: PrivateKey


@dataclasses.dataclass(frozen=True)
class ClusterCerts:
    """Where a cluster's trust material lives, and which files the last init/rotate wrote or kept."""

    dir: pathlib.Path
    cluster: str
    server: tls.TLSFiles
    admin: tls.TLSFiles
    remote: tls.TLSFiles
    local: tls.TLSFiles
    written: tuple[pathlib.Path, ...] = ()
    kept: tuple[pathlib.Path, ...] = ()

    @property
    def ca(self) -> pathlib.Path:
        """The CA bundle every pair of this cluster trusts."""
        return self.server.ca


@dataclasses.dataclass(frozen=True)
class _LeafSpec:
    """How one leaf of a cluster is named and issued."""

    stem: str
    common_name: str
    server: bool


def _cluster_leaves(cluster: str) -> tuple[_LeafSpec, ...]:
    return (
        # CNs are at most 64 characters: this one fits every valid (<= 32 characters) cluster name.
        _LeafSpec("server", f"clustermesh-apiserver.{cluster}", server=True),
        _LeafSpec("admin", f"admin-{cluster}", server=False),
        _LeafSpec("remote", REMOTE_USER, server=False),
        _LeafSpec("local", f"local-{cluster}", server=False),
    )


def pair_files(directory: pathlib.Path, stem: str) -> tls.TLSFiles:
    """The TLSFiles of pair `stem` in a cluster directory (ca.crt, STEM.crt, STEM.key)."""
    return tls.TLSFiles(
        ca=directory / "ca.crt", cert=directory / f"{stem}.crt", key=directory / f"{stem}.key"
    )


def _cluster_certs(
    directory: pathlib.Path, cluster: str, written: Iterable[pathlib.Path], kept: Iterable[pathlib.Path]
) -> ClusterCerts:
    return ClusterCerts(
        dir=directory,
        cluster=cluster,
        server=pair_files(directory, "server"),
        admin=pair_files(directory, "admin"),
        remote=pair_files(directory, "remote"),
        local=pair_files(directory, "local"),
        written=tuple(written),
        kept=tuple(kept),
    )


# --- issuing ------------------------------------------------------------------------------------------


def _new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def create_ca(common_name: str) -> CertificateAuthority:
    """A new self-signed CA (EC P-256) that may sign leaves only."""
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=key)


def parse_san(text: str) -> x509.GeneralName:
    """An IP address or DNS name (wildcard only as first label); raise ConfigError on a malformed one."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.split(".")
    wildcard_misplaced = "*" in labels[1:] or labels == ["*"]
    if len(text) > 253 or wildcard_misplaced or not all(_DNS_LABEL.match(label) for label in labels):
        raise errors.ConfigError(f"invalid subject alternative name {text!r}: not an IP address or DNS name")
    return x509.DNSName(text.lower())


def _issue(
    ca: CertificateAuthority, common_name: str, usages: Sequence[x509.ObjectIdentifier],
    sans: Sequence[x509.GeneralName],
) -> Leaf:
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return Leaf(cert=builder.sign(ca.key, hashes.SHA256()), key=key)


def issue_server(ca: CertificateAuthority, common_name: str, *, sans: Iterable[str] = ()) -> Leaf:
    """A server certificate for localhost, 127.0.0.1, ::1 and `sans`; raise ConfigError on a malformed SAN.

    It also carries clientAuth: etcd's gRPC gateway dials etcd itself with the server certificate.
    """
    names: list[x509.GeneralName] = []
    for text in (*_LOOPBACK_SANS, *sans):
        name = parse_san(text)
        if name not in names:
            names.append(name)
    usages = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    return _issue(ca, common_name, usages, names)


def issue_client(ca: CertificateAuthority, user: str) -> Leaf:
    """A client certificate whose CN is the etcd user it authenticates as."""
    if not user:
        raise ValueError("a client certificate needs a user name")
    return _issue(ca, user, (ExtendedKeyUsageOID.CLIENT_AUTH,), ())


# --- files ---------------------------------------------------------------------------------------------


def write_atomic(path: pathlib.Path, data: bytes, *, mode: int) -> None:
    """Replace path with data in one rename; the file is created with `mode`, never wider, even briefly.

    Raise CertificateError naming the file when it cannot be written.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise errors.CertificateError(f"cannot write {path}: {exc.strerror}") from exc


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_pair(
    cert_path: pathlib.Path, key_path: pathlib.Path, cert: x509.Certificate, key: PrivateKey
) -> None:
    # Key first: a reader that sees the new certificate with the old key rejects the pair and retries, and the
    # window is one rename wide either way.
    write_atomic(key_path, _key_pem(key), mode=0o600)
    write_atomic(cert_path, _cert_pem(cert), mode=0o644)


def _read_cert(path: pathlib.Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise errors.CertificateError(f"cannot read certificate {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise errors.CertificateError(f"{path} is not a PEM certificate: {exc}") from exc


def load_ca(directory: pathlib.Path) -> CertificateAuthority:
    """The CA in directory (ca.crt, ca.key); raise CertificateError if missing, unreadable or mismatched."""
    cert = _read_cert(directory / "ca.crt")
    key_path = directory / "ca.key"
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise errors.CertificateError(f"cannot read CA key {key_path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise errors.CertificateError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise errors.CertificateError(f"{key_path} is not the key of {directory / 'ca.crt'}")
    return CertificateAuthority(cert=cert, key=key)


def _signed_by(cert_path: pathlib.Path, ca: CertificateAuthority) -> bool:
    try:
        _read_cert(cert_path).verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, exceptions.InvalidSignature):
        return False
    return True


def issue_client_files(directory: pathlib.Path, user: str, *, stem: str | None = None) -> tls.TLSFiles:
    """Issue a client pair for `user` from the CA in directory as STEM.crt/STEM.key (STEM defaults to user).

    Overwrites an existing pair of that name; raise CertificateError if the CA cannot be loaded.
    """
    ca = load_ca(directory)
    files = pair_files(directory, stem or user)
    leaf = issue_client(ca, user)
    _write_pair(files.cert, files.key, leaf.cert, leaf.key)
    return files


def init_cluster(
    directory: pathlib.Path, cluster: str, *, sans: Iterable[str] = (), force: bool = False
) -> ClusterCerts:
    """Create the CA and the server/admin/remote/local pairs of `cluster` in directory.

    Idempotent: existing material is kept, and a missing pair is issued from the existing CA; force=True
    replaces everything with a new CA. Raise CertificateError when kept files cannot be used (half a CA, a
    pair not signed by the CA) and ConfigError for a malformed SAN.
    """
    if not cluster:
        raise ValueError("cluster name must not be empty")
    sans = tuple(sans)
    for text in sans:
        parse_san(text)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.CertificateError(f"cannot create directory {directory}: {exc.strerror}") from exc
    ca_files = (directory / "ca.crt", directory / "ca.key")
    written: list[pathlib.Path] = []
    kept: list[pathlib.Path] = []
    present = [path.exists() for path in ca_files]
    if force or not any(present):
        ca = create_ca(f"clustermesh CA {cluster}")
        _write_pair(ca_files[0], ca_files[1], ca.cert, ca.key)
        written += ca_files
    elif not all(present):
        missing = ca_files[present.index(False)]
        raise errors.CertificateError(
            f"{missing} is missing but its pair exists: restore it, or re-create everything with --force"
        )
    else:
        ca = load_ca(directory)
        kept += ca_files
    for spec in _cluster_leaves(cluster):
        files = pair_files(directory, spec.stem)
        if not force and files.cert.exists() and files.key.exists():
            if not _signed_by(files.cert, ca):
                raise errors.CertificateError(
                    f"{files.cert} is not signed by {ca_files[0]}: re-create everything with --force"
                )
            kept += (files.cert, files.key)
            continue
        if spec.server:
            leaf = issue_server(ca, spec.common_name, sans=(f"{cluster}.{MESH_DOMAIN}", *sans))
        else:
            leaf = issue_client(ca, spec.common_name)
        _write_pair(files.cert, files.key, leaf.cert, leaf.key)
        written += (files.cert, files.key)
    return _cluster_certs(directory, cluster, written, kept)


def _extra_sans(cert: x509.Certificate) -> list[str]:
    """The SANs of a server certificate beyond the loopback names every server certificate carries."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    texts = [*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))]
    return [text for text in texts if text not in _LOOPBACK_SANS]


def rotate(directory: pathlib.Path, cluster: str) -> ClusterCerts:
    """Re-issue the server and client pairs of `cluster` from its existing CA, keeping the server's SANs.

    Peers keep trusting the cluster (same CA); processes pick the new pairs up through CertificateWatcher
    or tls.server_credentials. Raise CertificateError if the CA cannot be loaded.
    """
    if not (directory / "ca.crt").exists():
        raise errors.CertificateError(f"no CA in {directory}: create one with `clustermesh certs init`")
    ca = load_ca(directory)
    written: list[pathlib.Path] = []
    for spec in _cluster_leaves(cluster):
        files = pair_files(directory, spec.stem)
        if spec.server:
            sans = _extra_sans(_read_cert(files.cert)) if files.cert.exists() else []
            leaf = issue_server(ca, spec.common_name, sans=sans)
        else:
            leaf = issue_client(ca, spec.common_name)
        _write_pair(files.cert, files.key, leaf.cert, leaf.key)
        written += (files.cert, files.key)
    return _cluster_certs(directory, cluster, written, (directory / "ca.crt", directory / "ca.key"))
