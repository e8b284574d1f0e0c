"""Where a webhook may be posted, and a connection pinned to the address that was checked.

A webhook URL is chosen by a studio, and the gateway posts to it from inside the operator's
network: without checks it is a server-side request forgery waiting to happen (the cloud's
metadata service at 169.254.169.254, the database on 10.0.0.5, the admin port on localhost).
So only `https`, and only to addresses on the public internet. The name is resolved at every
delivery, not only when registered, and the connection goes to the very address that was
checked: a DNS answer that changes between the check and the connect (DNS rebinding) cannot
move the post. TLS still verifies the certificate against the name (SNI and Host are the
name's), so pinning costs the receiver nothing.

GATEWAY_WEBHOOK_ALLOW_LOOPBACK=true (development, tests) also allows loopback addresses, over
http or https; every other private range stays refused.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
import typing
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED = ipaddress.ip_network("100.64.0.0/10")          # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")            # IPv4 embedded in IPv6 (RFC 6052)
MAX_ANSWER = 1000        # bytes of the endpoint's answer read and kept
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class AddressRefused(ValueError):
    """Why a URL or an address may not be posted to; said to the owner as is."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int


def parse_url(url: str, allow_loopback: bool) -> Target:
    """The URL's parts, or AddressRefused: https only (http too to loopback in development),
    no credentials in the URL, a host name or address."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressRefused(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (allow_loopback and scheme == "http"):
        raise AddressRefused("only https URLs are allowed")
    if not parts.hostname:
        raise AddressRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise AddressRefused("credentials in the URL are not allowed; verify the signature instead")
    if parts.fragment:
        raise AddressRefused("the URL has a fragment")
    return Target(url, scheme, parts.hostname, port or (443 if scheme == "https" else 80))


def _reached(ip: IPAddress) -> IPAddress:
    """IPv4 written as IPv6 (::ffff:10.0.0.1, 64:ff9b::a00:1) is the IPv4 address it reaches."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def refusal(ip: IPAddress, allow_loopback: bool) -> str | None:
    """What kind of address this is if it may not be posted to ("a private address"), else
    None; IPv4 written as IPv6 is judged as the IPv4 address it reaches."""
    ip = _reached(ip)
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public internet address"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve_checked(target: Target, allow_loopback: bool) -> IPAddress:
    """Resolve the host now and check every address it has; the first one, to connect to.

    Every address, not only the first: a name with one public and one private address would
    otherwise be refused or allowed depending on the resolver's order. A loopback-only
    development setup still never reaches a private network address."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise AddressRefused(f"{target.host} does not resolve: {exc.strerror}") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise AddressRefused(f"{target.host} has no address")
    literal = _literal(target.host)
    for ip in addresses:
        kind = refusal(ip, allow_loopback)
        if kind is None:
            continue
        if literal is not None:
            raise AddressRefused(f"{_reached(ip)} is {kind}")
        raise AddressRefused(f"{target.host} resolves to {_reached(ip)}, {kind}")
    if target.scheme == "http" and not all(_reached(ip).is_loopback for ip in addresses):
        raise AddressRefused("http is allowed to loopback addresses only")
    return addresses[0]


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the checked address whatever host the request names; TLS is then started
    with the request's host as server name (httpcore passes it to start_tls)."""

    def __init__(self, ip: IPAddress) -> None:
        self._ip = str(ip)
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        return self._inner.connect_tcp(self._ip, port, timeout=timeout, local_address=local_address,
                                       socket_options=socket_options)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not webhook targets")


class _PinnedTransport(httpx.HTTPTransport):
    def __init__(self, ip: IPAddress, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, retries=0)
        # httpx takes no network backend; its pool is the one place to give it ours.
        self._pool = httpcore.ConnectionPool(ssl_context=ssl_context, max_connections=1, retries=0,
                                             network_backend=_PinnedBackend(ip))


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trust store, plus GATEWAY_WEBHOOK_CA_FILE when set (a local test server)."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def post_pinned(target: Target, ip: IPAddress, headers: dict[str, str], body: bytes,
                context: ssl.SSLContext) -> tuple[int, str]:
    """POST `body` to the checked address: no redirects followed (a 3xx is an answer like any
    other, and not a success), short timeouts, at most MAX_ANSWER bytes of the answer read.
    Raises httpx.HTTPError when there is no answer."""
    with httpx.Client(transport=_PinnedTransport(ip, context), follow_redirects=False, timeout=TIMEOUT,
                      trust_env=False) as client:
        with client.stream("POST", target.url, headers=headers, content=body) as response:
            answer = b""
            for chunk in response.iter_raw():
                answer += chunk
                if len(answer) >= MAX_ANSWER:
                    break
            return response.status_code, answer[:MAX_ANSWER].decode("utf-8", "replace")
