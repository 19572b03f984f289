"""Which upstream URLs the gateway may call: http(s) only, public addresses unless allowed.

`check_url` is pure given resolved addresses; `resolve` is the only I/O and runs at the edge
(`upstream add` and each connect), so a name that later resolves to a private address is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from gateway.errors import InvalidInput


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, addresses: Iterable[str], *, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(
            f"Upstream URL scheme {parts.scheme or '(none)'!r} is not allowed.", hint="Use an http(s):// URL."
        )
    if not parts.hostname:
        raise InvalidInput("Upstream URL has no host.", hint="Use a URL like https://mcp.example.com/mcp.")
    if parts.username or parts.password:
        raise InvalidInput(
            "Upstream URL must not carry credentials.", hint="Pass them with --header NAME=VALUE instead."
        )
    if allow_private:
        return
    addrs = list(addresses)
    if not addrs:
        raise InvalidInput(f"Cannot resolve upstream host {parts.hostname!r}.", hint="Check the URL.")
    if any(_is_private(a) for a in addrs):
        raise InvalidInput(
            f"Upstream host {parts.hostname!r} is a loopback or private-range address.",
            hint="Pass --allow-private if this upstream is meant to be on a private network.",
        )


def resolve(url: str) -> list[str]:
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})
