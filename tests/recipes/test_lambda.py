"""The AWS Lambda recipe: the handler in-process with realistic events, and the template under cfn-lint.

The handler (gateway.aws_lambda) is called as the Lambda runtime calls it: `handler(event, context)` with
Function URL (payload 2.0), API Gateway HTTP API (2.0) and REST API (1.0) events, against a real HTTP
upstream the test starts and the machine's Postgres (a database of this run). What cannot run here: AWS
itself. Secrets Manager is replaced by a dictionary with the secrets the operator would store (the
function that calls boto3 is three lines and is not run); the Lambda context is a stand-in with the
runtime's attributes; nothing freezes the process between invocations, so the test checks the property
that matters instead: when the handler returns, no evidence record waits in memory.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ALLOW_ALL_POLICY, ROOT, aegress, run_http_upstream

pytestmark = pytest.mark.timeout(240)

FUNCTION_URL_DOMAIN = "abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-1.on.aws"
API_DOMAIN = "a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com"
MASTER_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aegress/master-key-AbCdEf"
SIGNING_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aegress/signing-key-AbCdEf"
DATABASE_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aegress/database-AbCdEf"
LINT_VENV = ROOT / ".cache" / "lint-venv"


@dataclass
class Context:
    """What the Lambda runtime passes as `context` (the attributes handlers use)."""

    remaining_ms: int = 60_000
    function_name: str = "aegress-gateway"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:aegress-gateway"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


# -- realistic events ----------------------------------------------------------------------------------------
def _v2_event(domain: str, route_key: str, method: str, headers: dict[str, str], body: str | None,
              b64: bool) -> dict[str, Any]:
    now = time.time()
    hdrs = {"host": domain, "user-agent": "claude-code/2.1.3", "x-forwarded-for": "203.0.113.9",
            "x-forwarded-port": "443", "x-forwarded-proto": "https", "x-amzn-trace-id": "Root=1-67891233-abcdef",
            **{k.lower(): v for k, v in headers.items()}}
    if body is not None:
        hdrs["content-length"] = str(len(body.encode()))
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": route_key, "rawPath": "/mcp", "rawQueryString": "", "headers": hdrs,
        "requestContext": {
            "accountId": "123456789012" if "lambda-url" not in domain else "anonymous",
            "apiId": domain.split(".")[0], "domainName": domain, "domainPrefix": domain.split(".")[0],
            "http": {"method": method, "path": "/mcp", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.9",
                     "userAgent": "claude-code/2.1.3"},
            "requestId": f"req-{now}", "routeKey": route_key, "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)), "timeEpoch": int(now * 1000)},
        "isBase64Encoded": b64,
    }
    if body is not None:
        event["body"] = base64.b64encode(body.encode()).decode() if b64 else body
    return event


def function_url_event(method: str, headers: dict[str, str], body: str | None = None) -> dict[str, Any]:
    """A Lambda Function URL event (payload 2.0); the URL sends a JSON body base64-encoded at times: so here."""
    return _v2_event(FUNCTION_URL_DOMAIN, "$default", method, headers, body, b64=body is not None)


def http_api_event(method: str, headers: dict[str, str], body: str | None = None) -> dict[str, Any]:
    """An API Gateway HTTP API event (payload 2.0) for the template's `ANY /mcp` route."""
    return _v2_event(API_DOMAIN, "ANY /mcp", method, headers, body, b64=False)


def rest_api_event(method: str, headers: dict[str, str], body: str | None = None) -> dict[str, Any]:
    """An API Gateway REST API proxy event (payload 1.0), stage `prod`."""
    hdrs = {"Host": API_DOMAIN, "User-Agent": "codex/0.171", "X-Forwarded-For": "203.0.113.10",
            "X-Forwarded-Port": "443", "X-Forwarded-Proto": "https", **headers}
    if body is not None:
        hdrs["Content-Length"] = str(len(body.encode()))
    return {
        "resource": "/mcp", "path": "/mcp", "httpMethod": method, "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123", "resourcePath": "/mcp", "httpMethod": method, "extendedRequestId": "x=",
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000"), "path": "/prod/mcp",
            "accountId": "123456789012", "protocol": "HTTP/1.1", "stage": "prod", "domainPrefix": "a1b2c3d4e5",
            "requestTimeEpoch": int(time.time() * 1000),
            "requestId": f"req-{time.time()}", "domainName": API_DOMAIN, "apiId": "a1b2c3d4e5",
            "identity": {"sourceIp": "203.0.113.10", "userAgent": "codex/0.171", "accountId": None, "caller": None,
                         "user": None, "userArn": None}},
        "body": body, "isBase64Encoded": False,
    }


EVENTS = {"function-url": function_url_event, "http-api": http_api_event, "rest-api": rest_api_event}


# -- the deployment --------------------------------------------------------------------------------------------
@dataclass
class Deployed:
    gateway: Any
    token: str
    url: str
    ops_home: Path
    lambda_home: Path

    def invoke(self, event: dict[str, Any], remaining_ms: int = 60_000) -> dict[str, Any]:
        return self.gateway(event, Context(remaining_ms=remaining_ms))

    def pending(self) -> tuple[int, int]:
        """Evidence records still in memory (queued, deferred or held): what a frozen process would keep."""
        writer = self.gateway.recorder.writer
        return writer.waiting[0] + len(writer._later) + len(writer._ready), writer.held

    def rows(self, **where: str) -> list[Any]:
        from gateway.store import open_store
        from gateway.store.base import EvidenceFilter

        store = open_store(self.ops_home, self.url, migrate=False)
        try:
            return store.query_evidence(EvidenceFilter(**where), limit=1000)
        finally:
            store.close()


def _ops(home: Path, url: str, *args: str) -> str:
    return aegress(home, *args, AEGRESS_DATABASE_URL=url).stdout


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, pg_database: Any) -> Iterator[Deployed]:
    """The operator's side with the CLI (tenant, actor, token, policy, an HTTP upstream) on a Postgres database of
    this run, then the function's cold start from its secrets, as the template configures it. One environment
    serves the module's tests, as one warm Lambda environment serves many invocations."""
    from gateway.aws_lambda import cold_start

    tmp_path = tmp_path_factory.mktemp("lambda")
    url = pg_database.schema_url()
    ops = tmp_path / "ops"
    _ops(ops, url, "tenant", "create", "acme")
    _ops(ops, url, "actor", "add", "--tenant", "acme", "alice")
    token = json.loads(_ops(ops, url, "token", "issue", "--tenant", "acme", "--actor", "alice", "--json"))["token"]
    policy = tmp_path / "allow-all.toml"
    policy.write_text(ALLOW_ALL_POLICY)
    _ops(ops, url, "policy", "apply", str(policy), "--tenant", "acme", "--yes")
    _ops(ops, url, "audit", "rotate-key", "--yes")
    secrets = {MASTER_ARN: (ops / "secrets" / "master.key").read_text(),
               SIGNING_ARN: (ops / "secrets" / "audit-signing.key").read_text(),
               DATABASE_ARN: url}
    saved = dict(os.environ)
    with run_http_upstream("lambda-upstream") as (upstream_url, _):
        _ops(ops, url, "upstream", "add", "--tenant", "acme", "tools", "--url", upstream_url, "--allow-private")
        lambda_home = tmp_path / "lambda-tmp" / "aegress"
        env = {**os.environ, "AEGRESS_HOME": str(lambda_home), "AEGRESS_MASTER_KEY_SECRET_ARN": MASTER_ARN,
               "AEGRESS_SIGNING_KEY_SECRET_ARN": SIGNING_ARN, "AEGRESS_DATABASE_URL_SECRET_ARN": DATABASE_ARN,
               "AEGRESS_DATABASE_POOL_SIZE": "2", "AEGRESS_AUDIT_AWAIT_OUTCOME": "off"}
        gateway = cold_start(env, fetch=secrets.__getitem__)
        try:
            yield Deployed(gateway, token, url, ops, lambda_home)
        finally:
            gateway.close()
            os.environ.clear()
            os.environ.update(saved)


def _mcp(token: str, version: str | None = None, session: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if version:
        headers["MCP-Protocol-Version"] = version
    if session:
        headers["Mcp-Session-Id"] = session
    return {**headers, **extra}


def _header(response: dict[str, Any], name: str) -> str | None:
    headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
    multi = {k.lower(): v for k, v in (response.get("multiValueHeaders") or {}).items()}
    if name in headers:
        return str(headers[name])
    return ", ".join(multi[name]) if name in multi else None


def _body(response: dict[str, Any]) -> Any:
    raw = response["body"]
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    assert (_header(response, "content-type") or "").startswith("application/json"), response
    return json.loads(raw)


# -- the handler -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("front", sorted(EVENTS))
def test_handshake_session_over_each_front_end(deployed: Deployed, front: str) -> None:
    """initialize, tools/list and tools/call (2025-11-25) through each front end: JSON answers, and the call's
    intent and outcome are in Postgres with nothing left in memory when the handler returns."""
    event = EVENTS[front]
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "clientInfo": {"name": "lambda-test", "version": "1"},
        "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}}}})
    response = deployed.invoke(event("POST", _mcp(deployed.token), init))
    assert response["statusCode"] == 200, response
    assert _body(response)["result"]["protocolVersion"] == "2025-11-25"
    session = _header(response, "mcp-session-id")
    assert session
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert deployed.invoke(event("POST", _mcp(deployed.token, "2025-11-25", session), note))["statusCode"] == 202

    listed = deployed.invoke(event("POST", _mcp(deployed.token, "2025-11-25", session),
                                   json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})))
    assert listed["statusCode"] == 200
    names = {t["name"] for t in _body(listed)["result"]["tools"]}
    assert {"tools__echo", "tools__slow"} <= names

    before = len(deployed.rows(tenant="acme", kind="outcome"))
    text = f"hello from {front}"
    called = deployed.invoke(event("POST", _mcp(deployed.token, "2025-11-25", session), json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "tools__echo", "arguments": {"text": text}}})))
    assert called["statusCode"] == 200
    assert _body(called)["result"]["content"][0]["text"] == text
    assert deployed.pending() == (0, 0)  # what Lambda would freeze: nothing
    outcomes = deployed.rows(tenant="acme", kind="outcome")
    assert len(outcomes) == before + 1
    assert outcomes[0].tool == "tools__echo" and outcomes[0].status == "completed" and outcomes[0].actor == "alice"
    assert deployed.rows(tenant="acme", kind="intent")[0].seq == outcomes[0].intent_seq


def test_modern_revision_over_function_url(deployed: Deployed) -> None:
    """2026-07-28 needs no session: every request carries its version and capabilities."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "lambda-test", "version": "1"}}

    def post(msg_id: int, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        extra = {"Mcp-Method": method, **({"Mcp-Name": name} if name else {})}
        body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": {**params, "_meta": meta}})
        return deployed.invoke(function_url_event("POST", _mcp(deployed.token, "2026-07-28", **extra), body))

    listed = post(1, "tools/list", {})
    assert listed["statusCode"] == 200, listed
    assert "tools__echo" in {t["name"] for t in _body(listed)["result"]["tools"]}
    called = post(2, "tools/call", {"name": "tools__echo", "arguments": {"text": "modern"}}, "tools__echo")
    assert called["statusCode"] == 200
    assert _body(called)["result"]["content"][0]["text"] == "modern"
    assert deployed.pending() == (0, 0)
    assert deployed.rows(tenant="acme", kind="outcome", tool="tools__echo")[0].status == "completed"


def _session(deployed: Deployed, capabilities: dict[str, Any] | None = None) -> str:
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "clientInfo": {"name": "lambda-test", "version": "1"},
        "capabilities": capabilities or {}}})
    response = deployed.invoke(function_url_event("POST", _mcp(deployed.token), init))
    session = _header(response, "mcp-session-id")
    assert session, response
    return session


def test_streaming_requests_are_refused_clearly(deployed: Deployed) -> None:
    """A GET stream, and a POST that accepts only SSE, get a JSON-RPC error saying the deployment is JSON only."""
    session = _session(deployed)
    get = deployed.invoke(function_url_event("GET", {"Authorization": f"Bearer {deployed.token}",
                                                     "Accept": "text/event-stream", "Mcp-Session-Id": session,
                                                     "MCP-Protocol-Version": "2025-06-18"}))
    assert get["statusCode"] == 405
    assert _header(get, "allow") == "POST, DELETE"
    error = _body(get)["error"]
    assert error["data"]["code"] == "json-only"
    assert "JSON only" in error["message"] and "GET streams" in error["message"]

    sse_only = deployed.invoke(http_api_event("POST", _mcp(deployed.token, "2025-06-18", session,
                                                           Accept="text/event-stream"),
                                              json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})))
    assert sse_only["statusCode"] == 406
    assert _body(sse_only)["error"]["data"]["code"] == "json-only"

    only_json = deployed.invoke(rest_api_event("POST", _mcp(deployed.token, "2025-06-18", session,
                                                            Accept="application/json"),
                                               json.dumps({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})))
    assert only_json["statusCode"] == 200  # JSON alone is enough here


def test_bad_token_is_refused_and_recorded(deployed: Deployed) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    response = deployed.invoke(function_url_event("POST", _mcp("aeg_" + "x" * 40, "2025-06-18"), body))
    assert response["statusCode"] == 401
    assert (_header(response, "www-authenticate") or "").startswith("Bearer")
    assert _body(response)["error"]["data"]["code"] == "invalid-token"
    # the failure count is committed before the handler returns, not at the end of a 60 s window
    failures = deployed.rows(kind="auth_failures_aggregate")
    assert failures and json.loads(failures[0].data)["body"]["reasons"] == ["invalid-token"]


def test_calls_that_need_a_stream_answer_in_json(deployed: Deployed) -> None:
    """Progress is dropped (the answer still comes whole). The client is declared upstream without sampling;
    a tool that asks for it anyway ends at once with an error answer instead of waiting for a reply that
    cannot come, and its outcome is recorded."""
    session = _session(deployed, {"sampling": {}})
    progress = deployed.invoke(function_url_event("POST", _mcp(deployed.token, "2025-06-18", session), json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "tools__nonce_echo", "arguments": {"nonce": "n1", "steps": 3}, "_meta": {"progressToken": "p"}}})))
    assert progress["statusCode"] == 200
    assert _body(progress)["result"]["content"][0]["text"] == "lambda-upstream:n1"

    sampling = deployed.invoke(function_url_event("POST", _mcp(deployed.token, "2025-06-18", session), json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "tools__ask_model", "arguments": {"prompt": "hi"}}})))
    assert sampling["statusCode"] == 200
    error = _body(sampling)["error"]  # the upstream asked anyway (the SDK does not check): the call ends
    assert error["data"]["code"] == "json-only" and "sampling/createMessage" in error["message"]
    assert deployed.pending() == (0, 0)
    assert deployed.rows(tenant="acme", kind="outcome", tool="tools__ask_model")[0].status == "cancelled"


def test_a_call_ends_before_lambda_would_kill_it(deployed: Deployed) -> None:
    """With 7 s left in the invocation and a 5 s margin, a 10 s call is answered 504 after about 2 s, and its
    outcome is recorded before the handler returns."""
    session = _session(deployed)
    started = time.monotonic()
    response = deployed.invoke(function_url_event("POST", _mcp(deployed.token, "2025-06-18", session), json.dumps(
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "tools__slow", "arguments": {"seconds": 10}}})), remaining_ms=7000)
    took = time.monotonic() - started
    assert response["statusCode"] == 504, response
    assert _body(response)["error"]["data"]["code"] == "deadline-exceeded"
    assert 1.5 < took < 6
    assert deployed.pending() == (0, 0)
    outcome = deployed.rows(tenant="acme", kind="outcome", tool="tools__slow")
    assert outcome and outcome[0].status == "cancelled"


def test_secrets_land_in_private_files(deployed: Deployed) -> None:
    master = deployed.lambda_home / "secrets" / "master.key"
    assert master.read_text() == (deployed.ops_home / "secrets" / "master.key").read_text().strip() + "\n"
    for path in (master, deployed.lambda_home / "secrets" / "audit-signing.key"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    health = deployed.invoke(function_url_event("GET", {}) | {"rawPath": "/health"} | {
        "requestContext": {**function_url_event("GET", {})["requestContext"],
                           "http": {"method": "GET", "path": "/health", "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.9", "userAgent": "curl"}}})
    assert health["statusCode"] == 200 and _body(health)["ready"] is True


# -- settings, without a gateway ----------------------------------------------------------------------------------
def test_database_url_from_an_rds_secret() -> None:
    from gateway.aws_lambda import database_url_from_secret
    from gateway.errors import ConfigError

    rds = json.dumps({"username": "aegress", "password": "p@ss/word",
                      "host": "db.cluster-x.eu-west-1.rds.amazonaws.com", "port": 5432, "dbname": "aegress",
                      "engine": "postgres"})
    assert database_url_from_secret(rds, {}) == (
        "postgresql://aegress:p%40ss%2Fword@db.cluster-x.eu-west-1.rds.amazonaws.com:5432/aegress?sslmode=require")
    managed = json.dumps({"username": "u", "password": "p"})  # RDS-managed master secrets hold only these two
    assert database_url_from_secret(managed, {"AEGRESS_DATABASE_HOST": "h", "AEGRESS_DATABASE_NAME": "n"}) == (
        "postgresql://u:p@h:5432/n?sslmode=require")
    assert database_url_from_secret(" postgresql://a:b@h/d \n", {}) == "postgresql://a:b@h/d"
    with pytest.raises(ConfigError) as info:
        database_url_from_secret("not a url", {})
    assert "not a url" not in info.value.message
    with pytest.raises(ConfigError):
        database_url_from_secret(managed, {})  # no host anywhere


def test_lambda_config_refuses_what_cannot_work(tmp_path: Path) -> None:
    from gateway.aws_lambda import check_key_files, invocation_deadline, lambda_config, secret_refs
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="Postgres"):
        lambda_config({"AEGRESS_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})
    with pytest.raises(ConfigError, match="MCP_AUTH_MODE"):
        lambda_config({"AEGRESS_DATABASE_URL": "postgresql://h/d", "MCP_AUTH_MODE": "none"})
    config = lambda_config({"AEGRESS_DATABASE_URL_FROM": "DATABASE_URL", "DATABASE_URL": "postgresql://h/d",
                            "AEGRESS_ALLOWED_HOSTS": "mcp.example.com, other.example.com"})
    assert config.home == Path("/tmp/aegress") and config.allowed_hosts == ("mcp.example.com", "other.example.com")
    with pytest.raises(ConfigError, match="AEGRESS_MASTER_KEY"):
        check_key_files(tmp_path)  # a fresh master key would make every token fail: refused
    assert secret_refs({"A_SECRET_ARN": " arn:x ", "B_SECRET_ARN": "", "_SECRET_ARN": "y", "C": "z"}) == {"A": "arn:x"}
    assert invocation_deadline(300, 60_000, 5) == 55
    assert invocation_deadline(30, 60_000, 5) == 30
    assert invocation_deadline(300, 3_000, 5) == 1.0
    assert invocation_deadline(300, None, 5) == 300


def test_a_secret_that_cannot_be_read_is_named_not_shown(tmp_path: Path) -> None:
    from gateway.aws_lambda import materialize_secrets
    from gateway.errors import ConfigError

    def denied(ref: str) -> str:
        raise PermissionError("AccessDeniedException: secret value s3cr3t")

    with pytest.raises(ConfigError) as info:
        materialize_secrets(tmp_path, {"AEGRESS_MASTER_KEY_SECRET_ARN": MASTER_ARN}, denied)
    assert "AEGRESS_MASTER_KEY_SECRET_ARN" in info.value.message and "s3cr3t" not in info.value.message
    assert "GetSecretValue" in (info.value.hint or "")


# -- the template ----------------------------------------------------------------------------------------------------
def test_template_passes_cfn_lint() -> None:
    """cfn-lint (pinned in tests/requirements-lint.txt, installed by scripts/install-test-deps.sh) with the
    informational checks too."""
    cfn_lint = LINT_VENV / "bin" / "cfn-lint"
    assert cfn_lint.exists(), "cfn-lint is missing: run scripts/install-test-deps.sh"
    result = subprocess.run([str(cfn_lint), "--include-checks", "I", "--", "recipes/aws/template.yaml"], cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parameters_file_matches_the_template() -> None:
    """Every parameter the change-set file sets exists, and every parameter without a default is set."""
    import re

    template = (ROOT / "recipes" / "aws" / "template.yaml").read_text()
    block = template.split("\nParameters:\n", 1)[1].split("\nConditions:\n", 1)[0]
    declared = re.findall(r"^  ([A-Za-z0-9]+):$", block, re.M)
    chunks = re.split(r"^  [A-Za-z0-9]+:$", block, flags=re.M)[1:]
    required = {name for name, chunk in zip(declared, chunks, strict=True) if "Default:" not in chunk}
    given = {p["ParameterKey"] for p in json.loads((ROOT / "recipes" / "aws" / "parameters.json").read_text())}
    assert given <= set(declared)
    assert required <= given | {"Architecture"}
