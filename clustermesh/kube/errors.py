"""Errors of the Kubernetes API boundary: what a list or watch request can fail with, translated once.

    ClusterMeshError
    └── KubeAPIError         a Kubernetes API request failed
        ├── KubeUnavailable      the API server could not be reached or the stream broke (retryable)
        ├── ResourceExpired      410 Gone: the resourceVersion or continue token is too old; relist
        ├── NotFound             404: the resource type is not served (e.g. a CRD that is not installed)
        └── Forbidden            401/403: the credentials are rejected or lack RBAC permission

`from_status` is the one mapping from an HTTP status code (or a watch ERROR event's Status) to this tree.
Only clustermesh/kube/kubernetes_api.py raises these, and its reflectors retry them, so callers of a source
never see them: they are the vocabulary of its retry loop and its log lines.
"""

from __future__ import annotations

from clustermesh.errors import ClusterMeshError

# Long Status messages (admission webhooks quote whole objects) are cut so log lines stay readable.
_MAX_MESSAGE = 300


class KubeAPIError(ClusterMeshError):
    """Raised when a Kubernetes API request fails; `status` is the HTTP code, or 0 for transport failures."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE] + "..."
        super().__init__(message)
        self.status = status


class KubeUnavailable(KubeAPIError):
    """Raised when the API server cannot be reached, times out or breaks a stream; retry with backoff."""


class ResourceExpired(KubeAPIError):
    """Raised on 410 Gone (HTTP or watch ERROR event): the requested resourceVersion is compacted; relist."""


class NotFound(KubeAPIError):
    """Raised on 404: the resource type is not served by this API server (e.g. its CRD is not installed)."""


class Forbidden(KubeAPIError):
    """Raised on 401/403: grant the source's identity list and watch on the resource (see deploy/ RBAC)."""


_BY_STATUS: dict[int, type[KubeAPIError]] = {
    401: Forbidden,
    403: Forbidden,
    404: NotFound,
    410: ResourceExpired,
}


def from_status(status: int, message: str) -> KubeAPIError:
    """Build the error for an HTTP status code (or a Status object's `code`) and its message."""
    return _BY_STATUS.get(status, KubeAPIError)(f"{status}: {message}", status=status)
