"""Outbound HTTP to URLs that customers choose (alert webhooks), safe against SSRF.

A URL's host is resolved and the URL is refused if ANY address it resolves to is not public; the
request then goes to an address that was checked (the connection is pinned), so DNS cannot answer
differently between the check and the connection (rebinding). The Host header, TLS SNI and the
certificate check still name the host. No proxy from the environment, no redirects, short timeouts.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import certifi
import urllib3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 5.0

# Refused even where private networks are allowed: nothing we send an alert to lives there.
CLOUD_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
# What ALERT_WEBHOOK_ALLOW_PRIVATE lets through: loopback, RFC 1918 / unique-local, link-local, CGNAT.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)
# IPv6 forms that carry an IPv4 address in their last 32 bits; each is judged by that address.
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: translates into the operator's own network


class DestinationRefused(Exception):
    """The URL may not be called: its scheme, its credentials, its port, or an address of its host."""


class DestinationUnresolved(DestinationRefused):
    """The host name does not resolve (now: DNS may answer later)."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in IPV4_TRANSLATED or address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why `address` may not be called, or None when it may: public unicast addresses only, plus the
    local networks of PRIVATE_NETWORKS when `allow_private`; never cloud metadata, multicast or the
    unspecified address, in any IPv4-in-IPv6 disguise."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(address.compressed.split("%")[0])
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return address_refusal(embedded, allow_private=allow_private)
    if address in CLOUD_METADATA:
        return "a cloud metadata address"
    if address.is_multicast or address.is_unspecified:
        return "not a unicast address"
    if address.is_global and not address.is_reserved and address not in LOCAL_NAT64:
        return None
    if allow_private and any(address in network for network in PRIVATE_NETWORKS):
        return None
    return "not a public address"


@dataclass(frozen=True)
class Destination:
    """A checked URL: where to connect (`addresses`, all of them allowed) and how to name the host."""

    scheme: str
    host: str  # an IDNA-encoded name or an IP literal (without brackets)
    port: int
    target: str  # path and query
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == {"http": 80, "https": 443}[self.scheme] else f"{host}:{self.port}"


def destination_resolve(url: str, *, allow_private: bool) -> Destination:
    """Check `url` (http or https, no credentials) and resolve its host now; DestinationRefused
    unless every address it resolves to passes `address_refusal`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DestinationRefused("Use an https:// URL.")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("The URL must not carry a user name or password.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DestinationRefused("The URL's port is not valid.") from exc
    if not parts.hostname:
        raise DestinationRefused("The URL needs a host name.")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise DestinationRefused("The URL's host name is not valid.") from exc
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (UnicodeError, OSError) as exc:
        raise DestinationUnresolved("The URL's host name does not resolve.") from exc
    addresses = tuple(dict.fromkeys(ipaddress.ip_address(answer[4][0]) for answer in answers))
    if not addresses:
        raise DestinationUnresolved("The URL's host name does not resolve.")
    for address in addresses:
        reason = address_refusal(address, allow_private=allow_private)
        if reason is not None:
            raise DestinationRefused(f"The URL must point to a public host: {host} is {address}, {reason}.")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    target = quote(target, safe="/%:@!$&'()*+,;=?~")
    return Destination(scheme=parts.scheme, host=host, port=port, target=target, addresses=addresses)


def destination_post(destination: Destination, *, body: bytes, headers: Mapping[str, str], ca_certs: str | None = None) -> int:
    """POST `body` to the destination's first checked address and answer the HTTP status; a redirect
    is an answer like any other, never followed. urllib3's HTTPError (timeouts, refused connections,
    TLS failures) propagates."""
    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
    address = str(destination.addresses[0])
    pool: urllib3.HTTPConnectionPool
    if destination.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            destination.port,
            timeout=timeout,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_certs or certifi.where(),
            server_hostname=destination.host,
        )
    else:
        pool = urllib3.HTTPConnectionPool(address, destination.port, timeout=timeout, retries=False)
    with pool:
        response = pool.urlopen(
            "POST",
            destination.target,
            body=body,
            headers={**headers, "Host": destination.host_header},
            redirect=False,
            retries=False,
            preload_content=False,
        )
        response.close()  # the body is not ours to read: a receiver cannot make us download anything
        return response.status
