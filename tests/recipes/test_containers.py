"""The container recipes (recipes/docker, recipes/kubernetes, recipes/azure) pass real linters, parse, hold
no secret, and the image builds and serves.

- Linters from the package registries, pinned in tests/requirements-lint.txt: hadolint (Dockerfile),
  checkov (Dockerfile, Kubernetes, Bicep, secrets), the compose specification's JSON schema (as shipped
  by check-jsonschema) and compose-lint (compose file), kubernetes-validate (Kubernetes' own schemas).
- Real programs: Caddy (Debian) terminates TLS in front of a real gateway with the recipe's Caddyfile;
  a gateway reads a mounted master key shared by two data dirs; Debian's dockerd (started privately)
  builds the image on a debootstrap base and runs it against the machine's Postgres and Redis.
What cannot run here (a Kubernetes cluster, Azure, `docker compose up` with the registry's images) is
said in each recipe's README.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx2
import pytest

from gateway.audit.keys import parse_private_key
from tests.procs import ALLOW_ALL_POLICY, aegress, answer, run_gateway, run_http_upstream, setup_tenant
from tests.recipes.recipe_support import (
    BASE_TAR,
    INSTALL_HINT,
    RECIPES,
    ROOT,
    Docker,
    dockerfile_stages,
    free_port,
    lint_python,
    private_dockerd,
    run,
    secret_findings,
    tool,
)

DOCKERFILE = RECIPES / "docker" / "Dockerfile"
COMPOSE = RECIPES / "docker" / "gateway.compose.yaml"
CADDYFILE = RECIPES / "docker" / "Caddyfile"
K8S = RECIPES / "kubernetes" / "gateway.yaml"
BICEP = RECIPES / "azure" / "gateway-container-app.bicep"
RECIPE_DIRS = [RECIPES / "docker", RECIPES / "kubernetes", RECIPES / "azure"]
DOCS = [ROOT / "docs" / "operations" / n for n in ("docker.md", "kubernetes.md", "azure-container-apps.md")]
K8S_VALUES = {
    "AEGRESS_PUBLIC_HOST": "gw.example.com",
    "AEGRESS_IMAGE": "registry.example.com/aegress",
    "AEGRESS_IMAGE_DIGEST": "sha256:" + "0" * 64,
    "AEGRESS_INGRESS_CLASS": "nginx",
    "AEGRESS_INGRESS_NAMESPACE": "ingress-nginx",
}
ACCEPT = "application/json, text/event-stream"
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "recipes", "version": "0"}}}


def _recipe_files() -> list[Path]:
    return sorted(p for d in RECIPE_DIRS for p in d.rglob("*") if p.is_file())


def _checkov(target: Path, *frameworks: str) -> list[dict[str, Any]]:
    proc = run([tool("checkov"), "-d", str(target), "--framework", *frameworks, "--skip-download", "--compact",
                "-o", "json"], timeout=300, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    data = json.loads(proc.stdout) if proc.stdout.strip() else []
    return data if isinstance(data, list) else [data]


# -- linters ------------------------------------------------------------------------------------------
def test_hadolint_passes_on_the_dockerfile() -> None:
    proc = run([tool("hadolint"), "--format", "json", str(DOCKERFILE)], timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout or "[]") == [], proc.stdout
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):  # every ignore says why, on the comment line above it
        if "hadolint ignore=" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], f"line {i + 1}: no reason"


@pytest.mark.parametrize("recipe", ["docker", "kubernetes", "azure"])
def test_checkov_finds_nothing_but_justified_skips(recipe: str) -> None:
    reports = _checkov(RECIPES / recipe, "dockerfile", "kubernetes", "bicep", "secrets")
    by_type = {r["check_type"]: r for r in reports}
    for report in reports:
        summary = report["summary"]
        assert summary["failed"] == 0 and summary["parsing_errors"] == 0, json.dumps(report["results"], indent=1)[:4000]
        for skipped in report["results"].get("skipped_checks", []):
            reason = skipped["check_result"].get("suppress_comment") or ""
            assert len(reason.split()) >= 5, f"{skipped['check_id']} skipped without a reason: {reason!r}"
    expected = {"docker": "dockerfile", "kubernetes": "kubernetes"}.get(recipe)
    if expected:  # the framework really ran and checked something
        assert by_type[expected]["summary"]["passed"] > 20, reports


def test_checkov_parses_the_bicep_file() -> None:
    """checkov reads Bicep through pycep; it has no Container Apps policies, so nothing passes or fails
    for that resource (recipes/azure/README.md says so); a parse error would show here."""
    proc = run([tool("checkov"), "-f", str(BICEP), "--framework", "bicep", "--skip-download", "-o", "json"],
               timeout=300, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    summary = report.get("summary", report)  # with no applicable check checkov prints the bare summary
    assert summary["failed"] == 0 and summary["parsing_errors"] == 0, summary


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    check = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    proc = run([*check, str(COMPOSE)], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.compose.yaml"  # the validator really validates: a typo'd key fails
    broken.write_text(COMPOSE.read_text().replace("    stop_grace_period: 40s", "    stop_grace_periods: 40s"))
    assert run([*check, str(broken)], timeout=120).returncode != 0


def test_compose_lint_passes_with_only_reasoned_suppressions() -> None:
    config = RECIPES / "docker" / ".compose-lint.yml"
    proc = run([tool("compose-lint"), "check", "--fail-on", "low", "--strict-config", "--config", str(config),
                "--format", "json", str(COMPOSE)], timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rules = lint_python("import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                        str(config))["rules"]
    for rule, settings in rules.items():
        reasons = [settings.get("reason", "")] if "reason" in settings else list(settings["exclude_services"].values())
        assert all(len(r.split()) >= 8 for r in reasons), f"{rule}: {reasons}"


def _k8s_rendered(tmp_path: Path) -> Path:
    text = re.sub(r"\$\{(AEGRESS_[A-Z_]+)\}", lambda m: K8S_VALUES[m.group(1)], K8S.read_text())  # as envsubst
    out = tmp_path / "gateway.yaml"
    out.write_text(text)
    return out


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_kubernetes_manifest_matches_kubernetes_schemas(tmp_path: Path, version: str) -> None:
    rendered = _k8s_rendered(tmp_path)
    assert "${AEGRESS_" not in rendered.read_text()
    validate = [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version]
    proc = run([*validate, str(rendered)], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.yaml"  # --strict refuses an unknown field
    typo = "  podManagementPolicy: Parallel\n  replica: 2"
    broken.write_text(rendered.read_text().replace("  podManagementPolicy: Parallel", typo))
    assert run([*validate, str(broken)], timeout=120).returncode != 0


def test_kubernetes_manifest_keeps_the_gateway_safe(tmp_path: Path) -> None:
    docs = lint_python("import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
                       str(_k8s_rendered(tmp_path)))
    kinds = {d["kind"]: d for d in docs}
    pod = kinds["StatefulSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["image"].split("@")[1].startswith("sha256:")
    env = {e["name"]: e for e in container["env"]}
    assert env["AEGRESS_DATABASE_URL_FROM"]["value"] == "DATABASE_URL"
    assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]
    assert "secretKeyRef" in env["AEGRESS_REDIS_URL"]["valueFrom"]
    assert env["AEGRESS_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # stable per pod
    assert {"--allow-public-bind", "--allowed-host", "gw.example.com"} <= set(container["args"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "tcpSocket" in container["livenessProbe"]  # a 503 (store down, draining) never restarts the pod
    assert pod["terminationGracePeriodSeconds"] > 20 + 5  # drain grace + preStop
    keys = next(v for v in pod["volumes"] if v["name"] == "keys")
    assert keys["secret"]["defaultMode"] == 0o400
    assert next(m for m in container["volumeMounts"] if m["name"] == "keys")["readOnly"] is True
    paths = {p["path"] for r in kinds["Ingress"]["spec"]["rules"] for p in r["http"]["paths"]}
    assert paths == {"/mcp", "/health", "/.well-known", "/oauth"}
    assert kinds["Ingress"]["spec"]["tls"][0]["hosts"] == ["gw.example.com"]


# -- every file parses; no secret anywhere ----------------------------------------------------------------
PARSE_YAML = """
import json, sys, yaml
for path in sys.argv[1:]:
    list(yaml.safe_load_all(open(path)))
print(json.dumps(len(sys.argv) - 1))
"""

PARSE_BICEP = """
import json, sys
from pathlib import Path
from pycep import BicepParser
print(json.dumps(BicepParser().parse(text=Path(sys.argv[1]).read_text())))
"""


def _bicep() -> dict[str, Any]:
    return dict(lint_python(PARSE_BICEP, str(BICEP)))


def test_every_recipe_file_parses(tmp_path: Path) -> None:
    files = _recipe_files()
    yamls = [str(p) for p in files if p.suffix in (".yaml", ".yml")]
    assert lint_python(PARSE_YAML, *yamls) == len(yamls) >= 3
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text())
        if path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")
    assert {"parameters", "resources", "outputs"} <= set(_bicep())
    assert _balanced(BICEP.read_text())
    env = {**os.environ, "AEGRESS_PUBLIC_HOST": "gw.example.com", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path)}
    adapted = run([tool("caddy"), "adapt", "--config", str(CADDYFILE), "--adapter", "caddyfile"], env=env, timeout=60)
    assert adapted.returncode == 0, adapted.stderr
    assert json.loads(adapted.stdout)["apps"]["http"]["servers"]
    assert dockerfile_stages(DOCKERFILE.read_text())


def _balanced(text: str) -> bool:
    """Pure: braces and brackets balance outside Bicep strings and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in text:
        if ch in "([{":
            depth.append(ch)
        elif ch in pairs and (not depth or depth.pop() != pairs[ch]):
            return False
    return not depth


def test_no_recipe_or_runbook_holds_a_secret_value() -> None:
    assert secret_findings("DATABASE_URL=postgresql://aegress:hunter2hunter2@db/aegress")  # the scanner works
    assert secret_findings("key: " + "ab" * 32)
    assert not secret_findings("DATABASE_URL: postgresql://aegress:${AEGRESS_DB_PASSWORD:?set it}@postgres:5432/a")
    for path in [*_recipe_files(), *DOCS]:
        assert path.exists(), path
        assert not secret_findings(path.read_text()), f"{path.relative_to(ROOT)}: {secret_findings(path.read_text())}"


def test_dockerfile_final_stage_is_non_root_healthy_and_signal_ready() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    assert len(stages) >= 2, "multi-stage: the build happens in its own stage"
    final = stages[-1]
    words = [w for w, _ in final]
    user = [rest for w, rest in final if w == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), user
    (health,) = [rest for w, rest in final if w == "HEALTHCHECK"]
    assert "/health" in health and " CMD [" in f" {health}"
    assert [rest for w, rest in final if w == "STOPSIGNAL"] in ([], ["SIGTERM"])
    for word in ("ENTRYPOINT", "CMD"):  # exec form: SIGTERM reaches tini, which hands it to the gateway
        (value,) = [rest for w, rest in final if w == word]
        assert isinstance(json.loads(value), list), value
    assert json.loads(next(r for w, r in final if w == "ENTRYPOINT"))[0] == "/usr/bin/tini"
    installs = " ".join(rest for w, rest in final if w == "RUN")
    for banned in ("gcc", "g++", "build-essential", "make ", "python3-dev", "libpq-dev", "python3-venv", "pip install"):
        assert banned not in installs, banned
    assert words.index("USER") > max(i for i, w in enumerate(words) if w in ("RUN", "COPY"))
    for w, rest in (i for stage in stages for i in stage):  # nothing secret baked in
        if w in ("ENV", "ARG"):
            assert not re.search(r"(?i)(password|secret|token|master_key)\S*=", rest), rest


KNOWN_RECIPE_ONLY = {
    # read by the recipes' own tools, not by the gateway
    "AEGRESS_PUBLIC_HOST", "AEGRESS_UPSTREAM", "AEGRESS_IMAGE", "AEGRESS_IMAGE_DIGEST", "AEGRESS_INGRESS_CLASS",
    "AEGRESS_INGRESS_NAMESPACE", "AEGRESS_DB_PASSWORD", "AEGRESS_VALKEY_PASSWORD",
    "AEGRESS_CONTROL_PLANE_URL", "AEGRESS_CONTROL_PLANE_TOKEN", "AEGRESS_CONTROL_PLANE_TOKEN_FILE",
}


def test_recipes_only_set_variables_that_something_reads() -> None:
    """A typo'd AEGRESS_* name would be ignored silently by the gateway: every one the recipes set is read by
    gateway/ or aegress_cli/, or is one of the recipes' own (Caddy, compose, envsubst, ship-checkpoint.py)."""
    source = "\n".join(p.read_text() for d in ("gateway", "aegress_cli") for p in (ROOT / d).rglob("*.py"))
    shipped = (RECIPES / "docker" / "ship-checkpoint.py").read_text()
    used = {n for p in _recipe_files() for n in re.findall(r"\bAEGRESS_[A-Z_]+\b", p.read_text())}
    assert {"AEGRESS_MASTER_KEY_FILE", "AEGRESS_DATABASE_URL_FROM", "AEGRESS_REDIS_URL"} <= used
    for name in sorted(used):
        assert name in source or (name in KNOWN_RECIPE_ONLY and (name in shipped or not name.startswith(
            "AEGRESS_CONTROL"))), f"{name} is set by a recipe but read by nothing"


def test_bicep_reads_every_secret_from_key_vault() -> None:
    bicep = _bicep()
    app = next(r for r in bicep["resources"].values() if r["type"] == "Microsoft.App/containerApps")
    config = app["config"]["properties"]["configuration"]
    secrets = config["secrets"]
    assert secrets and all(set(s) == {"name", "keyVaultUrl", "identity"} for s in secrets), secrets
    ingress = config["ingress"]
    assert ingress["external"] is True and ingress["allowInsecure"] is False and ingress["targetPort"] == 8765
    template = app["config"]["properties"]["template"]
    (container,) = template["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AEGRESS_DATABASE_URL_FROM"]["value"] == "DATABASE_URL" and "secretRef" in env["DATABASE_URL"]
    assert "secretRef" in env["AEGRESS_REDIS_URL"] and "value" not in env["AEGRESS_REDIS_URL"]
    assert env["AEGRESS_CHECKPOINT_HOOK"]["value"] == "/opt/aegress/bin/aegress-ship-checkpoint"
    probes = {p["type"]: p for p in container["probes"]}
    assert probes["Readiness"]["httpGet"]["path"] == "/health" and "tcpSocket" in probes["Liveness"]
    keys = next(v for v in template["volumes"] if v["name"] == "keys")
    assert keys["storageType"] == "Secret"
    assert {s["path"] for s in keys["secrets"]} == {"master.key", "audit-signing.key", "control-plane.token"}
    assert template["scale"]["rules"][0]["http"]["metadata"]["concurrentRequests"]
    params = bicep["parameters"]
    assert not any("secure" in json.dumps(p.get("decorators", [])).lower() for p in params.values()), \
        "no secret is a parameter: every one is a Key Vault reference"


# -- real programs ------------------------------------------------------------------------------------------
def _init(client: httpx2.Client, url: str, token: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT, "Content-Type": "application/json"}
    r = client.post(url, content=json.dumps(INIT), headers=headers)
    assert r.status_code == 200, r.text
    assert answer(r)["result"]["serverInfo"]["name"] == "aegress"
    return {**headers, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}


def test_caddy_terminates_tls_in_front_of_the_gateway(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = setup_tenant(home, "acme", "alice")
    https, http_port = free_port(), free_port()
    public = f"localhost:{https}"
    # the recipe's Caddyfile, bound to loopback for this test only (a shared machine)
    caddyfile = tmp_path / "Caddyfile"
    site = "{$AEGRESS_PUBLIC_HOST} {\n"
    caddyfile.write_text(CADDYFILE.read_text().replace(site, site + "\tbind 127.0.0.1\n", 1))
    assert "bind 127.0.0.1" in caddyfile.read_text()
    with run_gateway(home, "--allowed-host", public) as gw:
        upstream = gw.url.removeprefix("http://").removesuffix("/mcp")
        env = {**os.environ, "AEGRESS_PUBLIC_HOST": public, "AEGRESS_UPSTREAM": upstream,
               "CADDY_HTTPS_PORT": str(https), "CADDY_HTTP_PORT": str(http_port), "HOME": str(tmp_path),
               "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
        caddy_log = (tmp_path / "caddy.log").open("w")
        caddy = subprocess.Popen([tool("caddy"), "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=caddy_log, start_new_session=True)
        try:
            root_ca = tmp_path / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not root_ca.exists():
                assert caddy.poll() is None, (tmp_path / "caddy.log").read_text()[-3000:]
                time.sleep(0.2)
            assert root_ca.exists(), (tmp_path / "caddy.log").read_text()[-3000:]
            with httpx2.Client(verify=ssl.create_default_context(cafile=str(root_ca)), timeout=30) as client:
                base = f"https://{public}"
                for _ in range(100):  # bounded: Caddy may still be issuing its certificate
                    try:
                        health = client.get(f"{base}/health")
                        break
                    except httpx2.TransportError:
                        time.sleep(0.2)
                assert health.status_code == 200 and health.json()["ready"] is True
                assert health.headers["strict-transport-security"].startswith("max-age=")
                session = _init(client, f"{base}/mcp", token)
                listed = client.post(f"{base}/mcp", headers=session,
                                     content=json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
                assert listed.status_code == 200 and "tools" in answer(listed)["result"]
                assert client.get(f"{base}/elsewhere").status_code == 404  # only the gateway's paths
                wrong_host = client.post(f"{base}/mcp", content=json.dumps(INIT),
                                         headers={**session, "Host": "evil.example"})
                # a foreign Host matches no site: Caddy answers (empty) itself and the gateway never sees it
                assert not wrong_host.content and "mcp-session-id" not in wrong_host.headers
            plain = httpx2.get(f"http://127.0.0.1:{http_port}/mcp", headers={"Host": public}, timeout=10)
            assert plain.status_code in (301, 308) and plain.headers["location"].startswith("https://")
        finally:
            caddy.terminate()
            try:
                caddy.wait(15)
            except subprocess.TimeoutExpired:
                caddy.kill()
                caddy.wait(5)
            caddy_log.close()


def _key_file(path: Path, mode: int, text: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else os.urandom(32).hex() + "\n")
    path.chmod(mode)
    return path


def test_replicas_share_the_mounted_master_key(tmp_path: Path, pg_database: Any) -> None:
    """Two data dirs, one database, one mounted key: a token the operator issues from one verifies on a gateway
    serving from the other; a world-readable key on a writable disk stops the gateway with a hint."""
    key = _key_file(tmp_path / "mounted" / "master.key", 0o400)
    env = {"AEGRESS_DATABASE_URL": pg_database.schema_url(), "AEGRESS_MASTER_KEY_FILE": str(key)}
    operator = tmp_path / "operator"
    token = setup_tenant_with(operator, env)
    assert not (operator / "secrets" / "master.key").exists()
    with run_gateway(tmp_path / "replica", env=env) as gw, httpx2.Client(timeout=30) as client:
        _init(client, gw.url, token)
        assert not (tmp_path / "replica" / "secrets" / "master.key").exists()
    key.chmod(0o644)
    refused = aegress(tmp_path / "replica", "serve", "--port", "0", check=False, timeout=60, **env)
    assert refused.returncode == 1
    assert "AEGRESS_MASTER_KEY_FILE" in refused.stderr and "chmod 400" in refused.stderr
    assert key.read_text().strip() not in refused.stderr + refused.stdout


# -- the image ----------------------------------------------------------------------------------------------
class _Receiver(http.server.BaseHTTPRequestHandler):
    """The operator's control plane, as far as the checkpoint hook can tell."""

    received: ClassVar[list[tuple[dict[str, str], str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        self.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def control_plane() -> Iterator[tuple[str, list[tuple[dict[str, str], str]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    received: list[tuple[dict[str, str], str]] = []
    server.RequestHandlerClass = type("Receiver", (_Receiver,), {"received": received})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/checkpoints", received
    finally:
        server.shutdown()
        server.server_close()


SLOW_CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
             "params": {"name": "web__slow", "arguments": {"seconds": 3}}}
KEYGEN = ("from gateway.audit.keys import format_private_key, generate_signing_key; "
          "print(format_private_key(generate_signing_key('gw.example.com')), end='')")


def _wait_healthy(docker: Docker, name: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = docker("inspect", "--format", "{{.State.Health.Status}}", name, check=False).stdout.strip()
        if status == "healthy":
            return
        if docker("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip() != "true":
            break
        time.sleep(1)
    logs = docker("logs", name, check=False)
    raise AssertionError(f"container {name} is {status!r}:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_builds_runs_non_root_and_drains_on_sigterm(tmp_path: Path, pg_database: Any,
                                                          control_plane: tuple[str, list[Any]]) -> None:
    if not BASE_TAR.exists():
        pytest.fail(f"no Debian base at {BASE_TAR} ({INSTALL_HINT})")
    cp_url, received = control_plane
    with private_dockerd() as docker:
        base = "aegress-test/debian:bookworm-minbase"
        docker("import", str(BASE_TAR), base, timeout=300)
        build = docker("build", "--network=host", "-f", str(DOCKERFILE), "--build-arg", f"BASE_IMAGE={base}",
                       "--secret", "id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt", "-t", "aegress:test",
                       str(ROOT), timeout=1200, check=False)
        assert build.returncode == 0, build.stdout[-6000:] + build.stderr[-6000:]

        # what the image is: non-root, no compilers, the virtualenv only
        probe = docker("run", "--rm", "--network=none", "--entrypoint", "sh", "aegress:test", "-c",
                       "id -u; id -g; for c in gcc cc g++ make; do command -v $c; done; ls /src 2>&1; true").stdout
        assert probe.splitlines()[:2] == ["10001", "10001"], probe
        assert "/usr/bin/gcc" not in probe and "/usr/bin/make" not in probe and "No such file" in probe

        # keys as the recipes make them: the signing key with the image's own library, mounted read-only
        # with modes a platform would use (0444 on a read-only mount is accepted; 0600 stays for the host CLI)
        signing_text = docker("run", "--rm", "--network=none", "--entrypoint", "/opt/aegress/bin/python",
                              "aegress:test", "-c", KEYGEN).stdout
        assert signing_text.startswith("PRIVATE+KEY+gw.example.com+")
        master_hex = os.urandom(32).hex() + "\n"
        mounts = tmp_path / "secrets"
        _key_file(mounts / "master.key", 0o444, master_hex)
        _key_file(mounts / "audit-signing.key", 0o444, signing_text)
        _key_file(mounts / "control-plane.token", 0o444, "cp-test-token\n")
        host_key = _key_file(tmp_path / "operator-key" / "master.key", 0o600, master_hex)

        db_url = pg_database.schema_url()
        operator = tmp_path / "operator"
        cli_env = {"AEGRESS_DATABASE_URL": db_url, "AEGRESS_MASTER_KEY_FILE": str(host_key)}
        token = setup_tenant_with(operator, cli_env)
        port = free_port()
        with run_http_upstream("web") as (web_url, _):
            aegress(operator, "upstream", "add", "--tenant", "acme", "web", "--url", web_url, "--allow-private",
                    **cli_env)
            container = "aegress-gw-test"
            docker("run", "-d", "--name", container, "--network=host", "--read-only", "--cap-drop=ALL",
                   "--security-opt=no-new-privileges", "--tmpfs", "/tmp",
                   "--tmpfs", "/var/lib/aegress:uid=10001,gid=10001,mode=0700",
                   "-v", f"{mounts}:/run/secrets/aegress:ro",
                   "-e", "AEGRESS_HOST=127.0.0.1", "-e", f"AEGRESS_PORT={port}",
                   "-e", "AEGRESS_DATABASE_URL_FROM=DATABASE_URL", "-e", f"DATABASE_URL={db_url}",
                   "-e", "AEGRESS_REDIS_URL=redis://127.0.0.1:6379/0", "-e", "AEGRESS_REPLICA_ID=gw-0",
                   "-e", "AEGRESS_MASTER_KEY_FILE=/run/secrets/aegress/master.key",
                   "-e", "AEGRESS_SIGNING_KEY_FILE=/run/secrets/aegress/audit-signing.key",
                   "-e", "AEGRESS_CHECKPOINT_INTERVAL=1", "-e", "AEGRESS_DRAIN_GRACE=15",
                   "-e", "AEGRESS_CHECKPOINT_HOOK=/opt/aegress/bin/aegress-ship-checkpoint",
                   "-e", f"AEGRESS_CONTROL_PLANE_URL={cp_url}",
                   "-e", "AEGRESS_CONTROL_PLANE_TOKEN_FILE=/run/secrets/aegress/control-plane.token",
                   "--health-interval=1s", "aegress:test", "serve", "--allow-public-bind",
                   "--allowed-host", f"127.0.0.1:{port}")
            try:
                _wait_healthy(docker, container)
                url = f"http://127.0.0.1:{port}/mcp"
                with httpx2.Client(timeout=30) as client:
                    session = _init(client, url, token)  # a token issued outside the container verifies inside
                    names = [t["name"] for t in answer(client.post(url, headers=session, content=json.dumps(
                        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})))["result"]["tools"]]
                    assert "web__slow" in names
                pubkey = docker("exec", container, "aegress", "audit", "pubkey").stdout.strip()
                assert pubkey == parse_private_key(signing_text).verifier_key  # the mounted key signs

                async def call_then_stop() -> tuple[httpx2.Response, subprocess.CompletedProcess[str]]:
                    async with httpx2.AsyncClient(timeout=60) as http:
                        call = asyncio.ensure_future(http.post(url, headers=session, content=json.dumps(SLOW_CALL)))
                        await asyncio.sleep(1.0)  # in flight
                        stop = await asyncio.to_thread(docker, "stop", "-t", "40", container, timeout=60)
                        return await call, stop

                started = time.monotonic()
                response, _ = asyncio.run(asyncio.wait_for(call_then_stop(), 90))
                assert time.monotonic() - started < 30  # drained, not killed at the 40 s stop timeout
                assert response.status_code == 200 and answer(response)["result"]["content"][0]["text"], response.text
                state = docker("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", container).stdout
                assert state.split() == ["0", "false"], state  # SIGTERM reached the gateway through tini
                logs = docker("logs", container).stdout + docker("logs", container).stderr
                assert "draining 1 calls" in logs and "drained: 1 completed, 0 cut" in logs, logs[-3000:]
                assert master_hex.strip() not in logs and "cp-test-token" not in logs
            finally:
                docker("rm", "-f", container, check=False)
        # evidence left one way: signed checkpoints, to the operator's control plane, with its token
        assert received, "no checkpoint reached the control plane"
        headers, note = received[-1]
        assert headers["Authorization"] == "Bearer cp-test-token"
        assert headers["Aegress-Checkpoint-Origin"] and note.splitlines()[0] == headers["Aegress-Checkpoint-Origin"]
        assert "— gw.example.com " in note  # signed with the mounted key
        # the operator checks every log with the deployment's verifier key, and a tenant's log against the
        # checkpoint the control plane holds (outside the database)
        verify = aegress(operator, "audit", "verify", "--all", "--key", pubkey, check=False, **cli_env)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        held = tmp_path / "held.note"
        origin, note = next((h["Aegress-Checkpoint-Origin"], n) for h, n in reversed(received)
                            if h["Aegress-Checkpoint-Origin"].endswith("/tenant/acme"))
        held.write_text(note)
        against = aegress(operator, "audit", "verify", "--tenant", "acme", "--key", pubkey, "--against", str(held),
                          check=False, **cli_env)
        assert against.returncode == 0 and origin, against.stdout + against.stderr


def setup_tenant_with(home: Path, env: dict[str, str]) -> str:
    """setup_tenant with the database and key settings of the deployment (the operator's side)."""
    aegress(home, "tenant", "create", "acme", **env)
    aegress(home, "actor", "add", "--tenant", "acme", "alice", **env)
    allow_all_with(home, env)
    return str(json.loads(aegress(home, "token", "issue", "--tenant", "acme", "--actor", "alice", "--json",
                                  **env).stdout)["token"])


def allow_all_with(home: Path, env: dict[str, str]) -> None:
    path = home.parent / "allow-all.toml"
    path.write_text(ALLOW_ALL_POLICY)
    aegress(home, "policy", "apply", str(path), "--tenant", "acme", "--yes", **env)

