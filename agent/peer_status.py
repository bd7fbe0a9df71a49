"""What the agent knows about one peer's connection, as a plain snapshot for status, metrics and the CLI.

Field names match PeerStatus in proto/clustermesh/v1/agent.proto, so serving it is a field-by-field copy.
remote_cluster.py produces these; grpc_server.py and metrics.py read them; nothing else mutates them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SyncState:
    """Whether each kind finished its initial list (after its canary, when the peer publishes canaries)."""

    nodes: bool = False
    services: bool = False
    identities: bool = False
    endpoints: bool = False
    service_exports: bool = False


@dataclasses.dataclass(frozen=True)
class PeerStatus:
    """One peer at one moment. Ages are in seconds, -1 when there is nothing to measure yet."""

    name: str
    connected: bool = False
    ready: bool = False
    cluster_id: int = 0
    config_retrieved: bool = False
    kvstoremesh: bool = False
    sync_canaries: bool = False
    synced: SyncState = SyncState()
    num_nodes: int = 0
    num_endpoints: int = 0
    num_identities: int = 0
    num_services: int = 0
    num_service_exports: int = 0
    failures: int = 0
    last_failure_unix: float = 0.0
    last_error: str = ""
    last_event_age_seconds: float = -1.0
    status: str = ""
    etcd_endpoint: str = ""
    etcd_cluster_id: str = ""
    revoked: bool = False
    invalid_records: int = 0
    reconnections: int = 0
    refused_reason: str = ""
    heartbeat_age_seconds: float = -1.0
    invalid_by_reason: tuple[tuple[str, int], ...] = ()
