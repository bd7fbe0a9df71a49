from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncStatus(_message.Message):
    __slots__ = ("nodes", "services", "identities", "endpoints", "service_exports")
    NODES_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    SERVICE_EXPORTS_FIELD_NUMBER: _ClassVar[int]
    nodes: bool
    services: bool
    identities: bool
    endpoints: bool
    service_exports: bool
    def __init__(self, nodes: _Optional[bool] = ..., services: _Optional[bool] = ..., identities: _Optional[bool] = ..., endpoints: _Optional[bool] = ..., service_exports: _Optional[bool] = ...) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("name", "connected", "ready", "cluster_id", "config_retrieved", "kvstoremesh", "sync_canaries", "synced", "num_nodes", "num_endpoints", "num_identities", "num_services", "num_service_exports", "failures", "last_failure_unix", "last_error", "last_event_age_seconds", "status", "etcd_endpoint", "etcd_cluster_id", "revoked", "invalid_records", "reconnections", "refused_reason", "heartbeat_age_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_RETRIEVED_FIELD_NUMBER: _ClassVar[int]
    KVSTOREMESH_FIELD_NUMBER: _ClassVar[int]
    SYNC_CANARIES_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    NUM_NODES_FIELD_NUMBER: _ClassVar[int]
    NUM_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    NUM_IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    NUM_SERVICES_FIELD_NUMBER: _ClassVar[int]
    NUM_SERVICE_EXPORTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_UNIX_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ETCD_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ETCD_CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    INVALID_RECORDS_FIELD_NUMBER: _ClassVar[int]
    RECONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    connected: bool
    ready: bool
    cluster_id: int
    config_retrieved: bool
    kvstoremesh: bool
    sync_canaries: bool
    synced: SyncStatus
    num_nodes: int
    num_endpoints: int
    num_identities: int
    num_services: int
    num_service_exports: int
    failures: int
    last_failure_unix: float
    last_error: str
    last_event_age_seconds: float
    status: str
    etcd_endpoint: str
    etcd_cluster_id: str
    revoked: bool
    invalid_records: int
    reconnections: int
    refused_reason: str
    heartbeat_age_seconds: float
    def __init__(self, name: _Optional[str] = ..., connected: _Optional[bool] = ..., ready: _Optional[bool] = ..., cluster_id: _Optional[int] = ..., config_retrieved: _Optional[bool] = ..., kvstoremesh: _Optional[bool] = ..., sync_canaries: _Optional[bool] = ..., synced: _Optional[_Union[SyncStatus, _Mapping]] = ..., num_nodes: _Optional[int] = ..., num_endpoints: _Optional[int] = ..., num_identities: _Optional[int] = ..., num_services: _Optional[int] = ..., num_service_exports: _Optional[int] = ..., failures: _Optional[int] = ..., last_failure_unix: _Optional[float] = ..., last_error: _Optional[str] = ..., last_event_age_seconds: _Optional[float] = ..., status: _Optional[str] = ..., etcd_endpoint: _Optional[str] = ..., etcd_cluster_id: _Optional[str] = ..., revoked: _Optional[bool] = ..., invalid_records: _Optional[int] = ..., reconnections: _Optional[int] = ..., refused_reason: _Optional[str] = ..., heartbeat_age_seconds: _Optional[float] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("cluster_name", "cluster_id", "node_name", "peers", "num_global_services", "uptime_seconds", "version")
    CLUSTER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    NUM_GLOBAL_SERVICES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    cluster_name: str
    cluster_id: int
    node_name: str
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    num_global_services: int
    uptime_seconds: float
    version: str
    def __init__(self, cluster_name: _Optional[str] = ..., cluster_id: _Optional[int] = ..., node_name: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., num_global_services: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., version: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("cluster",)
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    def __init__(self, cluster: _Optional[str] = ...) -> None: ...

class NodeAddress(_message.Message):
    __slots__ = ("type", "ip")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    type: str
    ip: str
    def __init__(self, type: _Optional[str] = ..., ip: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("cluster", "name", "cluster_id", "addresses", "ipv4_alloc_cidr", "ipv6_alloc_cidr", "ipv4_health_ip", "ipv6_health_ip", "labels", "wireguard_pub_key", "encryption_key")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    IPV4_ALLOC_CIDR_FIELD_NUMBER: _ClassVar[int]
    IPV6_ALLOC_CIDR_FIELD_NUMBER: _ClassVar[int]
    IPV4_HEALTH_IP_FIELD_NUMBER: _ClassVar[int]
    IPV6_HEALTH_IP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WIREGUARD_PUB_KEY_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    name: str
    cluster_id: int
    addresses: _containers.RepeatedCompositeFieldContainer[NodeAddress]
    ipv4_alloc_cidr: str
    ipv6_alloc_cidr: str
    ipv4_health_ip: str
    ipv6_health_ip: str
    labels: _containers.ScalarMap[str, str]
    wireguard_pub_key: str
    encryption_key: int
    def __init__(self, cluster: _Optional[str] = ..., name: _Optional[str] = ..., cluster_id: _Optional[int] = ..., addresses: _Optional[_Iterable[_Union[NodeAddress, _Mapping]]] = ..., ipv4_alloc_cidr: _Optional[str] = ..., ipv6_alloc_cidr: _Optional[str] = ..., ipv4_health_ip: _Optional[str] = ..., ipv6_health_ip: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., wireguard_pub_key: _Optional[str] = ..., encryption_key: _Optional[int] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("id", "cluster", "labels")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: int
    cluster: str
    labels: str
    def __init__(self, id: _Optional[int] = ..., cluster: _Optional[str] = ..., labels: _Optional[str] = ...) -> None: ...

class ListIdentitiesResponse(_message.Message):
    __slots__ = ("identities",)
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    identities: _containers.RepeatedCompositeFieldContainer[Identity]
    def __init__(self, identities: _Optional[_Iterable[_Union[Identity, _Mapping]]] = ...) -> None: ...

class IPCacheEntry(_message.Message):
    __slots__ = ("prefix", "identity", "host_ip", "cluster", "encrypt_key", "namespace", "pod_name")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_KEY_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    identity: int
    host_ip: str
    cluster: str
    encrypt_key: int
    namespace: str
    pod_name: str
    def __init__(self, prefix: _Optional[str] = ..., identity: _Optional[int] = ..., host_ip: _Optional[str] = ..., cluster: _Optional[str] = ..., encrypt_key: _Optional[int] = ..., namespace: _Optional[str] = ..., pod_name: _Optional[str] = ...) -> None: ...

class ListIPCacheResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[IPCacheEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[IPCacheEntry, _Mapping]]] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("ip", "port", "protocol", "port_name", "cluster", "cluster_id", "local")
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    ip: str
    port: int
    protocol: str
    port_name: str
    cluster: str
    cluster_id: int
    local: bool
    def __init__(self, ip: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[str] = ..., port_name: _Optional[str] = ..., cluster: _Optional[str] = ..., cluster_id: _Optional[int] = ..., local: _Optional[bool] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("cluster", "namespace", "name", "cluster_id", "frontends", "backends", "include_external", "shared")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    cluster: str
    namespace: str
    name: str
    cluster_id: int
    frontends: _containers.RepeatedScalarFieldContainer[str]
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    include_external: bool
    shared: bool
    def __init__(self, cluster: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., cluster_id: _Optional[int] = ..., frontends: _Optional[_Iterable[str]] = ..., backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ..., include_external: _Optional[bool] = ..., shared: _Optional[bool] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ...) -> None: ...

class ResolveServiceRequest(_message.Message):
    __slots__ = ("namespace", "name")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ResolveServiceResponse(_message.Message):
    __slots__ = ("found", "namespace", "name", "affinity", "backends", "all_backends", "frontends")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    ALL_BACKENDS_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    namespace: str
    name: str
    affinity: str
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    all_backends: _containers.RepeatedCompositeFieldContainer[Backend]
    frontends: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, found: _Optional[bool] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., affinity: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ..., all_backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ..., frontends: _Optional[_Iterable[str]] = ..., **kwargs) -> None: ...

class LookupIPRequest(_message.Message):
    __slots__ = ("ip",)
    IP_FIELD_NUMBER: _ClassVar[int]
    ip: str
    def __init__(self, ip: _Optional[str] = ...) -> None: ...

class LookupIPResponse(_message.Message):
    __slots__ = ("found", "entry", "identity")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    found: bool
    entry: IPCacheEntry
    identity: Identity
    def __init__(self, found: _Optional[bool] = ..., entry: _Optional[_Union[IPCacheEntry, _Mapping]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("kinds", "skip_initial", "max_batch")
    KINDS_FIELD_NUMBER: _ClassVar[int]
    SKIP_INITIAL_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    skip_initial: bool
    max_batch: int
    def __init__(self, kinds: _Optional[_Iterable[str]] = ..., skip_initial: _Optional[bool] = ..., max_batch: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("type", "kind", "cluster", "key", "node", "identity", "ipcache", "service", "timestamp_unix")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UPSERT: _ClassVar[WatchEvent.Type]
        DELETE: _ClassVar[WatchEvent.Type]
        SYNCED: _ClassVar[WatchEvent.Type]
    UPSERT: WatchEvent.Type
    DELETE: WatchEvent.Type
    SYNCED: WatchEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    IPCACHE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    type: WatchEvent.Type
    kind: str
    cluster: str
    key: str
    node: Node
    identity: Identity
    ipcache: IPCacheEntry
    service: Service
    timestamp_unix: float
    def __init__(self, type: _Optional[_Union[WatchEvent.Type, str]] = ..., kind: _Optional[str] = ..., cluster: _Optional[str] = ..., key: _Optional[str] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ..., ipcache: _Optional[_Union[IPCacheEntry, _Mapping]] = ..., service: _Optional[_Union[Service, _Mapping]] = ..., timestamp_unix: _Optional[float] = ...) -> None: ...

class WatchEventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[WatchEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[WatchEvent, _Mapping]]] = ...) -> None: ...
