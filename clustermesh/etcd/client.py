"""The etcd v3 client: one mTLS gRPC channel to an etcd cluster and the unary calls clustermesh needs.

Owns: dialing (endpoints, TLS, keepalive, reconnect backoff, receive limit), pinning the etcd cluster id of the
first response, translating gRPC errors into clustermesh.errors.StoreError subclasses, KV reads and writes
(paginated lists at a pinned revision, transactions), compaction, leases (unary part), auth administration.
Does not own: watch streams (watch.py), lease keep-alive sessions (lease.py), resync logic (watch_store.py,
sync_store.py). Nothing above clustermesh/etcd/ sees a grpc exception or a protobuf message.

Why our own client: see DESIGN.md "etcd client" (python-etcd3 cannot paginate or re-create watches, the others
drop events or lack TLS); this one matches Go's clientv3 on batched writes and reads on this machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import NamedTuple

import grpc

from clustermesh import errors, keys, tls
from clustermesh.api.etcd import rpc_pb2 as pb
from clustermesh.api.etcd import rpc_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# etcd rejects larger transactions by default (--max-txn-ops); writers batch to this size.
MAX_TXN_OPS = 128
# Paginated lists ask for this many keys per Range; small enough to stay far below the receive limit.
DEFAULT_PAGE_SIZE = 2000
# A catch-up watch over transaction-batched history can exceed gRPC's 4 MiB default in one message.
MAX_RECEIVE_BYTES = 256 * 1024 * 1024


class KeyValue(NamedTuple):
    """One key as stored in etcd."""

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    lease: int = 0


class ListResult(NamedTuple):
    """All keys under a prefix, read at one revision."""

    kvs: list[KeyValue]
    revision: int


class PermType(enum.IntEnum):
    """etcd role permission types (authpb.Permission.Type)."""

    READ = 0
    WRITE = 1
    READWRITE = 2


class Permission(NamedTuple):
    """One permission granted to an etcd role: a key, or a range [key, range_end)."""

    perm_type: PermType
    key: bytes
    range_end: bytes


class Status(NamedTuple):
    """What etcd's Maintenance.Status reports about the member we talk to."""

    version: str
    cluster_id: int
    member_id: int
    revision: int
    db_size: int
    leader: int


@dataclasses.dataclass(frozen=True)
class EtcdConfig:
    """How to reach an etcd cluster. Defaults follow DESIGN.md "etcd client" (measured, see there)."""

    endpoints: tuple[str, ...]
    tls: tls.TLSFiles | None = None
    server_name: str | None = None
    keepalive_time: float = 5.0
    keepalive_timeout: float = 5.0
    initial_reconnect_backoff: float = 0.2
    max_reconnect_backoff: float = 5.0
    request_timeout: float = 15.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("EtcdConfig needs at least one endpoint")


@dataclasses.dataclass(frozen=True)
class Op:
    """One operation inside a transaction; build with put_op / delete_op / delete_prefix_op / get_op."""

    request: pb.RequestOp


@dataclasses.dataclass(frozen=True)
class Compare:
    """One transaction guard; build with version_equals / value_equals / mod_revision_equals."""

    compare: pb.Compare


class TxnResult(NamedTuple):
    """Outcome of a transaction: whether the guards held, and the revision after it."""

    succeeded: bool
    revision: int
    responses: list[pb.ResponseOp]


def put_op(key: bytes, value: bytes, *, lease: int = 0) -> Op:
    """A put inside a transaction."""
    return Op(pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease)))


def delete_op(key: bytes) -> Op:
    """A single-key delete inside a transaction."""
    return Op(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key)))


def delete_prefix_op(prefix: bytes) -> Op:
    """A delete of every key under prefix inside a transaction."""
    return Op(
        pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=prefix, range_end=keys.prefix_range_end(prefix)))
    )


def get_op(key: bytes) -> Op:
    """A single-key read inside a transaction."""
    return Op(pb.RequestOp(request_range=pb.RangeRequest(key=key)))


def version_equals(key: bytes, version: int) -> Compare:
    """Guard: the key's version equals version (0 = the key does not exist)."""
    return Compare(
        pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VERSION, key=key, version=version)
    )


def value_equals(key: bytes, value: bytes) -> Compare:
    """Guard: the key exists with exactly this value."""
    return Compare(pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.VALUE, key=key, value=value))


def mod_revision_equals(key: bytes, revision: int) -> Compare:
    """Guard: the key was last modified at revision."""
    return Compare(
        pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key, mod_revision=revision)
    )


_CODE_TO_ERROR: dict[grpc.StatusCode, type[errors.StoreError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.StoreUnavailable,
    # etcd answers INTERNAL/UNKNOWN while shutting down gracefully or when a stream is reset: retryable.
    grpc.StatusCode.INTERNAL: errors.StoreUnavailable,
    grpc.StatusCode.UNKNOWN: errors.StoreUnavailable,
    grpc.StatusCode.CANCELLED: errors.StoreUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.StoreTimeout,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied,
}


def translate(exc: grpc.RpcError, what: str) -> errors.StoreError:
    """Map a gRPC error to the StoreError subclass callers handle (the one mapping table of the client)."""
    code = exc.code() if isinstance(exc, grpc.aio.AioRpcError | grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.aio.AioRpcError | grpc.Call) else str(exc)) or ""
    message = f"{what}: {details or code}"
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return errors.Compacted(message, compact_revision=0)
    if code == grpc.StatusCode.NOT_FOUND and "lease" in details:
        return errors.LeaseExpired(message)
    if code is not None and code in _CODE_TO_ERROR:
        return _CODE_TO_ERROR[code](message)
    return errors.StoreError(message)


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Translate gRPC errors raised inside the block into StoreError subclasses."""
    try:
        yield
    except grpc.RpcError as exc:
        raise translate(exc, what) from exc


def channel_options(config: EtcdConfig) -> list[tuple[str, int | str]]:
    """gRPC channel options for an etcd connection (keepalive, backoff, receive limit, TLS name)."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.keepalive_time_ms", int(config.keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout * 1000)),
        # Without it a hung peer (SIGSTOPped etcd, TCP still open) fails streams only after ~17 s (grpc 1.85).
        ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", int(config.initial_reconnect_backoff * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(config.initial_reconnect_backoff * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(config.max_reconnect_backoff * 1000)),
        # Separate channels per client: never share a subchannel whose cluster id was pinned elsewhere.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if config.server_name:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return options


class ChannelPool:
    """Shares one gRPC channel between the clients that dial the same target with the same TLS material and
    channel options; a client takes a share in EtcdClient.connect(channels=...) and returns it on close().

    Agents behind KVStoreMesh reach every peer through one etcd with the same credentials: one TCP and TLS
    connection serves them all instead of one each, whose buffers grow with the initial lists (measured with
    25 peers: ~10 MB, bench/agent_bootstrap.py). What is per client stays per client: its calls, deadlines,
    Status probes and pinned etcd cluster id (ClusterIDChanged). Keepalive watches the shared connection,
    which is the same etcd for all of them. Other material (a rotated certificate) or options dial another
    channel; the last share returned closes the channel. Safe for concurrent use from one event loop.
    """

    def __init__(self) -> None:
        self._channels: dict[tuple[object, ...], tuple[grpc.aio.Channel, int]] = {}

    def __repr__(self) -> str:
        shares = sorted(count for _, count in self._channels.values())
        return f"<ChannelPool channels={len(self._channels)} shares={shares}>"

    def acquire(
        self, target: str, material: tls.TLSMaterial | None, options: list[tuple[str, int | str]]
    ) -> grpc.aio.Channel:
        """A share of the channel to target with this material (None: insecure) and options."""
        key = (target, material, tuple(options))
        channel, count = self._channels.get(key) or (_open_channel(target, material, options), 0)
        self._channels[key] = (channel, count + 1)
        return channel

    async def release(self, channel: grpc.aio.Channel) -> None:
        """Return one share of channel; the last one closes it."""
        for key, (held, count) in self._channels.items():
            if held is channel:
                if count > 1:
                    self._channels[key] = (held, count - 1)
                    return
                del self._channels[key]
                break
        await channel.close()


def _open_channel(
    target: str, material: tls.TLSMaterial | None, options: list[tuple[str, int | str]]
) -> grpc.aio.Channel:
    if material is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.channel_credentials(material), options=options)


def _target(endpoint: str) -> tuple[str, bool]:
    """Turn an etcd endpoint URL into a gRPC target; return it with whether TLS is asked for."""
    for scheme, secure in (("https://", True), ("unixs://", True), ("http://", False), ("unix://", False)):
        if endpoint.startswith(scheme):
            rest = endpoint[len(scheme) :].rstrip("/")
            return (f"unix:{rest}" if scheme.startswith("unix") else rest), secure
    return endpoint, False


class EtcdClient:
    """A connection to one etcd cluster. Safe for concurrent use by many tasks; close() once when done.

    The etcd cluster id of the first response is pinned; any later response from another cluster raises
    ClusterIDChanged (an HA pair of independent etcds behind one address must force a full resync).
    """

    def __init__(
        self, config: EtcdConfig, channel: grpc.aio.Channel, endpoint: str, *, pool: ChannelPool | None = None
    ) -> None:
        self.config = config
        self.endpoint = endpoint
        self.channel = channel
        self.cluster_id = 0
        # The pool channel is a share of (None: the client's own), and whether close() returned the share.
        self._pool = pool
        self._released = False
        self._kv = pb_grpc.KVStub(channel)
        self._lease = pb_grpc.LeaseStub(channel)
        self._auth = pb_grpc.AuthStub(channel)
        self._maintenance = pb_grpc.MaintenanceStub(channel)
        self._cluster = pb_grpc.ClusterStub(channel)
        self.watch_stub = pb_grpc.WatchStub(channel)
        self.lease_stub = self._lease

    def __repr__(self) -> str:
        return f"<EtcdClient endpoint={self.endpoint} cluster_id={self.cluster_id:x}>"

    @classmethod
    async def connect(
        cls, config: EtcdConfig, *, timeout: float | None = None, channels: ChannelPool | None = None
    ) -> EtcdClient:
        """Dial the first endpoint that answers a Status call; raise StoreUnavailable if none does.

        With `channels`, the client takes a share of the pool's channel to that endpoint (ChannelPool).
        """
        material = tls.load(config.tls) if config.tls else None
        last_error: errors.StoreError | None = None
        for endpoint in config.endpoints:
            target, secure = _target(endpoint)
            if secure and material is None:
                raise errors.ConfigError(f"endpoint {endpoint} uses TLS but no certificates were given")
            channel_material = material if secure else None
            if channels is not None:
                channel = channels.acquire(target, channel_material, channel_options(config))
            else:
                channel = _open_channel(target, channel_material, channel_options(config))
            client = cls(config, channel, endpoint, pool=channels)
            try:
                await client.status(timeout=timeout or config.request_timeout)
            except errors.StoreError as exc:
                last_error = exc
                await client.close()
                continue
            except BaseException:
                await client.close()
                raise
            return client
        assert last_error is not None
        raise last_error

    async def close(self) -> None:
        """Close the channel; in-flight calls fail with StoreUnavailable. Safe to call twice.

        A client sharing a pool's channel returns its share instead: its calls must have ended (other clients
        go on using the channel).
        """
        if self._pool is None:
            await self.channel.close()
        elif not self._released:
            self._released = True
            await self._pool.release(self.channel)

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def check_header(self, header: pb.ResponseHeader) -> None:
        """Pin the etcd cluster id on first sight; raise ClusterIDChanged when a response comes from another."""
        cluster_id = header.cluster_id
        if not self.cluster_id:
            self.cluster_id = cluster_id
        elif cluster_id and cluster_id != self.cluster_id:
            raise errors.ClusterIDChanged(self.cluster_id, cluster_id)

    def _timeout(self, timeout: float | None) -> float:
        return self.config.request_timeout if timeout is None else timeout

    # --- KV -------------------------------------------------------------------------------------------

    async def get(self, key: bytes, *, timeout: float | None = None) -> KeyValue | None:
        """The key's current value, or None if it does not exist."""
        with mapped_errors(f"get {key!r}"):
            resp = await self._kv.Range(pb.RangeRequest(key=key), timeout=self._timeout(timeout))
        self.check_header(resp.header)
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return KeyValue(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease)

    async def list_pages(
        self, prefix: bytes, *, page_size: int = DEFAULT_PAGE_SIZE, keys_only: bool = False,
        timeout: float | None = None, max_create_revision: int = 0,
    ) -> AsyncIterator[tuple[int, Sequence[pb.KeyValue]]]:
        """Every key under prefix as (revision, page) pairs, all pages read at one pinned revision.

        For readers inside clustermesh/etcd that consume a large prefix as it arrives instead of holding it
        whole; the pages are etcd's own messages, so nothing is copied on the way. With max_create_revision,
        only keys created at or before that revision (etcd filters them; 0: every key).
        """
        end = keys.prefix_range_end(prefix)
        revision = 0
        start = prefix
        while True:
            request = pb.RangeRequest(
                key=start, range_end=end, limit=page_size, revision=revision, keys_only=keys_only,
                max_create_revision=max_create_revision,
            )
            with mapped_errors(f"list {prefix!r}"):
                resp = await self._kv.Range(request, timeout=self._timeout(timeout))
            self.check_header(resp.header)
            revision = revision or resp.header.revision
            yield revision, resp.kvs
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    async def list_prefix(
        self, prefix: bytes, *, page_size: int = DEFAULT_PAGE_SIZE, keys_only: bool = False,
        timeout: float | None = None, max_create_revision: int = 0,
    ) -> ListResult:
        """Every key under prefix, read page by page at one pinned revision (a consistent snapshot).

        With max_create_revision, only keys created at or before that revision (0: every key).
        """
        kvs: list[KeyValue] = []
        revision = 0
        async for page_revision, page in self.list_pages(prefix, page_size=page_size, keys_only=keys_only,
                                                         timeout=timeout, max_create_revision=max_create_revision):
            revision = page_revision
            kvs.extend(KeyValue(kv.key, kv.value, kv.mod_revision, kv.create_revision, kv.lease) for kv in page)
        return ListResult(kvs, revision)

    async def count_prefix(self, prefix: bytes, *, timeout: float | None = None) -> int:
        """How many keys exist under prefix."""
        request = pb.RangeRequest(key=prefix, range_end=keys.prefix_range_end(prefix), count_only=True)
        with mapped_errors(f"count {prefix!r}"):
            resp = await self._kv.Range(request, timeout=self._timeout(timeout))
        self.check_header(resp.header)
        return resp.count

    async def put(self, key: bytes, value: bytes, *, lease: int = 0, timeout: float | None = None) -> int:
        """Write one key; return the new revision."""
        with mapped_errors(f"put {key!r}"):
            resp = await self._kv.Put(
                pb.PutRequest(key=key, value=value, lease=lease), timeout=self._timeout(timeout)
            )
        self.check_header(resp.header)
        return resp.header.revision

    async def delete(self, key: bytes, *, timeout: float | None = None) -> int:
        """Delete one key; return how many keys were deleted (0 or 1)."""
        with mapped_errors(f"delete {key!r}"):
            resp = await self._kv.DeleteRange(pb.DeleteRangeRequest(key=key), timeout=self._timeout(timeout))
        self.check_header(resp.header)
        return resp.deleted

    async def delete_prefix(self, prefix: bytes, *, timeout: float | None = None) -> int:
        """Delete every key under prefix; return how many were deleted."""
        request = pb.DeleteRangeRequest(key=prefix, range_end=keys.prefix_range_end(prefix))
        with mapped_errors(f"delete prefix {prefix!r}"):
            resp = await self._kv.DeleteRange(request, timeout=self._timeout(timeout))
        self.check_header(resp.header)
        return resp.deleted

    async def txn(
        self,
        success: Sequence[Op],
        *,
        compare: Sequence[Compare] = (),
        failure: Sequence[Op] = (),
        timeout: float | None = None,
    ) -> TxnResult:
        """Run one transaction (at most MAX_TXN_OPS operations per branch).

        A StoreTimeout means the outcome is unknown: re-read before retrying anything that is not idempotent.
        """
        if len(success) > MAX_TXN_OPS or len(failure) > MAX_TXN_OPS:
            raise ValueError(f"a transaction holds at most {MAX_TXN_OPS} operations per branch")
        request = pb.TxnRequest(
            compare=[c.compare for c in compare],
            success=[op.request for op in success],
            failure=[op.request for op in failure],
        )
        with mapped_errors("txn"):
            resp = await self._kv.Txn(request, timeout=self._timeout(timeout))
        self.check_header(resp.header)
        return TxnResult(resp.succeeded, resp.header.revision, list(resp.responses))

    async def write(
        self,
        puts: Iterable[tuple[bytes, bytes, int]],
        deletes: Iterable[bytes] = (),
        *,
        timeout: float | None = None,
    ) -> int:
        """Put each (key, value, lease) and delete each key in one unguarded transaction; return its revision.

        The request txn() sends for put_op()s and delete_op()s, built in place: a writer of thousands of keys
        (sync_store) skips the Op, RequestOp and PutRequest it would build per key and their copies into the
        request, 1.7 -> 0.4 us per put. At most MAX_TXN_OPS operations in all; no key twice.
        """
        request = pb.TxnRequest()
        add = request.success.add
        for key, value, lease in puts:
            put = add().request_put
            put.key = key
            put.value = value
            put.lease = lease
        for key in deletes:
            add().request_delete_range.key = key
        if len(request.success) > MAX_TXN_OPS:
            raise ValueError(f"a transaction holds at most {MAX_TXN_OPS} operations per branch")
        with mapped_errors("txn"):
            resp = await self._kv.Txn(request, timeout=self._timeout(timeout))
        self.check_header(resp.header)
        return resp.header.revision

    async def compact(self, revision: int, *, physical: bool = True, timeout: float | None = None) -> None:
        """Compact the key-value history up to revision."""
        with mapped_errors(f"compact {revision}"):
            resp = await self._kv.Compact(
                pb.CompactionRequest(revision=revision, physical=physical), timeout=self._timeout(timeout)
            )
        self.check_header(resp.header)

    # --- Maintenance ----------------------------------------------------------------------------------

    async def status(self, *, timeout: float | None = None) -> Status:
        """The member's version, ids and current revision; a cheap liveness probe."""
        with mapped_errors("status"):
            resp = await self._maintenance.Status(pb.StatusRequest(), timeout=self._timeout(timeout))
        self.check_header(resp.header)
        return Status(
            version=resp.version,
            cluster_id=resp.header.cluster_id,
            member_id=resp.header.member_id,
            revision=resp.header.revision,
            db_size=resp.dbSize,
            leader=resp.leader,
        )

    # --- Leases (unary; keep-alive streams live in lease.py) --------------------------------------------

    async def lease_grant(self, ttl: int, *, timeout: float | None = None) -> int:
        """Grant a lease of ttl seconds; return its id."""
        with mapped_errors("lease grant"):
            resp = await self._lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl), timeout=self._timeout(timeout))
        self.check_header(resp.header)
        if resp.error:
            raise errors.StoreError(f"lease grant: {resp.error}")
        return resp.ID

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None:
        """Revoke a lease, deleting every key attached to it."""
        with mapped_errors(f"lease revoke {lease_id:x}"):
            resp = await self._lease.LeaseRevoke(
                pb.LeaseRevokeRequest(ID=lease_id), timeout=self._timeout(timeout)
            )
        self.check_header(resp.header)

    async def lease_ttl(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Remaining seconds of a lease; -1 if it does not exist."""
        with mapped_errors(f"lease ttl {lease_id:x}"):
            resp = await self._lease.LeaseTimeToLive(
                pb.LeaseTimeToLiveRequest(ID=lease_id), timeout=self._timeout(timeout)
            )
        self.check_header(resp.header)
        return resp.TTL

    # --- Auth -----------------------------------------------------------------------------------------

    async def user_add(self, name: str, *, timeout: float | None = None) -> None:
        """Add a passwordless user (authenticated by a client certificate whose CN is the name)."""
        request = pb.AuthUserAddRequest(name=name, options=pb.UserAddOptions(no_password=True))
        with mapped_errors(f"user add {name}"):
            await self._auth.UserAdd(request, timeout=self._timeout(timeout))

    async def user_list(self, *, timeout: float | None = None) -> list[str]:
        """Names of all users."""
        with mapped_errors("user list"):
            resp = await self._auth.UserList(pb.AuthUserListRequest(), timeout=self._timeout(timeout))
        return list(resp.users)

    async def user_grant_role(self, user: str, role: str, *, timeout: float | None = None) -> None:
        """Grant a role to a user."""
        with mapped_errors(f"grant role {role} to {user}"):
            await self._auth.UserGrantRole(
                pb.AuthUserGrantRoleRequest(user=user, role=role), timeout=self._timeout(timeout)
            )

    async def role_add(self, name: str, *, timeout: float | None = None) -> None:
        """Add a role."""
        with mapped_errors(f"role add {name}"):
            await self._auth.RoleAdd(pb.AuthRoleAddRequest(name=name), timeout=self._timeout(timeout))

    async def role_get(self, name: str, *, timeout: float | None = None) -> list[Permission] | None:
        """The role's permissions, or None if the role does not exist."""
        try:
            with mapped_errors(f"role get {name}"):
                resp = await self._auth.RoleGet(pb.AuthRoleGetRequest(role=name), timeout=self._timeout(timeout))
        except errors.StoreError as exc:
            if "role name not found" in str(exc):
                return None
            raise
        return [Permission(PermType(p.permType), p.key, p.range_end) for p in resp.perm]

    async def role_grant_permission(
        self, role: str, perm_type: PermType, *, key: bytes, range_end: bytes = b"",
        timeout: float | None = None,
    ) -> None:
        """Grant a role access to a key, or to the range [key, range_end)."""
        perm = pb.Permission(permType=perm_type.name, key=key, range_end=range_end)
        with mapped_errors(f"grant {perm_type.name} on {key!r} to role {role}"):
            await self._auth.RoleGrantPermission(
                pb.AuthRoleGrantPermissionRequest(name=role, perm=perm), timeout=self._timeout(timeout)
            )

    async def auth_enable(self, *, timeout: float | None = None) -> None:
        """Turn on authentication (needs a root user)."""
        with mapped_errors("auth enable"):
            await self._auth.AuthEnable(pb.AuthEnableRequest(), timeout=self._timeout(timeout))

    async def auth_status(self, *, timeout: float | None = None) -> bool:
        """Whether authentication is enabled."""
        with mapped_errors("auth status"):
            resp = await self._auth.AuthStatus(pb.AuthStatusRequest(), timeout=self._timeout(timeout))
        return resp.enabled
