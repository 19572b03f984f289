"""Bounded JSON GETs for OAuth mode: issuers' metadata and keys, and client ID metadata documents.

Each fetch resolves the host once, checks the addresses with `gateway.netguard` and connects only to
those (a later DNS answer cannot move it: the same pinning as upstream connections, `gateway.upstreams.h1`).
No redirects, no cookies, a size cap and a deadline. A client ID metadata document's URL comes from
whoever calls /oauth/authorize, so it is held to https and public addresses (SSRF); an issuer's URLs
come from the operator, who may point them at a private network, but plain http only on loopback.

TLS uses the system trust store, and SSL_CERT_FILE / SSL_CERT_DIR when set (an internal CA).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlsplit

from gateway import netguard
from gateway.errors import AegressError, InvalidInput, UpstreamError
from gateway.upstreams.h1 import H1Error, H1Pool

MAX_DOCUMENT_BYTES = 256 * 1024
FETCH_TIMEOUT_S = 5.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class FetchError(UpstreamError):
    code = "oauth-fetch-failed"


def _tls() -> ssl.SSLContext:
    import httpx2

    return httpx2.create_ssl_context(trust_env=True)


def check_fetch_url(url: str, *, https_only: bool) -> None:
    """Pure: an absolute http(s) URL without credentials or fragment; https unless allowed on loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise InvalidInput(f"{url!r} is not an http(s) URL with a host and no credentials.")
    if parts.fragment:
        raise InvalidInput(f"{url!r} has a fragment.")
    if parts.scheme == "http" and (https_only or parts.hostname not in _LOOPBACK):
        raise InvalidInput(f"{url!r} must use https.", hint="Only loopback addresses may use plain http.")


async def get_json(url: str, *, allow_private: bool, https_only: bool = False,
                   limit: int = MAX_DOCUMENT_BYTES, timeout: float = FETCH_TIMEOUT_S) -> Any:
    """The JSON document at `url` (status 200 only), or FetchError / InvalidInput saying why not."""
    check_fetch_url(url, https_only=https_only)
    addresses = await asyncio.to_thread(netguard.resolve, url)
    try:
        netguard.check_url(url, addresses, allow_private=allow_private)
    except InvalidInput as exc:
        raise FetchError(f"Refusing to fetch {url}: {exc.message}", hint=exc.hint) from None
    pool = H1Pool(url, addresses, ssl_context=_tls() if url.startswith("https:") else None, max_connections=1,
                  connect_timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            response = await pool.request(b"GET", [(b"accept", b"application/json"), (b"user-agent", b"aegress")],
                                          None, timeout=timeout)
            try:
                if response.status != 200:
                    raise FetchError(f"{url} answered HTTP {response.status} (redirects are not followed).")
                body = await response.read(timeout, limit)
            finally:
                response.release()
    except AegressError:
        raise
    except (H1Error, TimeoutError, OSError, ssl.SSLError) as exc:
        raise FetchError(f"Could not fetch {url}: {type(exc).__name__}.",
                         hint="Check the URL, the network and the certificate.") from exc
    finally:
        await pool.aclose()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise FetchError(f"{url} did not answer JSON.") from exc
