"""Trusted issuers' signing keys, cached per issuer and refreshed when they rotate.

A token naming a key id the cache does not hold may mean the issuer rotated its keys: the JWKS is
fetched again, but at most once per `min_refresh_s` per issuer (one fetch at a time, the others wait for
it), so a flood of tokens with made-up key ids costs the identity provider one request per interval and
the gateway nothing more. Keys are also refetched after `max_age_s`; when a fetch fails the keys already
held stay in use.

The JWKS URL is the trust entry's `jwks_uri`, else the `jwks_uri` of the issuer's metadata
(OpenID Connect discovery, then RFC 8414), whose `issuer` must be the issuer exactly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.errors import AegressError
from gateway.oauth.fetch import FetchError, get_json

log = logging.getLogger("aegress.oauth")

Fetch = Callable[[str], Awaitable[Any]]
MAX_KEYS = 64


def metadata_urls(issuer: str) -> list[str]:
    """Pure: where an issuer's metadata lives (OIDC discovery appends; RFC 8414 inserts after the host)."""
    parts = urlsplit(issuer)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    return [issuer.rstrip("/") + "/.well-known/openid-configuration",
            f"{base}/.well-known/oauth-authorization-server{path}"]


def parse_jwks(doc: Any) -> dict[str, dict[str, Any]]:
    """Pure: the signing keys of a JWKS by key id ("" for a key without one); encryption keys and keys
    beyond MAX_KEYS are skipped."""
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise FetchError("The issuer's JWKS has no `keys` list.")
    out: dict[str, dict[str, Any]] = {}
    for key in keys[:MAX_KEYS]:
        if isinstance(key, dict) and isinstance(key.get("kid", ""), str) and key.get("use") in (None, "sig"):
            out[key.get("kid", "")] = key
    return out


@dataclass
class _Cached:
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    fetched_at: float = float("-inf")  # last success
    tried_at: float = float("-inf")  # last attempt, successful or not
    running: asyncio.Future[None] | None = None


class JwksCache:
    """Keys per (issuer, jwks_uri); `clock` is injectable for tests of the refresh interval."""

    def __init__(self, *, min_refresh_s: float, max_age_s: float, allow_private: bool = True,
                 fetch: Fetch | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_refresh_s = min_refresh_s
        self.max_age_s = max_age_s
        self._fetch: Fetch = fetch or (lambda url: get_json(url, allow_private=allow_private))
        self._clock = clock
        self._cached: dict[tuple[str, str], _Cached] = {}
        self.fetches = 0

    async def key(self, issuer: str, jwks_uri: str, kid: str | None) -> dict[str, Any] | None:
        """The JWK for `kid` (None: the issuer's only key), fetching when it is unknown or stale and the
        interval allows; None when the issuer has no such key."""
        cached = self._cached.setdefault((issuer, jwks_uri), _Cached())
        now = self._clock()
        found = _pick(cached.keys, kid)
        stale = now - cached.fetched_at >= self.max_age_s
        # a fetch under way is joined (it may bring the key); a new one only once the interval has passed
        if (found is None or stale) and (cached.running is not None or now - cached.tried_at >= self.min_refresh_s):
            await self._refresh(cached, issuer, jwks_uri)
            found = _pick(cached.keys, kid)
        return found

    async def _refresh(self, cached: _Cached, issuer: str, jwks_uri: str) -> None:
        if cached.running is None:
            cached.tried_at = self._clock()
            cached.running = asyncio.ensure_future(self._load(cached, issuer, jwks_uri))
        running = cached.running
        try:
            await asyncio.shield(running)
        except AegressError as exc:
            log.warning("could not refresh the signing keys of %s: %s", issuer, exc.message)
        finally:
            if running.done():
                cached.running = None

    async def _load(self, cached: _Cached, issuer: str, jwks_uri: str) -> None:
        self.fetches += 1
        url = jwks_uri or await self._discover(issuer)
        cached.keys = parse_jwks(await self._fetch(url))
        cached.fetched_at = self._clock()

    async def _discover(self, issuer: str) -> str:
        last: AegressError | None = None
        for url in metadata_urls(issuer):
            try:
                doc = await self._fetch(url)
            except AegressError as exc:
                last = exc
                continue
            if isinstance(doc, dict) and doc.get("issuer") == issuer and isinstance(doc.get("jwks_uri"), str):
                return str(doc["jwks_uri"])
            last = FetchError(f"{url} does not describe issuer {issuer} with a jwks_uri.")
        raise last or FetchError(f"No metadata found for issuer {issuer}.")


def _pick(keys: dict[str, dict[str, Any]], kid: str | None) -> dict[str, Any] | None:
    if kid is not None:
        return keys.get(kid)
    return next(iter(keys.values())) if len(keys) == 1 else None
