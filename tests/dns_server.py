"""A real DNS server for the tests, on an ephemeral port: no test resolves a name on the internet.

It holds the SPF, DKIM and DMARC records of the test domains (dnslib answers over UDP and TCP,
as a zone's nameserver would); the gateway reaches it through GATEWAY_DNS_SERVERS. Names it
does not hold are NXDOMAIN. `silent_dns_server` is the other boundary case: a server that
never answers, to show a lookup timing out.
"""
from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from dnslib import QTYPE, RCODE, RR, A, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer


@dataclass
class Zone:
    """name → (type, value) records; TXT values longer than 255 bytes are split as RFC 1035 wants."""
    records: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, name: str, qtype: str, value: str) -> None:
        self.records.setdefault(name.lower().rstrip("."), []).append((qtype, value))

    def txt(self, name: str, value: str) -> None:
        self.add(name, "TXT", value)


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        self.queries.append((name, qtype))
        records = self.zone.records.get(name)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rtype, value in records:
            if rtype != qtype:
                continue
            if rtype == "TXT":
                data = value.encode()
                chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
            elif rtype == "A":
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(value), ttl=60))
        return reply


@dataclass
class RunningDns:
    port: int
    zone: Zone
    resolver: _Resolver

    @property
    def servers(self) -> str:
        """The value for GATEWAY_DNS_SERVERS."""
        return f"127.0.0.1:{self.port}"


@contextmanager
def dns_server(zone: Zone) -> Iterator[RunningDns]:
    """UDP and TCP on one ephemeral port (dnspython falls back to TCP for truncated answers)."""
    resolver = _Resolver(zone)
    quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    for _ in range(50):  # the UDP port's TCP twin may be taken (by a client's ephemeral port)
        udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=quiet)
        port = udp.server.server_address[1]
        try:
            tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=quiet)
            break
        except OSError:
            udp.server.server_close()
    else:
        raise OSError("no port free for both UDP and TCP")
    udp.start_thread()
    tcp.start_thread()
    try:
        yield RunningDns(port, zone, resolver)
    finally:
        udp.stop()
        tcp.stop()
        udp.server.server_close()
        tcp.server.server_close()


@contextmanager
def silent_dns_server() -> Iterator[str]:
    """A UDP port that takes queries and never answers: every lookup runs into its timeout."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
