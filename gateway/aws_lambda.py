"""AWS Lambda: the gateway's ASGI app served through Mangum, for short calls answered with JSON.

The image in recipes/aws/ runs `gateway.aws_lambda.handler`. Lambda gives one execution environment one
request at a time and freezes the process between requests (and may end it without warning), so the
handler differs from `aegress serve` in these ways, each for that reason:

- The app's lifespan (store, bus, evidence writer, reaper) is entered once per environment, on one event
  loop kept for every invocation. Mangum's own lifespan handling runs startup and shutdown around EVERY
  invocation, which would close the store after the first request: it is turned off.
- Every answer is one JSON body (`Limits.json_only`): Lambda buffers whole responses, so an SSE stream
  cannot reach the client. GET streams get 405 with a JSON-RPC error saying so.
- Evidence: AEGRESS_AUDIT_AWAIT_OUTCOME is forced on (a call's outcome is committed before its answer)
  and `Recorder.settle` commits whatever else waits (refusals, authentication failure counts) before the
  handler returns, so no record sits in memory while the process is frozen.
- A call's deadline is the invocation's remaining time less a margin, so the gateway answers (504) and
  records the outcome before Lambda ends the environment.
- The Host check accepts the domain AWS says the request arrived on (`requestContext.domainName`, set by
  the Function URL or API Gateway front end, not by the client) plus AEGRESS_ALLOWED_HOSTS.
- Postgres is required: a SQLite file in /tmp would be private to one environment and lost with it.

Secrets never sit in the function's configuration. For every variable `NAME_SECRET_ARN` the handler
reads that secret from AWS Secrets Manager at cold start: AEGRESS_MASTER_KEY and AEGRESS_SIGNING_KEY
become 0600 files in the data dir (AEGRESS_HOME, default /tmp/aegress), every other NAME (the database
URL, a Redis URL, an upstream credential referenced as `env:NAME`) an environment variable of the
process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.config import Limits, ServeSettings
from gateway.errors import ConfigError
from gateway.evidence.settings import KEY_FILE
from gateway.secrets import write_private_file

log = logging.getLogger("aegress.lambda")

DEFAULT_HOME = "/tmp/aegress"
SECRET_SUFFIX = "_SECRET_ARN"
FILE_SECRETS: dict[str, Path] = {
    "AEGRESS_MASTER_KEY": Path("secrets") / "master.key",
    "AEGRESS_SIGNING_KEY": KEY_FILE,
}
"""Secrets the gateway reads from files in its data dir; every other fetched secret becomes a variable."""
DEADLINE_MARGIN_S = 5.0
"""Time kept back from the invocation's remaining time: to answer, commit the outcome and settle."""
SETTLE_S = 5.0

Fetch = Callable[[str], str]


@dataclass(frozen=True)
class LambdaConfig:
    home: Path
    database_url: str
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    base_path: str = "/"
    deadline_margin_s: float = DEADLINE_MARGIN_S
    log_level: str = "warning"


def _words(value: str | None) -> tuple[str, ...]:
    return tuple(w.strip() for w in (value or "").replace(",", " ").split() if w.strip())


def secret_refs(env: Mapping[str, str]) -> dict[str, str]:
    """Pure: NAME -> secret ARN (or name) for every non-empty `NAME_SECRET_ARN` variable."""
    return {k[: -len(SECRET_SUFFIX)]: v.strip() for k, v in env.items()
            if k.endswith(SECRET_SUFFIX) and len(k) > len(SECRET_SUFFIX) and v.strip()}


def database_url_from_secret(text: str, env: Mapping[str, str]) -> str:
    """Pure: the database URL a secret holds, either as the URL itself or as the JSON an RDS secret holds
    (`username`, `password`, and `host`/`port`/`dbname` unless AEGRESS_DATABASE_HOST/_PORT/_NAME give them).
    A URL built from JSON asks for TLS (`sslmode=require`)."""
    text = text.strip()
    if text.startswith(("postgresql://", "postgres://")):
        return text
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not data.get("username") or not data.get("password"):
        raise ConfigError("The database secret holds neither a postgresql:// URL nor JSON with username and "
                          "password.", hint="Store the URL, or the JSON secret RDS creates, in that secret.")
    host = env.get("AEGRESS_DATABASE_HOST") or data.get("host")
    if not host:
        raise ConfigError("The database secret names no host.", hint="Set AEGRESS_DATABASE_HOST.")
    port = env.get("AEGRESS_DATABASE_PORT") or data.get("port") or 5432
    name = env.get("AEGRESS_DATABASE_NAME") or data.get("dbname") or "aegress"
    user, password = quote(str(data["username"]), safe=""), quote(str(data["password"]), safe="")
    return f"postgresql://{user}:{password}@{host}:{port}/{quote(str(name), safe='')}?sslmode=require"


def materialize_secrets(home: Path, env: Mapping[str, str], fetch: Fetch) -> dict[str, str]:
    """Fetch every referenced secret once (cold start): file secrets are written 0600 under `home`; the
    others are returned as variables for the process. Errors name the variable, never a secret value."""
    updates: dict[str, str] = {}
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, ref in sorted(secret_refs(env).items()):
        try:
            value = fetch(ref)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"Could not read the secret {name}{SECRET_SUFFIX} names: {type(exc).__name__}.",
                              hint="Check the ARN and that the function's role may call "
                              "secretsmanager:GetSecretValue on it.", code="config") from None
        if name in FILE_SECRETS:
            write_private_file(home / FILE_SECRETS[name], value.strip().encode() + b"\n")
        elif name == "AEGRESS_DATABASE_URL":
            updates[name] = database_url_from_secret(value, env)
        else:
            updates[name] = value
    return updates


def lambda_config(env: Mapping[str, str]) -> LambdaConfig:
    """Pure: the handler's settings from the function's variables (after `materialize_secrets`)."""
    mode = env.get("MCP_AUTH_MODE", "bearer")
    if mode != "bearer":
        raise ConfigError(f"MCP_AUTH_MODE={mode!r} is not supported.", hint="Use MCP_AUTH_MODE=bearer.")
    url = env.get("AEGRESS_DATABASE_URL") or ""
    via = env.get("AEGRESS_DATABASE_URL_FROM")
    if not url and via:
        url = env.get(via) or ""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "AWS Lambda needs a Postgres database: a SQLite file in /tmp would belong to one execution "
            "environment and vanish with it.",
            hint="Set AEGRESS_DATABASE_URL_SECRET_ARN to a Secrets Manager secret holding the URL (or RDS JSON).")
    try:
        margin = float(env.get("AEGRESS_LAMBDA_DEADLINE_MARGIN") or DEADLINE_MARGIN_S)
    except ValueError:
        raise ConfigError("AEGRESS_LAMBDA_DEADLINE_MARGIN must be a number of seconds.") from None
    return LambdaConfig(
        home=Path(env.get("AEGRESS_HOME") or DEFAULT_HOME),
        database_url=url,
        allowed_hosts=_words(env.get("AEGRESS_ALLOWED_HOSTS")),
        allowed_origins=_words(env.get("AEGRESS_ALLOWED_ORIGINS")),
        base_path=env.get("AEGRESS_LAMBDA_BASE_PATH") or "/",
        deadline_margin_s=max(0.0, margin),
        log_level=(env.get("AEGRESS_LOG_LEVEL") or "warning").lower(),
    )


def check_key_files(home: Path) -> None:
    """Refuse to start without the shared keys: a missing master key would be created afresh (no token
    would verify), a missing signing key likewise (checkpoints signed by a key nobody trusts)."""
    for name, rel in FILE_SECRETS.items():
        if not (home / rel).exists():
            raise ConfigError(f"No {name} in the data dir {home}.",
                              hint=f"Set {name}{SECRET_SUFFIX} to the Secrets Manager secret that holds it "
                              "(recipes/aws/README.md).", code="config")


def invocation_deadline(limit_s: float, remaining_ms: int | None, margin_s: float) -> float:
    """Pure: a call's deadline in this invocation: the configured one, cut to the time Lambda still gives
    less the margin, and never below one second."""
    if remaining_ms is None:
        return limit_s
    return max(1.0, min(limit_s, remaining_ms / 1000 - margin_s))


def event_domain(event: Mapping[str, Any]) -> str | None:
    """The domain the front end received the request on (Function URL, API Gateway), as AWS reports it."""
    context = event.get("requestContext")
    domain = context.get("domainName") if isinstance(context, dict) else None
    return domain if isinstance(domain, str) and domain else None


class LambdaGateway:
    """One execution environment's gateway: built and started once, then called once per invocation."""

    def __init__(self, config: LambdaConfig, limits: Limits | None = None) -> None:
        from mangum import Mangum
        from mangum.protocols import LifespanCycle

        from gateway.server import build_gateway

        self.config = config
        self.limits = replace(limits or Limits(), json_only=True)
        check_key_files(config.home)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # Mangum runs every invocation on the current loop: this one
        try:
            self.gateway = build_gateway(config.home, ServeSettings(limits=self.limits),
                                         database_url=config.database_url)
            self.endpoint = self.gateway.endpoint
            self.endpoint.allowed_origins = config.allowed_origins  # no loopback origins on Lambda
            self.recorder = self.gateway.pipeline.recorder
            self.mangum = Mangum(self.gateway.app, lifespan="off", api_gateway_base_path=config.base_path)
            self._lifespan = LifespanCycle(self.gateway.app, "on")
            self._lifespan.__enter__()  # bus, reaper; stays entered until close()
        except BaseException:
            asyncio.set_event_loop(None)
            self.loop.close()
            raise

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        domain = event_domain(event)
        self.endpoint.allowed_hosts = self.config.allowed_hosts + ((domain,) if domain else ())
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        deadline = invocation_deadline(self.limits.request_deadline_s, remaining() if remaining else None,
                                       self.config.deadline_margin_s)
        self.endpoint.limits = replace(self.limits, request_deadline_s=deadline)
        try:
            return self.mangum(event, context)
        finally:
            running = self.endpoint.tasks_in_flight()  # cut by a deadline: their outcomes are queued as they end
            if running:
                self.loop.run_until_complete(asyncio.wait(running, timeout=SETTLE_S))
            if not self.recorder.settle(SETTLE_S):  # before the process may be frozen
                log.error("evidence records still wait for the store after %g s; they are retried while this "
                          "environment runs, and start-up recovery marks open calls outcome_unknown", SETTLE_S)

    def close(self) -> None:
        """Shut the app down (store, recorder, upstreams) and drop the loop. Tests call it; Lambda ends an
        environment without telling a function that registers no extension, and nothing is in flight then:
        every invocation settles its calls and records before it returns."""
        try:
            self._lifespan.__exit__(None, None, None)
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()


def secrets_manager_fetch(ref: str) -> str:
    """The secret's string from AWS Secrets Manager (boto3 comes with the Lambda Python base image)."""
    import boto3  # type: ignore[import-not-found]

    client = boto3.client("secretsmanager")
    return str(client.get_secret_value(SecretId=ref)["SecretString"])


def cold_start(env: Mapping[str, str] | None = None, fetch: Fetch = secrets_manager_fetch) -> LambdaGateway:
    """Secrets, settings and the started gateway, once per execution environment. Sets process variables
    (this is the process's edge, as the CLI is for `aegress serve`)."""
    from gateway.evidence.redaction import install_log_redaction

    env = dict(os.environ if env is None else env)
    home = Path(env.get("AEGRESS_HOME") or DEFAULT_HOME)
    updates = materialize_secrets(home, env, fetch)
    updates["AEGRESS_HOME"] = str(home)
    updates["AEGRESS_AUDIT_AWAIT_OUTCOME"] = "on"  # the outcome is committed before the answer leaves
    if env.get("AEGRESS_AUDIT_AWAIT_OUTCOME", "on").lower() not in ("on", "1", "true"):
        log.warning("AEGRESS_AUDIT_AWAIT_OUTCOME is forced on: Lambda freezes the process after each answer")
    config = lambda_config({**env, **updates})
    # the rest (a Redis URL, an upstream credential read as env:NAME) is read from the process environment;
    # the database URL is handed over directly and stays out of it
    os.environ.update({k: v for k, v in updates.items() if k != "AEGRESS_DATABASE_URL"})
    logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(config.log_level.upper())  # the Lambda runtime installs its own handler first
    install_log_redaction()
    return LambdaGateway(config)


_GATEWAY: LambdaGateway | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point (image CMD `gateway.aws_lambda.handler`)."""
    global _GATEWAY
    if _GATEWAY is None:
        _GATEWAY = cold_start()
    return _GATEWAY(event, context)
