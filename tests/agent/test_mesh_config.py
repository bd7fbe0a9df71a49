"""The mesh-config directory: peer files (Cilium's etcd client YAML) and the watcher that follows them live.

Covers: parsing and validation (relative paths, TLS fields, bad content named by file and field); the watcher's
initial set, live add / change / remove, the local cluster's file and non-peer files ignored, a Kubernetes
secret volume's `..data` symlink swap, an invalid or unreadable file keeping its peer's previous config while
the other peers stay untouched; misuse. Excludes: connecting to the peers (test_mesh.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib

import pytest

from clustermesh import mesh_config
from clustermesh.errors import ConfigError
from tests.helpers import eventually, running

PEER_YAML = """\
endpoints:
- https://{name}.mesh.cilium.io:2379
trusted-ca-file: {name}.etcd-client-ca.crt
key-file: {name}.etcd-client.key
cert-file: {name}.etcd-client.crt
"""


def write_peer(directory: pathlib.Path, name: str, *, endpoint: str | None = None) -> pathlib.Path:
    for suffix in (".etcd-client-ca.crt", ".etcd-client.key", ".etcd-client.crt"):
        (directory / f"{name}{suffix}").write_text("pem\n")
    text = PEER_YAML.format(name=name)
    if endpoint is not None:
        text = text.replace(f"https://{name}.mesh.cilium.io:2379", endpoint)
    path = directory / name
    path.write_text(text)
    return path


def test_peer_file_is_cilium_etcd_client_yaml(tmp_path: pathlib.Path) -> None:
    path = write_peer(tmp_path, "cluster-b")
    config = mesh_config.load_peer_file(path)
    assert config.name == "cluster-b"
    assert config.etcd.endpoints == ("https://cluster-b.mesh.cilium.io:2379",)
    assert config.etcd.tls is not None
    assert config.etcd.tls.ca == tmp_path / "cluster-b.etcd-client-ca.crt"
    assert config.etcd.tls.cert == tmp_path / "cluster-b.etcd-client.crt"
    assert config.etcd.tls.key == tmp_path / "cluster-b.etcd-client.key"
    expected = hashlib.sha256(path.read_bytes())
    for suffix in (".etcd-client-ca.crt", ".etcd-client.crt", ".etcd-client.key"):
        expected.update((tmp_path / f"cluster-b{suffix}").read_bytes())
    assert config.digest == expected.hexdigest()


def test_absolute_paths_single_endpoint_and_unknown_keys(tmp_path: pathlib.Path) -> None:
    write_peer(tmp_path, "cluster-b")
    (tmp_path / "cluster-c").write_text(
        f"endpoints: http://127.0.0.1:2379\ndial-timeout: 5s\nca-file: {tmp_path}/cluster-b.etcd-client-ca.crt\n"
        f"cert-file: {tmp_path}/cluster-b.etcd-client.crt\nkey-file: {tmp_path}/cluster-b.etcd-client.key\n"
    )
    config = mesh_config.load_peer_file(tmp_path / "cluster-c")
    assert config.etcd.endpoints == ("http://127.0.0.1:2379",)
    assert config.etcd.tls is not None and config.etcd.tls.ca == tmp_path / "cluster-b.etcd-client-ca.crt"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("endpoints: [\n", "not valid YAML"),
        ("- endpoints\n", "expected a mapping"),
        ("endpoints: []\n", "endpoints: expected a non-empty list"),
        ("endpoints: [ftp://x]\n", "endpoints: 'ftp://x' is not"),
        ("endpoints: [https://x:2379]\n", "endpoints use TLS but"),
        ("endpoints: [https://x:2379]\ncert-file: cluster-b.etcd-client.crt\n", "trusted-ca-file, key-file missing"),
        ("endpoints: [https://x:2379]\ntrusted-ca-file: nope.crt\n", "trusted-ca-file: no such file"),
        ("endpoints: [https://x:2379]\nkey-file: [1]\n", "key-file: expected a file path"),
    ],
)
def test_bad_peer_file_is_named_with_its_field(tmp_path: pathlib.Path, content: str, message: str) -> None:
    write_peer(tmp_path, "cluster-b")
    path = tmp_path / "cluster-b"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as raised:
        mesh_config.load_peer_file(path)
    assert str(path) in str(raised.value)


def test_file_name_must_be_a_cluster_name(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "Cluster_B.yaml"
    path.write_text("endpoints: [http://x:2379]\n")
    with pytest.raises(ConfigError, match="not a valid cluster name"):
        mesh_config.load_peer_file(path)


class Recorder:
    """Collects every desired set the watcher delivers."""

    def __init__(self) -> None:
        self.calls: list[dict[str, mesh_config.PeerConfig]] = []

    def __call__(self, desired: dict[str, mesh_config.PeerConfig]) -> None:
        self.calls.append(desired)

    @property
    def last(self) -> dict[str, mesh_config.PeerConfig]:
        return self.calls[-1]


@contextlib.asynccontextmanager
async def watching(directory: pathlib.Path, recorder: Recorder):
    watcher = mesh_config.MeshConfigWatcher(directory, local_cluster="cluster-a", on_change=recorder)
    async with running(watcher):
        yield watcher


async def test_watcher_follows_add_change_and_remove(tmp_path: pathlib.Path) -> None:
    write_peer(tmp_path, "cluster-b")
    write_peer(tmp_path, "cluster-a")  # the local cluster's own file: ignored
    (tmp_path / ".hidden").write_text("endpoints: [http://x:2379]\n")
    (tmp_path / "notes").write_text("no peer here\n")
    recorder = Recorder()
    async with watching(tmp_path, recorder) as watcher:
        assert list(recorder.last) == ["cluster-b"] and len(recorder.calls) == 1
        assert watcher.desired.keys() == {"cluster-b"}

        write_peer(tmp_path, "cluster-c")
        await eventually(lambda: recorder.last.keys() == {"cluster-b", "cluster-c"})
        digest_b = recorder.last["cluster-b"].digest

        write_peer(tmp_path, "cluster-c", endpoint="https://10.0.0.3:2379")
        await eventually(lambda: recorder.last["cluster-c"].etcd.endpoints == ("https://10.0.0.3:2379",))
        assert recorder.last["cluster-b"].digest == digest_b

        (tmp_path / "cluster-b").unlink()
        await eventually(lambda: recorder.last.keys() == {"cluster-c"})
        # A file that stops being a peer file removes its peer, as in Cilium.
        (tmp_path / "cluster-c").write_text("# emptied\n")
        await eventually(lambda: recorder.last == {})


async def test_invalid_and_unreadable_files_keep_the_previous_config(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_peer(tmp_path, "cluster-b")
    write_peer(tmp_path, "cluster-c")
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="clustermesh.mesh_config")
    async with watching(tmp_path, recorder):
        good = recorder.last
        (tmp_path / "cluster-b").write_text("endpoints: [https://x:2379]\ntrusted-ca-file: missing.crt\n")
        await eventually(lambda: "trusted-ca-file: no such file" in caplog.text)
        assert "cluster=cluster-b" in caplog.text and "keeping its previous config" in caplog.text
        # Unreadable: a file whose read fails with EIO (root can read a mode-000 file, not this).
        (tmp_path / "cluster-c").unlink()
        os.symlink("/proc/self/mem", tmp_path / "cluster-c")
        await eventually(lambda: "cannot read" in caplog.text)
        write_peer(tmp_path, "cluster-d")
        await eventually(lambda: recorder.last.keys() == {"cluster-b", "cluster-c", "cluster-d"})
        assert recorder.last["cluster-b"] == good["cluster-b"]
        assert recorder.last["cluster-c"] == good["cluster-c"]
        # Fixing the file takes effect; a new invalid file never becomes a peer.
        write_peer(tmp_path, "cluster-b", endpoint="https://10.0.0.2:2379")
        (tmp_path / "cluster-e").write_text("endpoints: 42\n")
        await eventually(lambda: recorder.last["cluster-b"].etcd.endpoints == ("https://10.0.0.2:2379",))
        await eventually(lambda: "cluster=cluster-e" in caplog.text)
        assert "cluster-e" not in recorder.last


async def test_secret_volume_symlink_swap(tmp_path: pathlib.Path) -> None:
    # The layout kubelet gives a secret volume: files are links into `..data`, itself a link to a timestamped
    # directory that an update replaces atomically.
    first, second = tmp_path / "..2024_01", tmp_path / "..2024_02"
    first.mkdir()
    second.mkdir()
    write_peer(first, "cluster-b")
    write_peer(second, "cluster-b", endpoint="https://10.9.9.9:2379")
    os.symlink(first.name, tmp_path / "..data")
    for name in ("cluster-b", "cluster-b.etcd-client-ca.crt", "cluster-b.etcd-client.key", "cluster-b.etcd-client.crt"):
        os.symlink(f"..data/{name}", tmp_path / name)
    recorder = Recorder()
    async with watching(tmp_path, recorder):
        assert recorder.last["cluster-b"].etcd.endpoints == ("https://cluster-b.mesh.cilium.io:2379",)
        os.symlink(second.name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        await eventually(lambda: recorder.last["cluster-b"].etcd.endpoints == ("https://10.9.9.9:2379",))


@pytest.mark.parametrize("elsewhere", [False, True], ids=["beside-the-peer-file", "another-directory"])
async def test_certificate_rotated_in_place_is_a_new_config(tmp_path: pathlib.Path, elsewhere: bool) -> None:
    # Only the certificate changes, not the peer file: the digest must change so the agent re-dials with it.
    # Files outside the watched directory are caught by the periodic stat-only rescan.
    mesh = tmp_path / "mesh"
    certificates = tmp_path / "certs" if elsewhere else mesh
    mesh.mkdir()
    certificates.mkdir(exist_ok=True)
    write_peer(certificates, "cluster-b")
    if elsewhere:
        (certificates / "cluster-b").rename(mesh / "cluster-b")
        text = (mesh / "cluster-b").read_text()
        for suffix in (".etcd-client-ca.crt", ".etcd-client.key", ".etcd-client.crt"):
            text = text.replace(f"cluster-b{suffix}", str(certificates / f"cluster-b{suffix}"))
        (mesh / "cluster-b").write_text(text)
    recorder = Recorder()
    async with watching(mesh, recorder):
        before = recorder.last["cluster-b"].digest
        (certificates / "cluster-b.etcd-client.crt").write_text("rotated pem, longer than before\n")
        await eventually(lambda: recorder.last["cluster-b"].digest != before)
        assert len(recorder.calls) == 2
        # A certificate that disappears keeps the last good config, as a broken peer file does.
        (certificates / "cluster-b.etcd-client.key").unlink()
        rotated = recorder.last
        write_peer(mesh, "cluster-c")
        await eventually(lambda: "cluster-c" in recorder.last)
        assert recorder.last["cluster-b"] == rotated["cluster-b"]


async def test_misuse(tmp_path: pathlib.Path) -> None:
    missing = mesh_config.MeshConfigWatcher(tmp_path / "nope", local_cluster="cluster-a", on_change=Recorder())
    with pytest.raises(ConfigError, match="does not exist"):
        await missing.run()
    async with watching(tmp_path, Recorder()) as watcher:
        with pytest.raises(RuntimeError, match="already running"):
            await watcher.run()
