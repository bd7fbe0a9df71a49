"""The source interface: how the apiserver and the agent read Kubernetes objects, named by a spec string.

A source is built with a kinds filter and delivers `event.Event`s, then `event.SYNCED` once, to a sink until
cancelled. Two implementations exist: `manifests.ManifestSource` (a directory of YAML/JSON files) and
`kubernetes_api.KubernetesAPISource` (a live API server). A spec string on the command line picks one:

    manifests:DIR            the manifest files in DIR
    kubernetes               in-cluster service account, else the default kubeconfig
    kubernetes:KUBECONFIG    the cluster that KUBECONFIG's current context points at
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from clustermesh.errors import ConfigError
from clustermesh.kube import event, manifests, objects

_SPEC_FORMS = "'manifests:DIR', 'kubernetes' or 'kubernetes:KUBECONFIG'"


class Source(Protocol):
    """Something that delivers Kubernetes objects of `kinds` to a sink."""

    @property
    def kinds(self) -> frozenset[objects.AnyKind]:
        """The kinds this source delivers; objects of other kinds are never delivered."""
        ...

    async def run(self, sink: event.EventSink, *, ready: asyncio.Event | None = None) -> None:
        """Deliver the initial state, SYNCED, then changes to `sink` until cancelled; sets `ready` at SYNCED.

        Awaits `sink` for every item, so a slow sink slows the source. One run at a time; a new run starts
        from nothing (it re-delivers everything and a fresh SYNCED).
        """
        ...


def parse_source_spec(spec: str, *, kinds: Iterable[objects.AnyKind | str]) -> Source:
    """Build the source a spec string names; raises ConfigError naming the spec if it is malformed."""
    scheme, colon, argument = spec.partition(":")
    if scheme == "manifests" and argument:
        directory = Path(argument)
        if not directory.is_dir():
            raise ConfigError(f"source {spec!r}: {directory} is not a directory")
        return manifests.ManifestSource(directory, kinds=kinds)
    if scheme == "kubernetes" and (argument or not colon):
        kubeconfig = parse_kubernetes_spec(spec)
        # Imported here: the kubernetes client is slow to import and only this source needs it.
        from clustermesh.kube import kubernetes_api

        return kubernetes_api.KubernetesAPISource(kubeconfig, kinds=kinds)
    raise ConfigError(f"invalid source {spec!r}: expected {_SPEC_FORMS}")


def parse_kubernetes_spec(spec: str) -> Path | None:
    """The kubeconfig a `kubernetes` (None) or `kubernetes:KUBECONFIG` spec names; ConfigError naming it otherwise.

    None means the in-cluster service account configuration, else the default kubeconfig.
    """
    scheme, colon, argument = spec.partition(":")
    if scheme != "kubernetes" or (colon and not argument):
        raise ConfigError(f"invalid Kubernetes API {spec!r}: expected 'kubernetes' or 'kubernetes:KUBECONFIG'")
    if not argument:
        return None
    kubeconfig = Path(argument)
    if not kubeconfig.is_file():
        raise ConfigError(f"source {spec!r}: kubeconfig {kubeconfig} is not a file")
    return kubeconfig
