"""The agent's DNS server: global service names answered with the backends affinity selects, over UDP and TCP.

Owns the DNS view of services and the listeners. Authoritative for two zones, `<domain>` (`--dns-domain`,
default cluster.local) and `clusterset.local` (the MCS-API name of the same services); it does not recurse,
and answers REFUSED for any other name. Within a zone:

    <svc>.<ns>.svc.<zone>                  A / AAAA: the IPs of the backends affinity selects
    _<port>._<proto>.<svc>.<ns>.svc.<zone>  SRV per selected backend serving that named port, target below
    <ip-with-dashes>.<svc>.<ns>.svc.<zone>  A / AAAA of that backend while it is selected (the SRV targets)
    <ns>.svc.<zone>, svc.<zone>, <zone>     exist (NOERROR, no records) when they lead to a service

Names that do not exist get NXDOMAIN; names that exist without records of the asked type get NOERROR and no
answer; both carry the zone's SOA so resolvers cache the negative answer for at most the TTL. Every record has
the same short TTL (5 s by default): answers follow failover within seconds.

Answers come from ServiceResolver only (in memory, never etcd), computed in the datagram callback or the TCP
connection's task. A UDP answer larger than the client's limit (512 bytes, or its EDNS0 size up to 4096) is
sent truncated (TC, question only) so that the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from typing import cast

from dnslib import AAAA, EDNS0, OPCODE, QTYPE, RCODE, RR, SOA, SRV, A, DNSError, DNSHeader, DNSRecord

from agent import config, services

log = logging.getLogger(__name__)

CLUSTERSET_DOMAIN = "clusterset.local"
DEFAULT_TTL = 5
UDP_LIMIT = 512
EDNS_UDP_LIMIT = 4096
TCP_LIMIT = 65535
TCP_IDLE_TIMEOUT = 30.0
"""Seconds a TCP connection may sit idle between queries before the server closes it."""
_BIND_ATTEMPTS = 3
_SOA_SERIAL = 1
_SOA_TIMES = (7200, 1800, 86400)  # refresh, retry, expire: unused (no secondaries), but part of the record


class DnsServer:
    """Answers service names from a resolver on one UDP and one TCP socket (same port) while `run()` runs."""

    def __init__(
        self,
        resolver: services.ServiceResolver,
        listen: config.HostPort,
        *,
        domain: str = config.DEFAULT_DNS_DOMAIN,
        ttl: int = DEFAULT_TTL,
    ) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must not be negative, got {ttl}")
        self._resolver = resolver
        self._listen = listen
        self._ttl = ttl
        self._zones = tuple(
            tuple(zone.lower().rstrip(".").split(".")) for zone in dict.fromkeys((domain, CLUSTERSET_DOMAIN))
        )
        self._connections: set[asyncio.Task[None]] = set()
        self._running = False
        self.address = listen
        """Where the server listens (the bound port when asked for port 0, once `run()` set `ready`)."""

    def __repr__(self) -> str:
        zones = ",".join(".".join(zone) for zone in self._zones)
        return f"<DnsServer {self.address} zones={zones} tcp_connections={len(self._connections)}>"

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        """Listen on UDP and TCP and answer until cancelled; sets `ready` once both listen.

        Raises RuntimeError if already running and OSError if the address cannot be bound. Cancellation
        closes both sockets and every open TCP connection, and waits for their tasks.
        """
        if self._running:
            raise RuntimeError(f"{self!r} is already running")
        self._running = True
        udp: asyncio.DatagramTransport | None = None
        tcp: asyncio.Server | None = None
        try:
            udp, tcp = await self._bind()
            log.info("event=dns.listening address=%s zones=%s", self.address,
                     ",".join(".".join(zone) for zone in self._zones))
            if ready is not None:
                ready.set()
            await asyncio.Future()  # serve until cancelled
        finally:
            await asyncio.shield(self._close(udp, tcp))
            self._running = False

    async def _bind(self) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        loop = asyncio.get_running_loop()
        # UDP first, then TCP on the port UDP got: with port 0 another process may take that TCP port in
        # between, so pick again a few times before giving up.
        attempts = 0
        while True:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self._listen.host, self._listen.port)
            )
            port = transport.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, self._listen.host, port)
            except OSError:
                transport.close()
                attempts += 1
                if self._listen.port != 0 or attempts >= _BIND_ATTEMPTS:
                    raise
                continue
            self.address = config.HostPort(self._listen.host, port)
            return transport, tcp

    async def _close(self, udp: asyncio.DatagramTransport | None, tcp: asyncio.Server | None) -> None:
        if udp is not None:
            udp.close()
        if tcp is not None:
            tcp.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if tcp is not None:
            await tcp.wait_closed()
        log.info("event=dns.stopped address=%s", self.address)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    query = await reader.readexactly(length)
                response = self.answer(query, max_size=TCP_LIMIT)
                if response is None:
                    return
                writer.write(len(response).to_bytes(2, "big") + response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # the client went away or idled out: nothing to answer
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    # ------------------------------------------------------------------------------------------------
    # Answering

    def answer(self, query: bytes, *, max_size: int | None = None) -> bytes | None:
        """The wire response to a wire query, or None when it is not even a DNS header (drop it).

        max_size None means UDP: 512 bytes, or the client's EDNS0 size (at most 4096). Pure: reads the
        resolver only.
        """
        try:
            request = DNSRecord.parse(query)
        except (DNSError, ValueError, IndexError):
            if len(query) < 2:
                return None
            header = DNSHeader(id=int.from_bytes(query[:2], "big"), qr=1, rcode=RCODE.FORMERR)
            return bytes(DNSRecord(header).pack())
        edns_size = next((rr.rclass for rr in request.ar if rr.rtype == QTYPE.OPT), None)
        reply = DNSRecord(
            DNSHeader(id=request.header.id, qr=1, aa=1, ra=0, rd=request.header.rd, opcode=request.header.opcode),
            q=request.q if len(request.questions) == 1 else None,
        )
        if edns_size is not None:
            reply.add_ar(EDNS0(udp_len=EDNS_UDP_LIMIT))
        if request.header.opcode != OPCODE.QUERY:
            reply.header.rcode = RCODE.NOTIMP
        elif len(request.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
        else:
            self._fill(reply)
        packed = bytes(reply.pack())
        if max_size is None:
            max_size = UDP_LIMIT if edns_size is None else max(UDP_LIMIT, min(edns_size, EDNS_UDP_LIMIT))
        if len(packed) <= max_size:
            return packed
        reply.rr, reply.auth = [], []
        reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        reply.header.tc = 1
        return bytes(reply.pack())

    def _fill(self, reply: DNSRecord) -> None:
        """Set the rcode and records of reply for its one question."""
        question = reply.q
        labels = [bytes(label).decode("ascii", "replace").lower() for label in question.qname.label]
        zone = next((z for z in self._zones if len(labels) >= len(z) and tuple(labels[-len(z):]) == z), None)
        if zone is None:
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return
        zone_name = ".".join(zone)
        rest = labels[: len(labels) - len(zone)]
        records = self._records(rest, question.qtype, zone_name, str(question.qname))
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
        else:
            answers, additional = records
            for rr in answers:
                reply.add_answer(rr)
            for rr in additional:
                reply.add_ar(rr)
        if not reply.rr:
            reply.add_auth(self._soa(zone_name))

    def _records(self, rest: list[str], qtype: int, zone: str, qname: str) -> tuple[list[RR], list[RR]] | None:
        """(answers, additional) for a name `rest` + zone, or None when the name does not exist."""
        if not rest:
            return ([self._soa(zone)] if qtype in (QTYPE.SOA, QTYPE.ANY) else []), []
        if rest[-1] != "svc":
            return None
        inner = rest[:-1]
        if not inner:
            return [], []
        if len(inner) == 1:
            return ([], []) if self._resolver.has_namespace(inner[0]) else None
        if len(inner) == 2:
            resolution = self._resolver.resolve(inner[1], inner[0])
            if resolution is None:
                return None
            return self._addresses(qname, (b.ip for b in resolution.backends), qtype), []
        if len(inner) == 3 and not inner[0].startswith("_"):
            return self._backend_host(inner, qtype, qname)
        if len(inner) == 4 and inner[0].startswith("_") and inner[1].startswith("_"):
            return self._srv(inner, qtype, zone, qname)
        return None

    def _backend_host(self, inner: list[str], qtype: int, qname: str) -> tuple[list[RR], list[RR]] | None:
        host, name, namespace = inner
        resolution = self._resolver.resolve(namespace, name)
        if resolution is None:
            return None
        ips = [b.ip for b in resolution.backends if _host_label(b.ip) == host]
        if not ips:
            return None
        return self._addresses(qname, ips[:1], qtype), []

    def _srv(self, inner: list[str], qtype: int, zone: str, qname: str) -> tuple[list[RR], list[RR]] | None:
        port_label, proto_label, name, namespace = inner
        resolution = self._resolver.resolve(namespace, name)
        if resolution is None:
            return None
        port_name, protocol = port_label[1:], proto_label[1:].upper()

        def serves(backend: services.Backend) -> bool:
            return backend.port_name.lower() == port_name and backend.protocol.upper() == protocol

        if not any(serves(b) for b in resolution.all_backends):
            return None
        if qtype not in (QTYPE.SRV, QTYPE.ANY):
            return [], []
        answers: list[RR] = []
        additional: list[RR] = []
        seen: set[tuple[str, int]] = set()
        for backend in resolution.backends:
            if not serves(backend) or (backend.ip, backend.port) in seen:
                continue
            seen.add((backend.ip, backend.port))
            target = f"{_host_label(backend.ip)}.{name}.{namespace}.svc.{zone}"
            answers.append(RR(qname, QTYPE.SRV, ttl=self._ttl,
                              rdata=SRV(priority=0, weight=100, port=backend.port, target=target)))
            additional.extend(self._addresses(target, [backend.ip], QTYPE.ANY))
        return answers, additional

    def _addresses(self, qname: str, ips: Iterable[str], qtype: int) -> list[RR]:
        records = []
        for ip in dict.fromkeys(ips):
            version = ipaddress.ip_address(ip).version
            if version == 4 and qtype in (QTYPE.A, QTYPE.ANY):
                records.append(RR(qname, QTYPE.A, ttl=self._ttl, rdata=A(ip)))
            elif version == 6 and qtype in (QTYPE.AAAA, QTYPE.ANY):
                records.append(RR(qname, QTYPE.AAAA, ttl=self._ttl, rdata=AAAA(ip)))
        return records

    def _soa(self, zone: str) -> RR:
        return RR(zone, QTYPE.SOA, ttl=self._ttl, rdata=SOA(
            mname=f"ns.dns.{zone}", rname=f"hostmaster.{zone}",
            times=(_SOA_SERIAL, *_SOA_TIMES, self._ttl),
        ))


def _host_label(ip: str) -> str:
    """The DNS label naming a backend: its IP with `.` and `:` turned into `-` (as Kubernetes pod names do)."""
    return ip.replace(".", "-").replace(":", "-").lower()


class _UdpProtocol(asyncio.DatagramProtocol):
    """Answers each datagram synchronously (answers are in-memory lookups) on the server's transport."""

    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio hands datagram protocols a datagram transport (its selector class is not a registered subclass).
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        response = self._server.answer(data)
        if response is not None and self._transport is not None:
            self._transport.sendto(response, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("event=dns.udp_error reason=%s", exc)
