"""The exception hierarchy of clustermesh: every error a caller of the core may need to handle.

    ClusterMeshError
    ├── DecodeError          a record read from etcd (or a manifest) is malformed or fails validation
    ├── ConfigError          a configuration file, flag or peer file is invalid
    ├── CertificateError     certificate material is missing, unreadable or inconsistent
    └── StoreError           talking to etcd failed
        ├── StoreUnavailable     etcd cannot be reached (retryable)
        ├── StoreTimeout         a request exceeded its deadline (it may or may not have been applied)
        ├── PermissionDenied     the client certificate's etcd user lacks the permission
        ├── Compacted            the requested revision has been compacted away: relist
        ├── LeaseExpired         a lease is gone: grant a new one and re-publish its keys
        └── ClusterIDChanged     the etcd cluster behind the endpoints changed: resync

Only clustermesh/etcd/ translates grpc errors into StoreError subclasses; nothing above it sees grpc exceptions.
Programmer errors (bad argument combinations) raise TypeError / ValueError instead.
"""

from __future__ import annotations


class ClusterMeshError(Exception):
    """Base of every error clustermesh raises on purpose."""


class DecodeError(ClusterMeshError):
    """Raised when a value cannot be decoded into a record or fails validation; names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class ConfigError(ClusterMeshError):
    """Raised when configuration (flags, YAML, peer files) is invalid; the message names the bad value."""


class CertificateError(ClusterMeshError):
    """Raised when certificate or key files are missing, unreadable or do not match."""


class StoreError(ClusterMeshError):
    """Raised when an etcd operation fails."""


class StoreUnavailable(StoreError):
    """Raised when etcd cannot be reached; retry with backoff."""


class StoreTimeout(StoreError):
    """Raised when an etcd request exceeds its deadline; re-read before retrying a write."""


class PermissionDenied(StoreError):
    """Raised when the etcd user (the client certificate's CN) lacks permission for the operation."""


class Compacted(StoreError):
    """Raised when a watch or read asks for a revision that etcd has compacted; relist from the current one."""

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


class LeaseExpired(StoreError):
    """Raised when a lease no longer exists; grant a new lease and re-publish the keys attached to it."""


class ClusterIDChanged(StoreError):
    """Raised when responses come from a different etcd cluster than the first one seen on this connection."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"etcd cluster ID has changed: expected {expected:x}, got {got:x}")
        self.expected = expected
        self.got = got
