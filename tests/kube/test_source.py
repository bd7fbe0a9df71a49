"""Tests of the source interface: spec strings, the kinds filter, and the emitter behind both sources.

The sources themselves are tested in test_manifests.py and test_kubernetes_api.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from clustermesh import kube
from clustermesh.errors import ConfigError
from clustermesh.kube import emitter, kubernetes_api

if TYPE_CHECKING:
    from conftest import Recorder


def test_manifests_spec_names_a_directory(tmp_path: Path) -> None:
    source = kube.parse_source_spec(f"manifests:{tmp_path}", kinds=["Node", kube.Kind.SERVICE])

    assert isinstance(source, kube.ManifestSource)
    assert source.directory == tmp_path
    assert source.kinds == {kube.Kind.NODE, kube.Kind.SERVICE}


def test_kubernetes_spec_with_and_without_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")

    default = kube.parse_source_spec("kubernetes", kinds=["Pod"])
    explicit = kube.parse_source_spec(f"kubernetes:{kubeconfig}", kinds=["Pod"])

    assert isinstance(default, kubernetes_api.KubernetesAPISource)
    assert default.kubeconfig is None
    assert isinstance(explicit, kubernetes_api.KubernetesAPISource)
    assert explicit.kubeconfig == kubeconfig


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "invalid source ''"),
        ("manifests", "invalid source 'manifests'"),
        ("manifests:", "invalid source 'manifests:'"),
        ("kubernetes:", "invalid source 'kubernetes:'"),
        ("etcd:/tmp", "invalid source 'etcd:/tmp'"),
        ("manifests:/nonexistent/dir", "source 'manifests:/nonexistent/dir': /nonexistent/dir is not a dir"),
        ("kubernetes:/nonexistent/kubeconfig", "source 'kubernetes:/nonexistent/kubeconfig': kubeconfig"),
    ],
)
def test_bad_specs_are_config_errors_naming_the_spec(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        kube.parse_source_spec(spec, kinds=["Node"])

    assert str(caught.value).startswith(message)


def test_a_kubernetes_spec_names_its_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    assert kube.parse_kubernetes_spec("kubernetes") is None
    assert kube.parse_kubernetes_spec(f"kubernetes:{kubeconfig}") == kubeconfig
    for spec in ("", "kubernetes:", "manifests:/tmp", f"kubernetes:{tmp_path / 'nope'}"):
        with pytest.raises(ConfigError, match=repr(spec)):
            kube.parse_kubernetes_spec(spec)


@pytest.mark.parametrize("kinds", [[], ["Deployment"], ["node"]])
def test_a_bad_kinds_filter_is_a_programming_error(tmp_path: Path, kinds: list[str]) -> None:
    with pytest.raises(ValueError):
        kube.parse_source_spec(f"manifests:{tmp_path}", kinds=kinds)


def node(name: str, version: str) -> tuple[kube.ObjectKey, dict[str, Any]]:
    obj: dict[str, Any] = {"kind": "Node", "metadata": {"name": name, "resourceVersion": version}}
    return kube.ObjectKey(kube.Kind.NODE, "", name), obj


async def test_emitter_suppresses_repeats_and_sweeps_only_what_vanished(recorder: Recorder) -> None:
    out = emitter.Emitter(recorder)
    (a, a1), (b, b1), (c, c1) = node("a", "1"), node("b", "1"), node("c", "1")
    await out.replace(kube.Kind.NODE, {a: a1, b: b1})
    await out.upsert(a, dict(a1))
    await out.mark_synced()
    await out.mark_synced()
    mark = recorder.mark()

    _, b2 = node("b", "2")
    await out.replace(kube.Kind.NODE, {a: a1, b: b2, c: c1})
    await out.replace(kube.Kind.NODE, {b: b2})
    await out.delete(c)

    assert recorder.since(0)[:mark] == [
        (kube.EventType.UPSERT, "Node/a"),
        (kube.EventType.UPSERT, "Node/b"),
        (None, "SYNCED"),
    ]
    assert recorder.since(mark) == [
        (kube.EventType.UPSERT, "Node/b"),
        (kube.EventType.UPSERT, "Node/c"),
        (kube.EventType.DELETE, "Node/a"),
        (kube.EventType.DELETE, "Node/c"),
    ]
