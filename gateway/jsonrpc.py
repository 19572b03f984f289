"""JSON-RPC 2.0 message shapes and the MCP protocol revisions the gateway speaks. Pure."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import orjson

from gateway.errors import AegressError, ProtocolError

JSON = dict[str, Any]

LEGACY_VERSIONS = ("2025-06-18", "2025-11-25")
MODERN_VERSION = "2026-07-28"
SUPPORTED_VERSIONS = (*LEGACY_VERSIONS, MODERN_VERSION)
LATEST_LEGACY = "2025-11-25"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HEADER_MISMATCH = -32020


def loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(
            "The request body is not valid JSON.",
            hint="Send one JSON-RPC 2.0 message as UTF-8 JSON.",
            code="parse-error",
            jsonrpc_code=PARSE_ERROR,
        ) from exc


_KEY_END = re.compile(rb'"[ \t\r\n]*:')


def _count_keys(value: Any) -> int:
    """How many object members a parsed JSON value holds, at any depth (iterative: no recursion limit)."""
    count, stack = 0, [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if type(item) is dict:
            count += len(item)
            for v in item.values():
                if type(v) is dict or type(v) is list:
                    push(v)
        elif type(item) is list:
            for v in item:
                if type(v) is dict or type(v) is list:
                    push(v)
    return count


def _refuse_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


_WS_AS_SPACE = bytes.maketrans(b"\t\r\n", b"   ")


def has_duplicate_keys(body: bytes, parsed: Any) -> bool:
    """Whether the JSON text `body` (which parsed to `parsed`) repeats a key inside one object, at any depth.

    orjson keeps the last of duplicate keys, while other readers keep the first: two readers of one
    body could disagree about what was asked. Usual case (no backslash, no whitespace after a quote):
    strings hold no quotes and are written alike in the body and in orjson's re-serialization of what
    it parsed, and every member name ends with `":`; so the counts of `":` differ exactly when a key
    (and its value) was dropped. About 6 us for 1 KB, half the stdlib parser's cost. Otherwise every
    member name still ends with `"`, optional whitespace and `:`, and only an escaped quote inside a
    string adds to that count: equal to the parsed member count means no duplicates; anything else
    goes to the stdlib parser told to keep every pair."""
    if b"\\" not in body and b'" ' not in body.translate(_WS_AS_SPACE):
        return body.count(b'":') != orjson.dumps(parsed).count(b'":')
    if len(_KEY_END.findall(body)) == _count_keys(parsed):
        return False
    try:
        json.loads(body, object_pairs_hook=_refuse_pairs)
    except ValueError:
        return True
    return False


def loads_strict(body: bytes) -> Any:
    """`loads` for a client's request body: also refuses duplicate keys (-32700)."""
    parsed = loads(body)
    if has_duplicate_keys(body, parsed):
        raise ProtocolError(
            "The request body repeats a key inside one JSON object.",
            hint="Send each member name once per object.",
            code="duplicate-key",
            jsonrpc_code=PARSE_ERROR,
        )
    return parsed


def dumps(message: Any) -> bytes:
    return orjson.dumps(message)


def is_request(msg: JSON) -> bool:
    return "method" in msg and "id" in msg


def is_notification(msg: JSON) -> bool:
    return "method" in msg and "id" not in msg


def is_response(msg: JSON) -> bool:
    return "method" not in msg and "id" in msg and ("result" in msg or "error" in msg)


def validate_message(msg: Any) -> JSON:
    """Check the JSON-RPC 2.0 envelope of one incoming message; batches are not accepted."""
    if isinstance(msg, list):
        raise ProtocolError(
            "JSON-RPC batches are not supported.",
            hint="Send one message per request (batching was removed from MCP in 2025-06-18).",
            code="batch-not-supported",
        )
    if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
        raise ProtocolError("Not a JSON-RPC 2.0 message.", hint='Include "jsonrpc": "2.0".')
    if "method" in msg:
        if not isinstance(msg["method"], str):
            raise ProtocolError("The method must be a string.")
        if "params" in msg and not isinstance(msg["params"], dict):
            raise ProtocolError("The params must be an object.", jsonrpc_code=INVALID_PARAMS)
    elif not is_response(msg):
        raise ProtocolError("A message needs a method, or an id with a result or an error.")
    if "id" in msg and not (
        isinstance(msg["id"], str) or (isinstance(msg["id"], int) and not isinstance(msg["id"], bool))
    ):
        raise ProtocolError("The id must be a string or an integer.")
    return msg


def result(msg_id: Any, value: JSON) -> JSON:
    return {"jsonrpc": "2.0", "id": msg_id, "result": value}


def error(msg_id: Any, code: int, message: str, data: Any = None) -> JSON:
    err: JSON = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}


def error_from(msg_id: Any, exc: AegressError) -> JSON:
    """The one mapping of our errors onto JSON-RPC error objects."""
    message = exc.message if not exc.hint else f"{exc.message} {exc.hint}"
    return error(msg_id, exc.jsonrpc_code, message, {"code": exc.code})


def notification(method: str, params: JSON | None = None) -> JSON:
    msg: JSON = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        msg["params"] = params
    return msg


# -- the 2026-07-28 revision: no handshake; version, capabilities and client info travel per request --
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = (MODERN_VERSION,)
META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
"""2026-07-28: the `_meta` key on every frame of a `subscriptions/listen` stream: that request's id."""
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
MISSING_CAPABILITY = -32021
UNSUPPORTED_VERSION = -32022
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
REMOVED_IN_MODERN = ("initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe",
                     "notifications/initialized")
CACHEABLE = ("tools/list", "resources/list", "resources/templates/list", "prompts/list", "resources/read",
             "server/discover")
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")

_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_B64_SENTINEL = re.compile(r"=\?base64\?(?P<payload>[A-Za-z0-9+/]*={0,2})\?=")


def encode_header_value(value: str) -> str:
    """Mirror a name into an HTTP header: verbatim when safe, else the `=?base64?...?=` sentinel."""
    if _HEADER_SAFE.fullmatch(value) and value == value.strip() and not _B64_SENTINEL.fullmatch(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def decode_header_value(value: str | None) -> str | None:
    """Inverse of `encode_header_value`; a malformed or non-canonical sentinel decodes to None."""
    if value is None:
        return None
    m = _B64_SENTINEL.fullmatch(value)
    if m is None:
        return value
    payload = m.group("payload")
    try:
        raw = base64.b64decode(payload, validate=True)
        if base64.b64encode(raw).decode("ascii") != payload:
            return None
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def modern_headers(message: JSON) -> dict[str, str]:
    """The headers a 2026-07-28 request must mirror from its body (for talking to an upstream)."""
    method = message.get("method", "")
    params = message.get("params") or {}
    meta = params.get("_meta") or {}
    headers = {"mcp-protocol-version": str(meta.get(META_PROTOCOL_VERSION, MODERN_VERSION)), "mcp-method": method}
    key = NAME_BEARING.get(method)
    if key and isinstance(params.get(key), str):
        headers["mcp-name"] = encode_header_value(params[key])
    return headers


def decorate_modern_result(method: str, value: JSON, server_info: JSON) -> JSON:
    """Results of 2026-07-28 carry resultType; cacheable ones ttlMs and cacheScope; all a serverInfo stamp."""
    out = dict(value)
    out.setdefault("resultType", "complete")
    if method in CACHEABLE and out.get("resultType") == "complete":
        out.setdefault("ttlMs", 0)
        out.setdefault("cacheScope", "private")
    meta = dict(out.get("_meta") or {})
    meta[META_SERVER_INFO] = server_info
    out["_meta"] = meta
    return out


STREAM_BREAK: JSON = {"method": "aegress/stream-break"}
"""Internal only, compared by identity: an HTTP upstream closed its stream mid-call (SSE polling).
The gateway resumes that stream itself; a resumable client stream is closed too, so the client
reconnects with Last-Event-ID as it would direct. Never sent on the wire."""

STREAM_OPEN: JSON = {"method": "aegress/stream-open"}
"""Internal only, compared by identity: the call's intent is durable and it is about to be forwarded,
so nothing can turn into an HTTP status any more; a resumable client stream may open now (and hand
the client an event id to come back with). Never sent on the wire."""


# -- 2026-07-28 Mcp-Param-* headers: tool arguments a client mirrors into headers (`x-mcp-header`) --------
X_MCP_HEADER = "x-mcp-header"
PARAM_HEADER_PREFIX = "mcp-param-"
_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def _declared_params(schema: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str, JSON]]:
    """(argument path, header token, property schema) for every property annotated with `x-mcp-header`."""
    out: list[tuple[tuple[str, ...], str, JSON]] = []
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict) or len(path) > 16:
        return out
    for key, sub in props.items():
        if not isinstance(sub, dict):
            continue
        token = sub.get(X_MCP_HEADER)
        if isinstance(token, str) and token:
            out.append(((*path, key), token, sub))
        out.extend(_declared_params(sub, (*path, key)))
    return out


def _render_param(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, str | int | float) else None


def _argument_at(arguments: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(arguments, dict):
            return None
        arguments = arguments.get(key)
    return arguments


def param_header_mismatch(schema: Any, arguments: JSON, headers: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """Pure: compare a tools/call's `Mcp-Param-*` headers (lowercase names) with its arguments.

    The 2026-07-28 revision lets intermediaries route on these headers, so a header that disagrees
    with the body (or is present without its argument, or missing with it) must be refused with
    -32020: otherwise what was routed on and what runs could differ. Returns (the first mismatch or
    None, the declared headers to forward); undeclared `Mcp-Param-*` headers are not forwarded."""
    forward: dict[str, str] = {}
    for path, token, prop in _declared_params(schema):
        name = PARAM_HEADER_PREFIX + token.lower()
        raw = headers.get(name)
        value = _argument_at(arguments, path)
        rendered = _render_param(value) if value is not None else None
        argument = ".".join(path)
        if raw is None:
            if rendered is not None:
                return f"Mcp-Param-{token} is missing but argument {argument!r} is present.", forward
            continue
        decoded = decode_header_value(raw)
        if rendered is None or decoded is None:
            return f"Mcp-Param-{token} does not match argument {argument!r}.", forward
        same = decoded == rendered
        if not same and prop.get("type") == "integer" and _DECIMAL.fullmatch(decoded) and not isinstance(value, bool):
            whole, _, fraction = decoded.partition(".")
            same = set(fraction) <= {"0"} and isinstance(value, int | float) and float(value).is_integer() \
                and int(whole) == int(value)
        if not same:
            return f"Mcp-Param-{token} does not match argument {argument!r}.", forward
        forward[name] = raw
    return None, forward
