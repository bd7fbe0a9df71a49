"""Record helpers: identity label strings, CIDRs, ipcache prefix strings, cluster config defaults, memory shape.

Wire encodings of the records are tested in test_codec_golden and test_codec_properties.
"""

from __future__ import annotations

import gc
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustermesh import records
from clustermesh.records import CIDR, Capabilities, ClusterConfig, Identity, IPIdentityPair, Label

label_keys = st.text(st.characters(codec="utf-8", exclude_characters=";=:"), min_size=1, max_size=10)
label_values = st.text(st.characters(codec="utf-8", exclude_characters=";"), max_size=10)


def test_format_labels_sorts_by_key_and_qualifies_with_the_source() -> None:
    labels = {"io.kubernetes.pod.namespace": "bar", "app": "baz", "io.cilium.k8s.policy.cluster": "cluster3"}
    assert records.format_labels(labels) == (
        "k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;"
    )


def test_format_labels_keeps_a_source_given_in_the_key() -> None:
    # CiliumIdentity security labels are keyed `source:key`; sorting is by key, not by source.
    assert records.format_labels({"k8s:b": "1", "any:a": "2", "c": "3"}, source="container") == (
        "any:a=2;k8s:b=1;container:c=3;"
    )


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"k8s:a": "1", "any:a": "2"}, "same key"),
        ({"": "1"}, "invalid label key"),
        ({"k8s:": "1"}, "invalid label key"),
        ({":a": "1"}, "invalid label source"),
        ({"a=b": "1"}, "invalid label key"),
        ({"a": "x;y"}, "contains ';'"),
        ({"a;b": "1"}, "contains ';'"),
    ],
)
def test_format_labels_refuses_labels_that_would_not_parse_back(labels: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        records.format_labels(labels)


def test_parse_labels() -> None:
    assert records.parse_labels("k8s:app=baz;reserved:host=;k8s:a:b=c=d;") == (
        Label("k8s", "app", "baz"),
        Label("reserved", "host", ""),
        Label("k8s", "a:b", "c=d"),
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("k8s:a=b", "must end with ';'"),
        (";", "not of the form"),
        ("k8s:a=b;;", "not of the form"),
        ("k8s:a;", "not of the form"),
        ("a=b;", "not of the form"),
        (":a=b;", "not of the form"),
        ("k8s:=b;", "not of the form"),
        ("a=b:c=d;", "not of the form"),
        ("k8s:a=1;any:a=2;", "appears twice"),
    ],
)
def test_parse_labels_refuses_malformed_strings(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        records.parse_labels(text)


@given(st.dictionaries(label_keys, label_values, min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_label_strings_round_trip(labels: dict[str, str]) -> None:
    text = records.format_labels(labels)
    identity = Identity.from_labels(70000, labels)
    assert identity == Identity(id=70000, labels=text)
    assert identity.label_map() == {f"k8s:{key}": value for key, value in labels.items()}
    assert records.format_labels(identity.label_map()) == text


def test_cidr_parse_and_network() -> None:
    cidr = CIDR.parse("10.244.0.5/24")
    assert cidr == CIDR(ip="10.244.0.0", mask=b"\xff\xff\xff\x00")
    assert cidr.network() == ipaddress.ip_network("10.244.0.0/24")
    v6 = CIDR.parse("fd00:10:244::/64")
    assert v6.mask == b"\xff" * 8 + b"\x00" * 8
    assert str(v6.network()) == "fd00:10:244::/64"


@pytest.mark.parametrize(
    ("cidr", "reason"),
    [
        (CIDR(ip="10.0.0.0", mask=None), "does not fit"),
        (CIDR(ip="10.0.0.0", mask=b"\xff" * 16), "does not fit"),
        (CIDR(ip="fd00::", mask=b"\xff\xff\xff\x00"), "does not fit"),
        (CIDR(ip="10.0.0.0", mask=b"\xff\x00\xff\x00"), "not contiguous"),
        (CIDR(ip="", mask=b"\xff\xff\xff\x00"), "does not appear to be"),
    ],
)
def test_cidr_network_refuses_invalid_cidrs(cidr: CIDR, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        cidr.network()


def test_ip_identity_prefix_string_is_gos() -> None:
    assert IPIdentityPair(ip="10.0.0.1").prefix_string == "10.0.0.1"
    assert IPIdentityPair(ip="10.0.0.0", mask=b"\xff\x00\x00\x00").prefix_string == "10.0.0.0/8"
    assert IPIdentityPair(ip="fd00::", mask=b"\xff" * 4 + b"\x00" * 12).prefix_string == "fd00::/32"
    # Go's IPMask.Size reports 0 for an empty or non-contiguous mask.
    assert IPIdentityPair(ip="10.0.0.0", mask=b"").prefix_string == "10.0.0.0/0"
    assert IPIdentityPair(ip="10.0.0.0", mask=b"\xff\x00\xff\x00").prefix_string == "10.0.0.0/0"


def test_cluster_config_max_clusters_defaults_to_255() -> None:
    assert ClusterConfig(id=1).max_clusters == 255
    assert ClusterConfig(id=1, capabilities=Capabilities(max_connected_clusters=511)).max_clusters == 511


def test_records_are_immutable_and_untracked_by_the_garbage_collector() -> None:
    pair = IPIdentityPair(ip="10.0.0.1", named_ports=(records.NamedPort(name="http", port=80, protocol="TCP"),))
    with pytest.raises(AttributeError):
        pair.ip = "10.0.0.2"  # type: ignore[misc]
    assert not gc.is_tracked(pair)
    assert not gc.is_tracked(records.Node(name="n", labels={"a": "b"}))
