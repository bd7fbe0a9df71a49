"""Global services: which backends a name resolves to, merging local services with peers' ClusterServices.

Owns the meaning of reference §8: remote backends join a service only when the *local* service is global; a
peer's service that is not shared contributes nothing; affinity picks among local and remote backends:

* `none`: every backend.
* `local`: every local backend (even terminating ones); the remote ones only while no local backend is
  active, and there is at least one remote.
* `remote`: every remote backend; the local ones only while there is no remote backend and at least one
  healthy (active or terminating) local one.

Remote backends count as active: a peer exports only ready endpoints, and a peer whose connection is gone
keeps its last-known backends until the mesh revokes (drains) them after the cache TTL.

Without a local source (`--local-source` not given) there is nothing local to merge into: every service a
peer shares resolves, global, with affinity none and only remote backends. That keeps the agent useful as a
pure mesh reader (e.g. for `clustermesh resolve`) without pretending it knows the local cluster.

Does not own: the records (agent/cache.py, agent/local_services.py) or any protocol; DNS and gRPC call
`resolve()` per query, which reads only in-memory state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from agent import cache as mesh_cache
from agent import local_services

Affinity = local_services.Affinity
BackendState = local_services.BackendState


@dataclasses.dataclass(frozen=True, slots=True)
class Backend:
    """One backend address and port of a service; `local` says it is in this agent's own cluster."""

    ip: str
    port: int
    protocol: str
    port_name: str
    cluster: str
    cluster_id: int
    local: bool
    state: BackendState = BackendState.ACTIVE


@dataclasses.dataclass(frozen=True)
class Resolution:
    """What a service name resolves to now.

    `backends` are the ones affinity selects (what a client should use, and what DNS answers with; the
    CLI marks them "preferred"); `all_backends` are every known backend, local and remote, selected or not.
    `frontends` are the local ClusterIPs.
    """

    namespace: str
    name: str
    global_: bool
    shared: bool
    affinity: Affinity
    frontends: tuple[str, ...]
    backends: tuple[Backend, ...]
    all_backends: tuple[Backend, ...]


class ServiceResolver:
    """Resolves namespace/name against the peers' cache and (when given) the local services."""

    def __init__(
        self,
        cache: mesh_cache.MeshCache,
        local: local_services.LocalServices | None,
        *,
        local_cluster: str,
        local_cluster_id: int,
    ) -> None:
        self._cache = cache
        self._local = local
        self._local_cluster = local_cluster
        self._local_cluster_id = local_cluster_id

    def __repr__(self) -> str:
        mode = "peers-only" if self._local is None else "local+peers"
        return f"<ServiceResolver {self._local_cluster} {mode} global={self.global_service_count()}>"

    def global_service_count(self) -> int:
        """How many services the peers share (Cilium's num-global-services)."""
        return len(self._cache.global_service_names())

    def has_namespace(self, namespace: str) -> bool:
        """Whether some resolvable service lives in namespace (DNS: the name `<ns>.svc.<domain>` exists)."""
        if self._local is not None:
            return self._local.has_namespace(namespace)
        return any(ns == namespace for ns, _ in self._cache.global_service_names())

    def resolve(self, namespace: str, name: str) -> Resolution | None:
        """The service's backends now, or None when the name is unknown.

        Unknown means: no local Service of that name (with a local source), or no peer sharing it (without).
        Never blocks and never touches etcd.
        """
        if self._local is None:
            remote = self._remote_backends(namespace, name)
            if not remote:
                return None
            return Resolution(namespace, name, True, True, Affinity.NONE, (), remote, remote)
        local = self._local.get(namespace, name)
        if local is None:
            return None
        own = tuple(self._local_backends(local))
        remote = self._remote_backends(namespace, name) if local.global_ else ()
        selected = select(local.affinity, own, remote)
        return Resolution(
            namespace=namespace,
            name=name,
            global_=local.global_,
            shared=local.shared,
            affinity=local.affinity,
            frontends=local.cluster_ips,
            backends=selected,
            all_backends=own + remote,
        )

    def _local_backends(self, service: local_services.LocalService) -> Iterable[Backend]:
        for backend in service.backends:
            for port in backend.ports:
                yield Backend(backend.ip, port.port, port.protocol, port.name, self._local_cluster,
                              self._local_cluster_id, True, backend.state)

    def _remote_backends(self, namespace: str, name: str) -> tuple[Backend, ...]:
        backends = []
        for cluster, service in sorted(self._cache.services_named(namespace, name).items()):
            # Cilium treats a peer's non-shared service as absent: its backends stay in its own cluster.
            if not service.shared or not service.backends:
                continue
            for ip, ports in service.backends.items():
                for port_name, l4 in ports.items():
                    backends.append(Backend(ip, l4.port, l4.protocol, port_name, cluster, service.cluster_id, False))
        return tuple(backends)


def select(affinity: Affinity, local: tuple[Backend, ...], remote: tuple[Backend, ...]) -> tuple[Backend, ...]:
    """The backends affinity selects among local and remote ones (rules in the module docstring)."""
    if affinity is Affinity.LOCAL:
        if any(b.state is BackendState.ACTIVE for b in local):
            return local
        return local + remote
    if affinity is Affinity.REMOTE:
        return remote if remote else local
    return local + remote
