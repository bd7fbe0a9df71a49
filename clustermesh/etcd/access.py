"""etcd access control: the users and roles of a cluster's etcd (reference §4.3) and applying them.

Users are passwordless: etcd authenticates a client by its certificate, whose CN is the user name
(clustermesh.certs issues them). The policy is Cilium's etcdinit one, permission for permission, so a Cilium
agent reading our etcd and our agent reading Cilium's see the same least privilege: `remote` (every peer)
reads only the heartbeat, `cilium/state/`, this cluster's config key and sync canaries; nothing a peer holds
can write. Unlike Cilium's etcdinit, apply() is idempotent, so an etcd with persistent data can be
re-initialised on every start.
"""

from __future__ import annotations

import dataclasses
import logging

from clustermesh import keys
from clustermesh.etcd import client

log = logging.getLogger(__name__)

ROOT = "root"
REMOTE = "remote"
LOCAL = "local"
EXTERNAL_WORKLOAD = "externalworkload"


@dataclasses.dataclass(frozen=True)
class Role:
    """An etcd role and the exact permissions it holds (none for root, which may do everything)."""

    name: str
    permissions: tuple[client.Permission, ...] = ()


@dataclasses.dataclass(frozen=True)
class User:
    """A passwordless etcd user (the CN of its client certificate) and its one role."""

    name: str
    role: str


@dataclasses.dataclass(frozen=True)
class Policy:
    """The roles and users a cluster's etcd must have before auth is enabled."""

    roles: tuple[Role, ...]
    users: tuple[User, ...]


@dataclasses.dataclass(frozen=True)
class Applied:
    """What apply() changed; all empty when the etcd already matched the policy."""

    roles_added: tuple[str, ...] = ()
    users_added: tuple[str, ...] = ()
    permissions_granted: tuple[tuple[str, client.Permission], ...] = ()


def _read_prefix(prefix: str) -> client.Permission:
    key = prefix.encode()
    return client.Permission(client.PermType.READ, key, keys.prefix_range_end(key))


def _read_key(key: str) -> client.Permission:
    return client.Permission(client.PermType.READ, key.encode(), b"")


def _readwrite_prefix(prefix: str) -> client.Permission:
    key = prefix.encode()
    return client.Permission(client.PermType.READWRITE, key, keys.prefix_range_end(key))


def policy(cluster: str, *, external_workloads: bool = False) -> Policy:
    """Cilium's users and roles for the etcd of `cluster`; external_workloads adds user `externalworkload`.

    Raise ValueError for a name that cannot be a key segment (empty, or with '/').
    """
    # The heartbeat is granted as an exact prefix (key plus its prefix end), as Cilium's etcdinit does.
    roles = [
        Role(ROOT),
        Role(
            REMOTE,
            (
                _read_prefix(keys.HEARTBEAT_KEY),
                _read_prefix(keys.subtree_prefix(keys.STATE)),
                _read_key(keys.cluster_config_key(cluster)),
                _read_prefix(keys.synced_prefix(cluster)),
            ),
        ),
        Role(
            LOCAL,
            (
                _read_prefix(keys.HEARTBEAT_KEY),
                _read_prefix(keys.subtree_prefix(keys.CACHE)),
                _read_prefix(keys.subtree_prefix(keys.CLUSTER_CONFIG_PREFIX)),
                _read_prefix(keys.subtree_prefix(keys.SYNCED_PREFIX)),
            ),
        ),
    ]
    users = [
        User(ROOT, ROOT),
        User(f"admin-{cluster}", ROOT),
        User(REMOTE, REMOTE),
        User(f"local-{cluster}", LOCAL),
    ]
    if external_workloads:
        roles.append(
            Role(
                EXTERNAL_WORKLOAD,
                (
                    # b"\0" .. b"\0" is etcd's "every key".
                    client.Permission(client.PermType.READ, b"\0", b"\0"),
                    _readwrite_prefix(keys.subtree_prefix(keys.NODE_REGISTER_PREFIX)),
                    _readwrite_prefix(keys.subtree_prefix(keys.INIT_LOCK_PATH)),
                ),
            )
        )
        users.append(User(EXTERNAL_WORKLOAD, EXTERNAL_WORKLOAD))
    return Policy(roles=tuple(roles), users=tuple(users))


async def apply(etcd: client.EtcdClient, wanted: Policy) -> Applied:
    """Create the missing roles, permissions and users of `wanted`, grant the roles, then enable auth.

    Idempotent: what exists is kept, so it is safe on every start. Permissions a role holds beyond the
    policy are not revoked, only logged. Once auth is on, `etcd` must authenticate as a root-role user
    (`admin-<cluster>`). Raise StoreError subclasses on failure; a partial run is completed by the next one.
    """
    roles_added: list[str] = []
    granted: list[tuple[str, client.Permission]] = []
    for role in wanted.roles:
        existing = await etcd.role_get(role.name)
        if existing is None:
            await etcd.role_add(role.name)
            roles_added.append(role.name)
            existing = []
        for permission in role.permissions:
            if permission not in existing:
                await etcd.role_grant_permission(
                    role.name, permission.perm_type, key=permission.key, range_end=permission.range_end
                )
                granted.append((role.name, permission))
        extra = [permission for permission in existing if permission not in role.permissions]
        if extra:
            log.warning("etcd role %s holds permissions beyond clustermesh's policy: %s", role.name, extra)
    users = set(await etcd.user_list())
    users_added: list[str] = []
    for user in wanted.users:
        if user.name not in users:
            await etcd.user_add(user.name)
            users_added.append(user.name)
        # Granting a role a user already holds is a no-op in etcd.
        await etcd.user_grant_role(user.name, user.role)
    # Enabling auth when it is already on is a no-op in etcd.
    await etcd.auth_enable()
    applied = Applied(tuple(roles_added), tuple(users_added), tuple(granted))
    log.info(
        "etcd access: %d roles and %d users added, %d permissions granted, auth enabled",
        len(applied.roles_added), len(applied.users_added), len(applied.permissions_granted),
    )
    return applied
