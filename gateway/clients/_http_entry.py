"""Reading back the plain `url` + `headers` entries that Cursor, VS Code, Gemini and Windsurf use."""

from __future__ import annotations

from typing import Any

from gateway.clients._json_config import env_reference, header
from gateway.clients.model import ACTOR_HEADER, TENANT_HEADER, Entry


def entry_from_headers(name: str, data: dict[str, Any], *, url_key: str, ref_prefix: str) -> Entry | None:
    """An Entry when the headers carry our tenant/actor headers; the token env from `Bearer ${..}`."""
    headers = data.get("headers")
    tenant, actor = header(headers, TENANT_HEADER), header(headers, ACTOR_HEADER)
    if tenant is None and actor is None:
        return None
    url = data.get(url_key)
    token_env = env_reference(header(headers, "Authorization"), ref_prefix, "}")
    return Entry(name, url if isinstance(url, str) else None, tenant, actor, token_env=token_env)
