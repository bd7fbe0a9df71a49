"""Identity numbering and cluster name/ID validation (reference §3).

Covers clustermesh.identity only; how decoders apply these ranges is tested in test_codec_golden.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustermesh import identity
from clustermesh.errors import ConfigError

MODES = [identity.ClusterIDMode.DEFAULT, identity.ClusterIDMode.EXTENDED]


def test_ranges_match_the_reference() -> None:
    assert (identity.min_identity(3), identity.max_identity(3)) == (196608, 262143)
    assert (identity.min_identity(3, 511), identity.max_identity(3, 511)) == (98304, 131071)
    # The identities of cluster3 in Cilium's ciliumidentities/ciliumendpoints fixtures.
    for numeric_id in (196915, 199472, 199475, 214794):
        assert identity.cluster_id_of(numeric_id) == 3
        assert identity.in_cluster_range(numeric_id, 3)
        assert not identity.in_cluster_range(numeric_id, 4)


def test_cluster_zero_allocates_above_the_reserved_range() -> None:
    assert identity.min_identity(0) == identity.MINIMAL_NUMERIC_IDENTITY == 256
    assert identity.max_identity(0) == 65535
    assert identity.max_identity(0, 511) == 32767


@pytest.mark.parametrize("mode", MODES)
def test_cluster_ranges_tile_the_identity_space(mode: int) -> None:
    for cluster_id in range(1, mode + 1):
        low, high = identity.min_identity(cluster_id, mode), identity.max_identity(cluster_id, mode)
        assert identity.cluster_id_of(low, mode) == identity.cluster_id_of(high, mode) == cluster_id
        assert identity.max_identity(cluster_id - 1, mode) + 1 == low
    assert identity.max_identity(mode, mode) == (1 << identity.NUMERIC_IDENTITY_BITS) - 1


@given(numeric_id=st.integers(256, (1 << 24) - 1), mode=st.sampled_from(MODES))
@settings(max_examples=200, deadline=None)
def test_every_identity_is_in_the_range_of_exactly_its_cluster(numeric_id: int, mode: int) -> None:
    owner = identity.cluster_id_of(numeric_id, mode)
    assert identity.in_cluster_range(numeric_id, owner, mode)
    assert not identity.in_cluster_range(numeric_id, (owner % mode) + 1, mode)


def test_reserved_identities_belong_to_every_cluster() -> None:
    assert identity.is_reserved(0) and identity.is_reserved(255)
    assert not identity.is_reserved(256)
    assert all(identity.in_cluster_range(n, 7) for n in range(256))
    assert identity.cluster_id_of(255) == 0


def test_reserved_names() -> None:
    assert identity.RESERVED[0] == "unknown"
    assert identity.RESERVED[identity.HOST_IDENTITY] == "host"
    assert identity.RESERVED[identity.REMOTE_NODE_IDENTITY] == "remote-node"
    assert identity.RESERVED[11] == "encrypted-overlay"
    assert identity.RESERVED[102] == "kube-dns"
    assert set(identity.RESERVED) == set(range(12)) | set(range(100, 116))


@pytest.mark.parametrize("value", [0, 1, 128, 256, 510, 512, 1023])
def test_only_255_and_511_connected_clusters_are_supported(value: int) -> None:
    message = f"--max-connected-clusters={value} is invalid; supported values are [255, 511]"
    with pytest.raises(ConfigError) as info:
        identity.validate_max_connected_clusters(value)
    assert str(info.value) == message
    with pytest.raises(ConfigError, match="is invalid"):
        identity.min_identity(1, value)


def test_max_connected_clusters_modes() -> None:
    assert identity.validate_max_connected_clusters(255) is identity.ClusterIDMode.DEFAULT
    assert identity.validate_max_connected_clusters(511) is identity.ClusterIDMode.EXTENDED


def test_validate_cluster_id() -> None:
    assert identity.validate_cluster_id(1) == 1
    assert identity.validate_cluster_id(255) == 255
    assert identity.validate_cluster_id(511, 511) == 511
    with pytest.raises(ConfigError) as info:
        identity.validate_cluster_id(0)
    assert str(info.value) == "ClusterID 0 is reserved"
    with pytest.raises(ConfigError) as info:
        identity.validate_cluster_id(256)
    assert str(info.value) == "ClusterID > 255 is not supported"
    with pytest.raises(ConfigError) as info:
        identity.validate_cluster_id(512, 511)
    assert str(info.value) == "ClusterID > 511 is not supported"
    with pytest.raises(ConfigError, match="positive"):
        identity.validate_cluster_id(-1)
    with pytest.raises(ConfigError, match="max-connected-clusters=300"):
        identity.validate_cluster_id(1, 300)


@pytest.mark.parametrize("name", ["a", "0", "cluster-a", "c1", "a-b-c", "x" * 32, "1-2"])
def test_valid_cluster_names(name: str) -> None:
    assert identity.cluster_name_valid(name)
    assert identity.validate_cluster_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "must not be empty"),
        ("x" * 33, "more than 32 characters"),
        ("-a", "start and end"),
        ("a-", "start and end"),
        ("Cluster", "lower case"),
        ("a_b", "lower case"),
        ("a.b", "lower case"),
        ("a\n", "lower case"),
        ("é", "lower case"),
    ],
)
def test_invalid_cluster_names_are_named_in_the_error(name: str, reason: str) -> None:
    assert not identity.cluster_name_valid(name)
    with pytest.raises(ConfigError, match=reason) as info:
        identity.validate_cluster_name(name)
    assert repr(name) in str(info.value)


def test_validate_cluster_refuses_the_default_name_in_a_mesh() -> None:
    identity.validate_cluster("cluster-a", 1)
    identity.validate_cluster("cluster-a", 300, 511)
    with pytest.raises(ConfigError, match="default cluster name"):
        identity.validate_cluster("default", 1)
    with pytest.raises(ConfigError, match="ClusterID 0 is reserved"):
        identity.validate_cluster("cluster-a", 0)
    with pytest.raises(ConfigError, match="invalid cluster name"):
        identity.validate_cluster("Cluster-A", 1)
