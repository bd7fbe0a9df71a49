"""Single objects read and written through the Kubernetes API: what the trust exchange (clustermesh.connect)
needs from a cluster — its own Secret, its ClusterMesh resource — and applying Secrets and the ClusterMesh.

The official client is blocking: each function runs its calls in a thread (asyncio.to_thread), one API client
per call, closed afterwards. Bodies are plain dicts (camelCase, as a manifest file has them) both ways. Failures
are ConfigErrors naming the object and the API server's own message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from clustermesh.errors import ConfigError
from clustermesh.kube import kubernetes_api


async def read_secret(kubeconfig: Path | None, namespace: str, name: str) -> dict[str, Any]:
    """The Secret namespace/name as a dict; ConfigError if it cannot be read."""
    return await asyncio.to_thread(_read_secret, kubeconfig, namespace, name)


async def read_cluster_object(
    kubeconfig: Path | None, group: str, version: str, plural: str, name: str
) -> dict[str, Any] | None:
    """The cluster-scoped custom object, or None if there is none (or no such resource); ConfigError otherwise."""
    return await asyncio.to_thread(_read_cluster_object, kubeconfig, group, version, plural, name)


async def apply(
    kubeconfig: Path | None, documents: Sequence[dict[str, Any]], *, plurals: dict[str, tuple[str, str, str]]
) -> list[str]:
    """Create or replace each document; return what was applied, as `Kind namespace/name`.

    Secrets are namespaced core objects; any other kind must be a cluster-scoped custom resource listed in
    plurals (kind -> (group, version, plural)). A custom object with a resourceVersion is replaced, one
    without is created.
    """
    return await asyncio.to_thread(_apply, kubeconfig, documents, plurals)


def _api_client(kubeconfig: Path | None) -> client.ApiClient:
    return client.ApiClient(kubernetes_api.load_configuration(kubeconfig))


def _error(exc: client.ApiException, what: str) -> ConfigError:
    return ConfigError(f"{what}: the Kubernetes API answered {exc.status} {kubernetes_api.status_message(exc)}")


def _read_secret(kubeconfig: Path | None, namespace: str, name: str) -> dict[str, Any]:
    with _api_client(kubeconfig) as api_client:
        try:
            secret = client.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            raise _error(exc, f"reading Secret {namespace}/{name}") from None
        return dict(api_client.sanitize_for_serialization(secret))


def _read_cluster_object(
    kubeconfig: Path | None, group: str, version: str, plural: str, name: str
) -> dict[str, Any] | None:
    with _api_client(kubeconfig) as api_client:
        try:
            found = client.CustomObjectsApi(api_client).get_cluster_custom_object(group, version, plural, name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(exc, f"reading {plural}.{group} {name}") from None
    return dict(found)  # type: ignore[call-overload]


def _apply(
    kubeconfig: Path | None, documents: Sequence[dict[str, Any]], plurals: dict[str, tuple[str, str, str]]
) -> list[str]:
    applied = []
    with _api_client(kubeconfig) as api_client:
        core = client.CoreV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        for document in documents:
            kind, metadata = document["kind"], document["metadata"]
            what = f"{kind} {metadata.get('namespace', '') + '/' if kind == 'Secret' else ''}{metadata['name']}"
            try:
                if kind == "Secret":
                    _apply_secret(core, document)
                elif kind in plurals:
                    if "resourceVersion" in metadata:
                        custom.replace_cluster_custom_object(*plurals[kind], metadata["name"], document)
                    else:
                        custom.create_cluster_custom_object(*plurals[kind], document)
                else:
                    raise ValueError(f"cannot apply kind {kind}")
            except client.ApiException as exc:
                raise _error(exc, f"applying {what}") from None
            applied.append(what)
    return applied


def _apply_secret(core: client.CoreV1Api, document: dict[str, Any]) -> None:
    metadata = document["metadata"]
    # The client serialises a plain dict body as it is; its stubs only know the model classes.
    try:
        core.replace_namespaced_secret(metadata["name"], metadata["namespace"], document)  # type: ignore[arg-type]
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_secret(metadata["namespace"], document)  # type: ignore[arg-type]
