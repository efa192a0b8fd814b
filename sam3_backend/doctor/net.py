"""Network facts the checks share: is a host this machine, does a name resolve, does a port
accept connections, the JSON body of an answer (or None)."""

from __future__ import annotations

import ipaddress
import socket

import requests


def is_local_host(host: str | None) -> bool:
    """localhost, a loopback address or the unspecified address: inside a container, that container."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", "0.0.0.0") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _json(r: requests.Response | None):
    if r is None:
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _quiet_get(url: str, timeout: float) -> requests.Response | None:
    try:
        return requests.get(url, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return None


__all__ = ["is_local_host"]
