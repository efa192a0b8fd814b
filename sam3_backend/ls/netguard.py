"""Which network addresses media fetching may reach, checked on the socket that actually connected.

A host name says nothing about where a request goes: DNS can answer a public address when we
look and a private one when the HTTP client connects a moment later (DNS rebinding), and a
presigned storage URL can name any host. So the rule is enforced where it cannot be fooled: each
new connection of a *public-only* session checks the peer address of its own socket and is
closed before a single byte is sent when that address is not public.

Public means ``ipaddress``'s ``is_global`` and not multicast: loopback, private (RFC 1918, fc00::/7),
link-local (169.254.0.0/16 with the cloud metadata service, fe80::/10), shared (100.64.0.0/10),
unspecified, reserved and documentation ranges are all refused; IPv4-mapped IPv6 addresses are
judged by their IPv4 address. Hosts the operator trusts (the Label Studio host,
``MEDIA_ALLOWED_HOSTS``) are fetched through an ordinary session, on any address.
"""

from __future__ import annotations

import ipaddress
import socket

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class BlockedAddress(Exception):
    """A connection reached an address that is not public (deliberately not an OSError, so
    urllib3 neither retries it nor hides it inside a generic connection error)."""

    def __init__(self, host: str, address: str):
        super().__init__(f"{host} resolves to {address}, which is not a public address")
        self.host = host
        self.address = address


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (see the module docstring)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_resolved(host: str, port: int) -> None:
    """Every address ``host`` resolves to must be public (used when a proxy makes the connection,
    so the peer address of our socket is the proxy's)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return  # the proxy will fail to resolve it too and say so
    for *_, sockaddr in infos:
        if not is_public(sockaddr[0]):
            raise BlockedAddress(host, sockaddr[0])


def _check_peer(sock: socket.socket, host: str) -> socket.socket:
    address = sock.getpeername()[0]
    if not is_public(address):
        sock.close()
        raise BlockedAddress(host, address)
    return sock


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _check_peer(super()._new_conn(), self.host)


class _PublicHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _check_peer(super()._new_conn(), self.host)


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class PublicOnlyAdapter(HTTPAdapter):
    """A transport adapter whose every direct connection is refused unless its peer is public."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def public_only_session() -> requests.Session:
    """A session for hosts nobody vouched for: public addresses only, checked per connection."""
    session = requests.Session()
    adapter = PublicOnlyAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


__all__ = ["BlockedAddress", "PublicOnlyAdapter", "check_resolved", "is_public", "public_only_session"]
