"""Tests of clustermesh.trust: the cluster secret on disk and the pairwise WireGuard PSK.

Covered: creation (32 bytes, mode 0600) and reuse of cluster.secret, reading raw and base64 forms, rejection of
malformed secrets, and the PSK: symmetric, 32 bytes, `wg`-compatible base64, different for every pair, and
pinned to a known value so the derivation can never change silently; `clustermesh wireguard peers` computing the
same PSK from either side of a pair. Not covered: the exchange (test_connect), a live agent (local_mesh/test_up).
"""

from __future__ import annotations

import base64
import itertools
import pathlib
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clustermesh import errors, trust
from clustermesh.api.v1 import agent_pb2
from clustermesh.cli import wireguard

secrets_32 = st.binary(min_size=32, max_size=32)


def test_secret_is_created_once_with_private_mode(tmp_path: pathlib.Path) -> None:
    first = trust.ensure_cluster_secret(tmp_path)
    path = trust.secret_path(tmp_path)
    assert len(first) == trust.SECRET_BYTES
    assert path.read_bytes() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert trust.ensure_cluster_secret(tmp_path) == first


def test_secrets_differ_between_clusters(tmp_path: pathlib.Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    assert trust.ensure_cluster_secret(tmp_path / "a") != trust.ensure_cluster_secret(tmp_path / "b")


def test_secret_reads_raw_and_base64(tmp_path: pathlib.Path) -> None:
    value = bytes(range(32))
    raw, encoded = tmp_path / "raw", tmp_path / "b64"
    raw.write_bytes(value)
    encoded.write_bytes(base64.b64encode(value) + b"\n")
    assert trust.load_cluster_secret(raw) == value
    assert trust.load_cluster_secret(encoded) == value


@pytest.mark.parametrize("content", [b"", b"short", b"x" * 33, base64.b64encode(b"y" * 31)])
def test_malformed_secret_is_refused(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "cluster.secret"
    path.write_bytes(content)
    with pytest.raises(errors.CertificateError, match="32 bytes"):
        trust.load_cluster_secret(path)


def test_missing_secret_names_the_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(errors.CertificateError, match=r"cluster\.secret"):
        trust.load_cluster_secret(tmp_path / "cluster.secret")


@given(secrets_32, secrets_32)
def test_psk_is_symmetric(a: bytes, b: bytes) -> None:
    if a == b:
        return
    assert trust.derive_psk(a, b) == trust.derive_psk(b, a)
    assert len(trust.derive_psk(a, b)) == trust.PSK_BYTES


def test_psk_differs_per_pair() -> None:
    secrets = [bytes([i]) * 32 for i in range(1, 5)]
    psks = {frozenset((a, b)): trust.derive_psk(a, b) for a, b in itertools.combinations(secrets, 2)}
    assert len(set(psks.values())) == len(psks) == 6


def test_psk_is_wg_base64_and_pinned() -> None:
    # A fixed vector: if this changes, clusters on different versions would derive different keys.
    a, b = bytes(range(32)), bytes(range(32, 64))
    text = trust.psk_base64(a, b)
    assert base64.b64decode(text) == trust.derive_psk(a, b)
    assert len(text) == 44 and text.endswith("=")
    assert text == trust.psk_base64(b, a) == "YrC6pIbep1nUDXHAyEDvH8TLwkL8DpNXsPQhLgaesGU="


@pytest.mark.parametrize(("a", "b"), [(b"x" * 31, b"y" * 32), (b"x" * 32, b"y" * 33), (b"z" * 32, b"z" * 32)])
def test_psk_refuses_bad_secrets(a: bytes, b: bytes) -> None:
    with pytest.raises(ValueError):
        trust.derive_psk(a, b)


# ----------------------------------------------------------------------------------------------------
# `clustermesh wireguard peers`: the PSK as each side of a pair prints it


def node(cluster: str, cluster_id: int, name: str, ip: str, cidr: str, key: str) -> agent_pb2.Node:
    return agent_pb2.Node(cluster=cluster, cluster_id=cluster_id, name=name, wireguard_pub_key=key,
                          ipv4_alloc_cidr=cidr, addresses=[agent_pb2.NodeAddress(type="InternalIP", ip=ip)])


def test_wireguard_peers_agree_across_the_pair() -> None:
    secrets = {"cluster-a": b"a" * 32, "cluster-b": b"b" * 32, "cluster-c": b"c" * 32}
    nodes = agent_pb2.ListNodesResponse(nodes=[
        node("cluster-a", 1, "a1", "127.0.1.1", "10.1.1.0/24", "A" * 43 + "="),
        node("cluster-b", 2, "b1", "127.0.2.1", "10.2.1.0/24", "B" * 43 + "="),
        node("cluster-c", 3, "c1", "fd00::3", "10.3.1.0/24", ""),
    ])
    from_a, skipped = wireguard.peers(agent_pb2.AgentStatus(cluster_name="cluster-a"), nodes, secrets, port=51871)
    from_b, _ = wireguard.peers(agent_pb2.AgentStatus(cluster_name="cluster-b"), nodes, secrets, port=51871)
    assert [p["node"] for p in from_a] == ["b1"] and [p["node"] for p in from_b] == ["a1"]
    assert from_a[0]["preshared_key"] == from_b[0]["preshared_key"] == trust.psk_base64(b"a" * 32, b"b" * 32)
    assert skipped == ["cluster-c/c1: no WireGuard public key (annotation network.cilium.io/wg-pub-key)"]
    text = wireguard.wg_config(from_a)
    assert text.splitlines() == [
        "# cluster-b/b1 (cluster id 2)", "[Peer]", f"PublicKey = {'B' * 43}=",
        f"PresharedKey = {from_a[0]['preshared_key']}", "Endpoint = 127.0.2.1:51871", "AllowedIPs = 10.2.1.0/24",
    ]


def test_wireguard_peers_need_every_secret() -> None:
    nodes = agent_pb2.ListNodesResponse(nodes=[node("cluster-b", 2, "b1", "127.0.2.1", "10.2.1.0/24", "k")])
    status = agent_pb2.AgentStatus(cluster_name="cluster-a")
    with pytest.raises(errors.ConfigError, match="no secret for the agent's own cluster cluster-a"):
        wireguard.peers(status, nodes, {"cluster-b": b"b" * 32}, port=1)
    with pytest.raises(errors.ConfigError, match="--secret cluster-b=FILE"):
        wireguard.peers(status, nodes, {"cluster-a": b"a" * 32}, port=1)
