from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("cluster_name", "cluster_id", "max_connected_clusters", "etcd_endpoints", "pod_cidrs", "version")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_CONNECTED_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    ETCD_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    POD_CIDRS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    cluster_id: int
    max_connected_clusters: int
    etcd_endpoints: _containers.RepeatedScalarFieldContainer[str]
    pod_cidrs: _containers.RepeatedScalarFieldContainer[str]
    version: str
    def __init__(self, cluster_name: _Optional[str] = ..., cluster_id: _Optional[int] = ..., max_connected_clusters: _Optional[int] = ..., etcd_endpoints: _Optional[_Iterable[str]] = ..., pod_cidrs: _Optional[_Iterable[str]] = ..., version: _Optional[str] = ...) -> None: ...

class GetSyncStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KindSyncStatus(_message.Message):
    __slots__ = ("kind", "synced", "keys", "pending", "puts", "deletes", "failures", "last_error")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    PUTS_FIELD_NUMBER: _ClassVar[int]
    DELETES_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    synced: bool
    keys: int
    pending: int
    puts: int
    deletes: int
    failures: int
    last_error: str
    def __init__(self, kind: _Optional[str] = ..., synced: _Optional[bool] = ..., keys: _Optional[int] = ..., pending: _Optional[int] = ..., puts: _Optional[int] = ..., deletes: _Optional[int] = ..., failures: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class ApiserverSyncStatus(_message.Message):
    __slots__ = ("ready", "kinds", "bootstrap_seconds", "invalid_objects", "source_synced", "etcd_status")
    READY_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    BOOTSTRAP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INVALID_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SYNCED_FIELD_NUMBER: _ClassVar[int]
    ETCD_STATUS_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    kinds: _containers.RepeatedCompositeFieldContainer[KindSyncStatus]
    bootstrap_seconds: float
    invalid_objects: int
    source_synced: bool
    etcd_status: str
    def __init__(self, ready: _Optional[bool] = ..., kinds: _Optional[_Iterable[_Union[KindSyncStatus, _Mapping]]] = ..., bootstrap_seconds: _Optional[float] = ..., invalid_objects: _Optional[int] = ..., source_synced: _Optional[bool] = ..., etcd_status: _Optional[str] = ...) -> None: ...
