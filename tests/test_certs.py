"""clustermesh.certs and `clustermesh certs`: files, CNs, SANs, modes, idempotence, rotation, exit codes.

Certificates are inspected with `cryptography`; whether etcd accepts them is tests/integration/test_access.py.
"""

from __future__ import annotations

import ipaddress
import pathlib
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clustermesh import certs, errors, tls
from clustermesh.cli import main as cli_main

PAIRS = ("ca", "server", "admin", "remote", "local")


def _cert(path: pathlib.Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(path: pathlib.Path) -> str:
    return str(_cert(path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _usages(path: pathlib.Path) -> set[x509.ObjectIdentifier]:
    return set(_cert(path).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(path: pathlib.Path) -> tuple[set[str], set[str]]:
    names = _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return set(names.get_values_for_type(x509.DNSName)), ips


def _contents(directory: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_init_writes_every_pair(tmp_path: pathlib.Path) -> None:
    result = certs.init_cluster(tmp_path, "cluster-a")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(f"{stem}.{ext}" for stem in PAIRS for ext in ("crt", "key"))
    assert set(result.written) == {tmp_path / name for name in names}
    assert result.kept == ()
    assert result.ca == tmp_path / "ca.crt"
    assert result.admin == tls.TLSFiles(tmp_path / "ca.crt", tmp_path / "admin.crt", tmp_path / "admin.key")
    for files in (result.server, result.admin, result.remote, result.local):
        tls.load_verified(files)


def test_common_names_are_etcd_users(tmp_path: pathlib.Path) -> None:
    result = certs.init_cluster(tmp_path, "cluster-a")
    assert _cn(result.admin.cert) == "admin-cluster-a"
    assert _cn(result.remote.cert) == "remote"
    assert _cn(result.local.cert) == "local-cluster-a"


def test_usages_and_issuer(tmp_path: pathlib.Path) -> None:
    result = certs.init_cluster(tmp_path, "cluster-a")
    ca = _cert(result.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for files in (result.admin, result.remote, result.local):
        assert _usages(files.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ExtendedKeyUsageOID.SERVER_AUTH in _usages(result.server.cert)
    for files in (result.server, result.admin, result.remote, result.local):
        leaf = _cert(files.cert)
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_sans(tmp_path: pathlib.Path) -> None:
    result = certs.init_cluster(tmp_path, "cluster-a", sans=("etcd.example.com", "10.0.0.7", "fd00::7"))
    dns, ips = _sans(result.server.cert)
    assert dns == {"localhost", "cluster-a.mesh.cilium.io", "etcd.example.com"}
    assert ips == {"127.0.0.1", "::1", "10.0.0.7", "fd00::7"}


def test_private_keys_are_0600_and_no_temp_files_remain(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path, "cluster-a")
    for stem in PAIRS:
        assert stat.S_IMODE((tmp_path / f"{stem}.key").stat().st_mode) == 0o600
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_rerun_keeps_everything(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path, "cluster-a")
    before = _contents(tmp_path)
    result = certs.init_cluster(tmp_path, "cluster-a")
    assert _contents(tmp_path) == before
    assert result.written == ()
    assert len(result.kept) == 2 * len(PAIRS)


def test_force_replaces_everything(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path, "cluster-a")
    before = _contents(tmp_path)
    certs.init_cluster(tmp_path, "cluster-a", force=True)
    after = _contents(tmp_path)
    assert all(after[name] != before[name] for name in before)


def test_missing_leaf_is_issued_from_existing_ca(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path, "cluster-a")
    before = _contents(tmp_path)
    (tmp_path / "remote.key").unlink()
    result = certs.init_cluster(tmp_path, "cluster-a")
    assert set(result.written) == {tmp_path / "remote.crt", tmp_path / "remote.key"}
    after = _contents(tmp_path)
    assert after["ca.crt"] == before["ca.crt"]
    assert after["remote.crt"] != before["remote.crt"]
    _cert(tmp_path / "remote.crt").verify_directly_issued_by(_cert(tmp_path / "ca.crt"))


def test_half_a_ca_is_refused(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path, "cluster-a")
    (tmp_path / "ca.key").unlink()
    with pytest.raises(errors.CertificateError, match=r"ca\.key is missing"):
        certs.init_cluster(tmp_path, "cluster-a")


def test_leaf_from_another_ca_is_refused(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path / "a", "cluster-a")
    certs.init_cluster(tmp_path / "b", "cluster-a")
    (tmp_path / "a" / "local.crt").write_bytes((tmp_path / "b" / "local.crt").read_bytes())
    with pytest.raises(errors.CertificateError, match="not signed by"):
        certs.init_cluster(tmp_path / "a", "cluster-a")


def test_rotate_reissues_leaves_from_same_ca(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path, "cluster-a", sans=("etcd.example.com",))
    before = _contents(tmp_path)
    certs.rotate(tmp_path, "cluster-a")
    after = _contents(tmp_path)
    assert (after["ca.crt"], after["ca.key"]) == (before["ca.crt"], before["ca.key"])
    for stem in ("server", "admin", "remote", "local"):
        assert after[f"{stem}.crt"] != before[f"{stem}.crt"]
        assert after[f"{stem}.key"] != before[f"{stem}.key"]
        assert stat.S_IMODE((tmp_path / f"{stem}.key").stat().st_mode) == 0o600
        _cert(tmp_path / f"{stem}.crt").verify_directly_issued_by(_cert(tmp_path / "ca.crt"))
    assert "etcd.example.com" in _sans(tmp_path / "server.crt")[0]


def test_rotate_without_ca(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.CertificateError, match="certs init"):
        certs.rotate(tmp_path, "cluster-a")


def test_issue_client_files(tmp_path: pathlib.Path) -> None:
    certs.init_cluster(tmp_path, "cluster-a")
    files = certs.issue_client_files(tmp_path, "remote-cluster-b")
    assert files.cert == tmp_path / "remote-cluster-b.crt"
    assert _cn(files.cert) == "remote-cluster-b"
    assert _usages(files.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    tls.load_verified(files)


@pytest.mark.parametrize("text", ["bad host", "", "-leading.example", "a..b", "*", "a.*.example"])
def test_malformed_sans(text: str) -> None:
    with pytest.raises(errors.ConfigError):
        certs.parse_san(text)


@pytest.mark.parametrize("text", ["*.mesh.cilium.io", "etcd-1.example", "10.1.2.3", "::1"])
def test_valid_sans(text: str) -> None:
    name = certs.parse_san(text)
    if isinstance(name, x509.IPAddress):
        assert name.value == ipaddress.ip_address(text)
    else:
        assert name.value == text


# --- CLI -----------------------------------------------------------------------------------------------


def _cli(*argv: str) -> int:
    return cli_main.main(argv)


def test_cli_init_then_rerun(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("certs", "init", "--dir", str(tmp_path), "--cluster", "cluster-a", "--san", "10.9.9.9") == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'ca.key'}" in out
    assert "10.9.9.9" in _sans(tmp_path / "server.crt")[1]
    assert _cli("certs", "init", "--dir", str(tmp_path), "--cluster", "cluster-a") == 0
    out = capsys.readouterr().out
    assert "wrote" not in out
    assert f"kept  {tmp_path / 'ca.key'}" in out


def test_cli_force_and_rotate(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("certs", "init", "--dir", str(tmp_path), "--cluster", "cluster-a") == 0
    ca = (tmp_path / "ca.crt").read_bytes()
    assert _cli("certs", "rotate", "--dir", str(tmp_path), "--cluster", "cluster-a") == 0
    assert (tmp_path / "ca.crt").read_bytes() == ca
    assert _cli("certs", "init", "--dir", str(tmp_path), "--cluster", "cluster-a", "--force") == 0
    assert (tmp_path / "ca.crt").read_bytes() != ca
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ("--cluster", "Cluster-A"),
        ("--cluster", "cluster_a"),
        ("--cluster=-cluster",),
        ("--cluster", "cluster-"),
        ("--cluster", "c" * 33),
        ("--cluster", "cluster-a", "--san", "bad host"),
    ],
)
def test_cli_invalid_input(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    assert _cli("certs", "init", "--dir", str(tmp_path / "out"), *argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_longest_valid_name(tmp_path: pathlib.Path) -> None:
    assert _cli("certs", "init", "--dir", str(tmp_path), "--cluster", "c" * 32) == 0
    assert _cn(tmp_path / "admin.crt") == "admin-" + "c" * 32


def test_cli_rotate_without_ca(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("certs", "rotate", "--dir", str(tmp_path), "--cluster", "cluster-a") == 1
    assert "certs init" in capsys.readouterr().err
