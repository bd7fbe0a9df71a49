"""The agent's DNS server on 127.0.0.1 (UDP and TCP), queried with a real DNS client (dnspython).

Covered: A/AAAA of a global service (cluster domain and clusterset.local, any letter case), each affinity
before and after the local backends disappear, SRV for named ports with resolvable targets, NXDOMAIN / NOERROR
(empty, with SOA) / REFUSED, the short TTL, UDP truncation with TCP fallback, EDNS0 sizes, malformed queries,
dnspython's stub resolver end to end, and a second run refused. The local side is a scripted source, the
peers' side a MeshCache filled directly (the lowest seams); merging rules themselves are test_services.py's.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.asyncresolver
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from agent import cache as mesh_cache
from agent import config, dns_server, services
from tests.agent import test_services as objects

NS, NAME = objects.NS, objects.NAME
FQDN = f"{NAME}.{NS}.svc.cluster.local"
KEY = f"{NS}/{NAME}"


class World:
    """A running DNS server over a cache and scripted local services."""

    def __init__(self, cache: mesh_cache.MeshCache, source: objects.ScriptedSource, server: dns_server.DnsServer):
        self.cache = cache
        self.source = source
        self.server = server

    async def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, **kwargs: object) -> dns.message.Message:
        request = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
        return await send(request, "127.0.0.1", port=self.server.address.port, timeout=5)

    async def addresses(self, name: str = FQDN, rdtype: str = "A") -> list[str]:
        response = await self.query(name, rdtype)
        assert response.rcode() == dns.rcode.NOERROR
        return sorted(item.address for rrset in response.answer for item in rrset)

    def remote(self, cluster: str, cluster_id: int, *ips: str) -> None:
        self.cache.upsert(mesh_cache.Kind.SERVICES, cluster, KEY, objects.remote_service(cluster, cluster_id, *ips))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    cache = mesh_cache.MeshCache()
    source = objects.ScriptedSource()
    async with objects.running_local(source) as local:
        resolver = services.ServiceResolver(cache, local, local_cluster="cluster-a", local_cluster_id=1)
        async with objects.running(dns_server.DnsServer(resolver, config.HostPort("127.0.0.1", 0))) as server:
            yield World(cache, source, server)


async def given(world: World, affinity: str | None = None, local_ips: tuple[str, ...] = ("10.1.0.1",)) -> None:
    world.source.upsert(objects.global_service(affinity))
    world.source.upsert(objects.endpoint_slice("s1", [(ip, objects.READY) for ip in local_ips]))
    await world.source.settled()
    world.remote("cluster-b", 2, "20.0.0.2")


async def test_a_records_of_a_global_service(world: World) -> None:
    await given(world)
    response = await world.query(FQDN)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA and not response.flags & dns.flags.RA
    (rrset,) = response.answer
    assert rrset.ttl == dns_server.DEFAULT_TTL
    assert sorted(item.address for item in rrset) == ["10.1.0.1", "20.0.0.2"]
    assert await world.addresses(f"{NAME}.{NS}.svc.clusterset.local") == ["10.1.0.1", "20.0.0.2"]
    assert await world.addresses(FQDN.upper()) == ["10.1.0.1", "20.0.0.2"]
    assert (await world.query(FQDN, tcp=True)).answer == response.answer


async def test_aaaa(world: World) -> None:
    await given(world)
    response = await world.query(FQDN, "AAAA")
    assert response.rcode() == dns.rcode.NOERROR and response.answer == [], "known name, no IPv6 backend"
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == dns_server.DEFAULT_TTL
    world.remote("cluster-c", 3, "fd00:30::3")
    assert await world.addresses(rdtype="AAAA") == ["fd00:30::3"]
    assert await world.addresses() == ["10.1.0.1", "20.0.0.2"]


async def test_local_affinity_before_and_after_local_backends_disappear(world: World) -> None:
    await given(world, "local")
    assert await world.addresses() == ["10.1.0.1"]
    world.source.delete(objects.endpoint_slice("s1", []))
    await world.source.settled()
    assert await world.addresses() == ["20.0.0.2"]
    world.source.upsert(objects.endpoint_slice("s1", [("10.1.0.1", objects.TERMINATING)]))
    await world.source.settled()
    assert await world.addresses() == ["10.1.0.1", "20.0.0.2"], "a terminating local backend is not active"


async def test_remote_affinity_before_and_after_remote_backends_disappear(world: World) -> None:
    await given(world, "remote")
    assert await world.addresses() == ["20.0.0.2"]
    world.cache.delete(mesh_cache.Kind.SERVICES, "cluster-b", KEY)
    assert await world.addresses() == ["10.1.0.1"]


async def test_no_affinity_and_not_global(world: World) -> None:
    await given(world, "none")
    assert await world.addresses() == ["10.1.0.1", "20.0.0.2"]
    world.source.upsert(objects.service())  # no longer global: remote backends are never used
    await world.source.settled()
    assert await world.addresses() == ["10.1.0.1"]


async def test_srv_for_named_ports(world: World) -> None:
    await given(world)
    response = await world.query(f"_http._tcp.{FQDN}", "SRV")
    assert response.rcode() == dns.rcode.NOERROR
    (rrset,) = response.answer
    targets = {str(item.target): item.port for item in rrset}
    assert targets == {f"10-1-0-1.{FQDN}.": 8080, f"20-0-0-2.{FQDN}.": 9090}, "each backend's own target port"
    assert {str(rrset.name) for rrset in response.additional} == set(targets), "targets' addresses come along"
    assert await world.addresses(f"20-0-0-2.{FQDN}") == ["20.0.0.2"], "SRV targets resolve"

    assert (await world.query(f"_http._tcp.{FQDN}", "A")).rcode() == dns.rcode.NOERROR
    assert (await world.query(f"_grpc._tcp.{FQDN}", "SRV")).rcode() == dns.rcode.NXDOMAIN
    assert (await world.query(f"_http._udp.{FQDN}", "SRV")).rcode() == dns.rcode.NXDOMAIN


async def test_backend_hosts_only_while_selected(world: World) -> None:
    await given(world, "local")
    assert await world.addresses(f"10-1-0-1.{FQDN}") == ["10.1.0.1"]
    assert (await world.query(f"20-0-0-2.{FQDN}")).rcode() == dns.rcode.NXDOMAIN, "not selected by affinity"


async def test_names_that_do_not_exist(world: World) -> None:
    await given(world)
    for name in (f"unknown.{NS}.svc.cluster.local", f"{NAME}.other.svc.cluster.local", "other.svc.cluster.local",
                 f"{NAME}.{NS}.pod.cluster.local", f"a.b.c.d.e.{FQDN}"):
        response = await world.query(name)
        assert response.rcode() == dns.rcode.NXDOMAIN, name
        assert [rrset.rdtype for rrset in response.authority] == [dns.rdatatype.SOA], name
    for name in (f"{NS}.svc.cluster.local", "svc.cluster.local", "cluster.local"):
        response = await world.query(name)
        assert (response.rcode(), response.answer) == (dns.rcode.NOERROR, []), name
    soa = await world.query("cluster.local", "SOA")
    assert [rrset.rdtype for rrset in soa.answer] == [dns.rdatatype.SOA]
    refused = await world.query("example.com")
    assert refused.rcode() == dns.rcode.REFUSED and not refused.flags & dns.flags.AA


async def test_truncation_and_tcp_fallback(world: World) -> None:
    await given(world)
    world.remote("cluster-c", 3, *(f"30.0.{i // 250}.{i % 250 + 1}" for i in range(100)))
    request = dns.message.make_query(FQDN, "A")
    truncated = await dns.asyncquery.udp(request, "127.0.0.1", port=world.server.address.port, timeout=5)
    assert truncated.flags & dns.flags.TC and truncated.answer == []
    response, used_tcp = await dns.asyncquery.udp_with_fallback(
        request, "127.0.0.1", port=world.server.address.port, timeout=5
    )
    assert used_tcp and len(response.answer[0]) == 102

    large = await world.query(FQDN, use_edns=0, payload=4096)
    assert not large.flags & dns.flags.TC and len(large.answer[0]) == 102, "EDNS0 raises the UDP limit"


async def test_stub_resolver_end_to_end(world: World) -> None:
    await given(world)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = world.server.address.port
    answer = await resolver.resolve(FQDN, "A")
    assert sorted(item.address for item in answer) == ["10.1.0.1", "20.0.0.2"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve(f"nope.{NS}.svc.cluster.local", "A")


async def test_malformed_queries(world: World) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", world.server.address.port))
        await loop.sock_sendall(sock, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc")
        async with asyncio.timeout(5):
            reply = await loop.sock_recv(sock, 512)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR
    assert world.server.answer(b"\x01") is None, "not even a header: dropped"

    notify = dns.message.make_query(FQDN, "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(world.server.answer(notify.to_wire()) or b"").rcode() == dns.rcode.NOTIMP


async def test_second_run_refused(world: World) -> None:
    with pytest.raises(RuntimeError, match="already running"):
        await world.server.run()
    assert "cluster.local,clusterset.local" in repr(world.server)
