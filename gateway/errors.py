"""Aegress error classes: one tree, each with a stable code, mapped once to exit codes and wire errors.

    AegressError                    code            exit  http  json-rpc
    ├── UsageError                  usage           2     400   -32602
    ├── NotFound                    not-found       1     404   -32602
    ├── AlreadyExists               already-exists  1     409   -32602
    ├── InvalidInput                invalid-input   1     400   -32602
    ├── ConfigError                 config          1     500   -32603
    ├── AuthError                   unauthorized    1     401   -32001 (+ WWW-Authenticate)
    ├── BindingError                binding         1     403   -32002
    ├── Forbidden                   forbidden       1     403   -32003
    │   └── InsufficientScope       insufficient-scope 1  403   -32003 (+ WWW-Authenticate, OAuth mode)
    ├── ProtocolError               protocol        1     400   -32600 (or a specific code)
    ├── UpstreamError               upstream        1     502   -32603
    ├── StoreUnavailable            store-unavailable 1   503   -32004
    ├── RateLimited                 rate-limited    1     429   -32005 (+ Retry-After)
    └── CheckFailed                 check-failed    3     -     -      ("a check ran and found a problem")

Messages say what was wrong; `hint` says what to do. Neither may hold a secret or another tenant's data:
callers build messages from the requester's own input only.
"""

from __future__ import annotations


class AegressError(Exception):
    """Base class: every error the library raises on purpose."""

    code: str = "error"
    exit_code: int = 1
    http_status: int = 500
    jsonrpc_code: int = -32603

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, object]:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        return body


class UsageError(AegressError):
    code = "usage"
    exit_code = 2
    http_status = 400
    jsonrpc_code = -32602


class NotFound(AegressError):
    code = "not-found"
    http_status = 404
    jsonrpc_code = -32602


class AlreadyExists(AegressError):
    code = "already-exists"
    http_status = 409
    jsonrpc_code = -32602


class InvalidInput(AegressError):
    code = "invalid-input"
    http_status = 400
    jsonrpc_code = -32602


class ConfigError(AegressError):
    code = "config"
    http_status = 500
    jsonrpc_code = -32603


class AuthError(AegressError):
    """`challenge`: the WWW-Authenticate value the edge sends (OAuth mode names the resource metadata and
    scope there); None sends the plain bearer challenge."""

    code = "unauthorized"
    http_status = 401
    jsonrpc_code = -32001
    challenge: str | None = None

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None,
                 challenge: str | None = None) -> None:
        super().__init__(message, hint=hint, code=code)
        self.challenge = challenge


class BindingError(AegressError):
    code = "binding"
    http_status = 403
    jsonrpc_code = -32002


class Forbidden(AegressError):
    code = "forbidden"
    http_status = 403
    jsonrpc_code = -32003


class InsufficientScope(Forbidden):
    """OAuth mode: a valid token without the scope the resource needs; `challenge` names it (step-up)."""

    code = "insufficient-scope"

    def __init__(self, message: str, *, challenge: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.challenge = challenge


class ProtocolError(AegressError):
    """A malformed or unsupported MCP/JSON-RPC request; jsonrpc_code may be set per instance."""

    code = "protocol"
    http_status = 400
    jsonrpc_code = -32600

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        code: str | None = None,
        http_status: int | None = None,
        jsonrpc_code: int | None = None,
    ) -> None:
        super().__init__(message, hint=hint, code=code)
        if http_status is not None:
            self.http_status = http_status
        if jsonrpc_code is not None:
            self.jsonrpc_code = jsonrpc_code


class UpstreamError(AegressError):
    code = "upstream"
    http_status = 502
    jsonrpc_code = -32603


class StoreUnavailable(AegressError):
    code = "store-unavailable"
    http_status = 503
    jsonrpc_code = -32004


class CheckFailed(AegressError):
    """A check ran and found a problem (audit verify, policy test, client doctor): exit 3."""

    code = "check-failed"
    exit_code = 3
    http_status = 500


class RateLimited(AegressError):
    """A fair-share cap or throttle was hit (sessions, calls in flight, failed authentications): try later."""

    code = "rate-limited"
    http_status = 429
    jsonrpc_code = -32005

    def __init__(self, message: str, *, retry_after: float, hint: str | None = None, code: str | None = None) -> None:
        super().__init__(message, hint=hint, code=code)
        self.retry_after = max(1, int(retry_after + 0.999))
