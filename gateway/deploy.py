"""Deployment paths: the five ways to run Aegress, their recipe files, and a recipe rendered with the
operator's values (`aegress deploy list` / `aegress deploy render`).

A recipe is the files under `recipes/<dir>/` for its path. Operator values go into `${AEGRESS_NAME}`
placeholders (the same spelling shells, compose files and `.env` files read from the environment, so an
unrendered recipe still works with the values exported). Rendering fills the placeholders it is given
and leaves the others; it never writes a secret: a secret's placeholder stays for the deploy-time secret
store, and a secret passed as a value is refused.

Where the recipes are: the package carries them as data (`gateway/_recipes`, a symlink to the checkout's
top-level `recipes/` that the wheel build copies in), so a checkout and an installed package find them
the same way; AEGRESS_RECIPES_DIR points elsewhere (tests, a customised copy).

Pure: the path table, `parse_values`, `looks_secret`, `render`. Edges: `recipes_root`, `read_recipe`,
`write_rendered`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gateway.errors import AlreadyExists, InvalidInput, NotFound, UsageError

PLACEHOLDER = re.compile(r"\$\{(AEGRESS_[A-Z0-9_]+)\}")
RECIPES_ENV = "AEGRESS_RECIPES_DIR"


@dataclass(frozen=True)
class DeployPath:
    name: str
    title: str
    runtime: str
    tenant_binding: str
    client_transport: str
    boundary: str
    recommended: bool
    files: tuple[str, ...]
    """The recipe's required files, relative to `recipes/`; every other file in `dirs` is copied too."""
    dirs: tuple[str, ...]
    runbook: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "title": self.title, "runtime": self.runtime,
                "tenant_binding": self.tenant_binding, "client_transport": self.client_transport,
                "boundary": self.boundary, "recommended": self.recommended,
                "recipe_files": [f"recipes/{f}" for f in self.files], "runbook": self.runbook}


PATHS: tuple[DeployPath, ...] = (
    DeployPath(
        "managed", "Aegress managed (SaaS)",
        runtime="Aegress runs the gateway, Postgres and the evidence store; nothing to host",
        tenant_binding="one team endpoint; every token bound to one tenant and one actor (OAuth consent: "
                       "issue 13, not built yet)",
        client_transport="Streamable HTTP, every protocol revision, SSE streams",
        boundary="Aegress's cloud; the tenant's upstreams are reached over the internet",
        recommended=True,
        files=("managed/README.md", "managed/onboard.sh", "managed/policy.toml"), dirs=("managed",),
        runbook="docs/operations/aegress-managed-saas.md"),
    DeployPath(
        "tunnel", "Private MCP tunnel",
        runtime="aegress serve --ingress tunnel on a private host, beside an outbound tunnel client",
        tenant_binding="a gateway token bound to one tenant and one actor (MCP_AUTH_MODE=bearer)",
        client_transport="Streamable HTTP through the tunnel",
        boundary="the customer's network; nothing listens inbound",
        recommended=False,
        files=("tunnel/README.md",), dirs=("tunnel",), runbook="docs/operations/tunnel.md"),
    DeployPath(
        "docker", "Docker container (VM, compose, Kubernetes)",
        runtime="aegress serve in a container, with Postgres and Valkey; a Kubernetes sketch",
        tenant_binding="bearer tokens, each bound to one tenant and one actor",
        client_transport="Streamable HTTP with SSE, TLS at a reverse proxy",
        boundary="the customer's VM or cluster",
        recommended=False,
        files=("docker/Dockerfile", "docker/gateway.compose.yaml", "docker/README.md", "kubernetes/README.md"),
        dirs=("docker", "kubernetes"), runbook="docs/operations/docker.md"),
    DeployPath(
        "azure", "Azure Container Apps",
        runtime="a Container App running aegress serve, with Azure Postgres and Redis",
        tenant_binding="bearer tokens, each bound to one tenant and one actor",
        client_transport="Streamable HTTP with SSE over HTTPS ingress",
        boundary="the customer's Azure tenant; evidence shipped to the operator's control plane only",
        recommended=False,
        files=("azure/gateway-container-app.bicep", "azure/README.md"), dirs=("azure",),
        runbook="docs/operations/azure-container-apps.md"),
    DeployPath(
        "aws-lambda", "AWS Lambda container (short calls only)",
        runtime="a Lambda container image (Mangum) with RDS Postgres; Function URL or API Gateway",
        tenant_binding="bearer tokens, each bound to one tenant and one actor",
        client_transport="Streamable HTTP, JSON responses only: no SSE, no GET stream, no sampling or "
                         "elicitation",
        boundary="the customer's AWS account (VPC for RDS and ElastiCache)",
        recommended=False,
        files=("aws/Dockerfile", "aws/template.yaml", "aws/parameters.json", "aws/README.md"), dirs=("aws",),
        runbook="docs/operations/aws-lambda.md"),
)


def find_path(name: str) -> DeployPath:
    for path in PATHS:
        if path.name == name:
            return path
    raise UsageError(f"No deploy path named {name!r}.", hint="One of: " + ", ".join(p.name for p in PATHS) + ".",
                     code="unknown-path")


# -- values -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Value:
    key: str
    help: str
    secret: bool = False


VALUES: tuple[Value, ...] = (
    Value("AEGRESS_PUBLIC_URL", "the MCP URL clients use, e.g. https://mcp.example.com/mcp"),
    Value("AEGRESS_PUBLIC_HOST", "its host name (taken from AEGRESS_PUBLIC_URL when not given)"),
    Value("AEGRESS_IMAGE", "the gateway's container image reference"),
    Value("AEGRESS_DATABASE_HOST", "the Postgres host name"),
    Value("AEGRESS_DATABASE_NAME", "the Postgres database name"),
    Value("AEGRESS_TENANT_ID", "the tenant id"),
    Value("AEGRESS_ACTOR_ID", "the first actor (person) of the tenant"),
    Value("AEGRESS_REPLICAS", "how many gateway replicas to run"),
    Value("AEGRESS_REGION", "the cloud region"),
    Value("AEGRESS_UPSTREAM_NAME", "the name of the tenant's first upstream MCP server"),
    Value("AEGRESS_UPSTREAM_URL", "its URL"),
    Value("AEGRESS_SUBNET_IDS", "AWS: subnets of the function (comma-separated), for RDS/ElastiCache"),
    Value("AEGRESS_SECURITY_GROUP_IDS", "AWS: security groups of the function (comma-separated)"),
    Value("AEGRESS_ENDPOINT_TYPE", "AWS: function-url or http-api"),
    Value("AEGRESS_MASTER_KEY_SECRET_ARN", "AWS: the Secrets Manager secret holding the master key (a reference)"),
    Value("AEGRESS_SIGNING_KEY_SECRET_ARN", "AWS: the secret holding the audit signing key (a reference)"),
    Value("AEGRESS_DATABASE_URL_SECRET_ARN", "AWS: the secret holding the database URL or RDS JSON (a reference)"),
    Value("AEGRESS_MASTER_KEY", "the master key", secret=True),
    Value("AEGRESS_SIGNING_KEY", "the audit signing key", secret=True),
    Value("AEGRESS_DATABASE_URL", "the database URL (holds its password)", secret=True),
    Value("AEGRESS_DATABASE_PASSWORD", "the database password", secret=True),
    Value("AEGRESS_REDIS_URL", "the Redis/Valkey URL (may hold a password)", secret=True),
    Value("AEGRESS_MCP_GATEWAY_TOKEN", "a client's bearer token", secret=True),
    Value("AEGRESS_TUNNEL_TOKEN", "a tunnel provider's token", secret=True),
)
_BY_KEY = {v.key: v for v in VALUES}
_SECRET_WORDS = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE|CREDENTIAL|_KEY$)")
_REFERENCE = re.compile(r"_(SECRET_ARN|SECRET_NAME|SECRET_ID|KEY_VAULT_REF)$")
_UNSAFE = frozenset("\"'`$\\")
"""Characters a value may not hold: they would end a quoted string or expand in a shell, YAML or JSON file."""


def is_secret_key(key: str) -> bool:
    """Pure: a value that must never be written into a recipe (a reference to a secret is not one)."""
    known = _BY_KEY.get(key)
    if known is not None:
        return known.secret
    return bool(_SECRET_WORDS.search(key)) and not _REFERENCE.search(key)


def looks_secret(value: str) -> str | None:
    """Pure: why `value` looks like a secret (so it is refused), or None."""
    if re.search(r"\baeg_[A-Za-z0-9]{20,}", value):
        return "it holds an Aegress token"
    if "PRIVATE+KEY+" in value or "-----BEGIN" in value:
        return "it holds a private key"
    if re.search(r"[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@", value):
        return "it is a URL with a password"
    if re.fullmatch(r"[0-9a-fA-F]{64,}", value.strip()):
        return "it looks like a key (64 or more hex digits)"
    return None


def normalise_key(key: str) -> str:
    """`public-url` and `AEGRESS_PUBLIC_URL` name the same value."""
    key = key.strip().upper().replace("-", "_")
    return key if key.startswith("AEGRESS_") else "AEGRESS_" + key


def parse_values(pairs: Iterable[str], given: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Pure: `KEY=VALUE` pairs plus named options into checked values. Refuses secrets (by name or by look),
    a malformed pair, a public URL that is not http(s) and a replica count that is not a positive number."""
    values: dict[str, str] = {}
    for key, value in (given or {}).items():
        if value is not None:
            values[normalise_key(key)] = value
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, not {pair.split('=')[0][:40]!r}.", code="usage")
        values[normalise_key(key)] = value
    for key, value in values.items():
        if not re.fullmatch(r"AEGRESS_[A-Z0-9_]+", key):
            raise UsageError(f"{key[:60]!r} is not a value name.", hint="Names are letters, digits and _ or -.",
                             code="usage")
        bad = sorted(set(value) & _UNSAFE)
        if bad or any(ord(c) < 32 for c in value):
            raise InvalidInput(f"The value of {key} holds a character recipes cannot take unquoted "
                               f"({' '.join(repr(c) for c in bad) or 'a control character'}).",
                               hint="Values go into shell, YAML and JSON files as they are.", code="invalid-input")
        if is_secret_key(key):
            raise InvalidInput(f"{key} is a secret and is never written into a recipe.",
                               hint="Leave its placeholder; give the secret to the platform's secret store at "
                               "deploy time (the recipe's README says where).", code="secret-value")
        why = looks_secret(value)
        if why is not None:
            raise InvalidInput(f"The value of {key} is refused: {why}.",
                               hint="Recipes never hold secrets; keep it in the platform's secret store and "
                               "pass a reference.", code="secret-value")
    url = values.get("AEGRESS_PUBLIC_URL")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise InvalidInput(f"AEGRESS_PUBLIC_URL must be an https:// URL, not {url[:80]!r}.", code="invalid-input")
        values.setdefault("AEGRESS_PUBLIC_HOST", parts.hostname)
    replicas = values.get("AEGRESS_REPLICAS")
    if replicas is not None and not (replicas.isdigit() and int(replicas) > 0):
        raise InvalidInput(f"AEGRESS_REPLICAS must be a positive whole number, not {replicas[:20]!r}.",
                           code="invalid-input")
    return values


# -- rendering ----------------------------------------------------------------------------------------------
@dataclass
class Rendered:
    """What `render` made: each file's new content (bytes for a file that is not text) and what it filled."""

    files: dict[str, str | bytes] = field(default_factory=dict)
    filled: dict[str, list[str]] = field(default_factory=dict)  # key -> files it went into
    unfilled: dict[str, list[str]] = field(default_factory=dict)  # placeholders left, non-secret
    secrets: dict[str, list[str]] = field(default_factory=dict)  # secret placeholders left for deploy time


def placeholders(text: str) -> list[str]:
    return sorted(set(PLACEHOLDER.findall(text)))


def render(files: Mapping[str, str | bytes], values: Mapping[str, str]) -> Rendered:
    """Pure: fill `${AEGRESS_NAME}` placeholders with `values`; refuse a value no file uses (a typo)."""
    out = Rendered()
    used: set[str] = set()
    for rel in sorted(files):
        content = files[rel]
        if isinstance(content, bytes):
            out.files[rel] = content
            continue
        for key in placeholders(content):
            used.add(key)
            target = out.filled if key in values else out.secrets if is_secret_key(key) else out.unfilled
            target.setdefault(key, []).append(rel)
        out.files[rel] = PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), content)
    one_value = {"AEGRESS_PUBLIC_HOST"} | ({"AEGRESS_PUBLIC_URL"} if "AEGRESS_PUBLIC_HOST" in used else set())
    unknown = sorted(k for k in values if k not in used and k not in one_value)  # the URL fills the host too
    if unknown:
        raise UsageError(f"No file of this recipe uses {', '.join(unknown)}.",
                         hint="Its values are: " + (", ".join(sorted(used)) or "none") + ".", code="unknown-value")
    return out


# -- edges: reading and writing files -------------------------------------------------------------------------
def recipes_root() -> Path:
    """AEGRESS_RECIPES_DIR, else the recipes packaged with `gateway` (the checkout's `recipes/`)."""
    configured = os.environ.get(RECIPES_ENV)
    if configured:
        return Path(configured)
    packaged = Path(__file__).resolve().parent / "_recipes"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "recipes"


def recipe_status(path: DeployPath, root: Path) -> tuple[list[str], list[str]]:
    """(present, missing) required files of a path's recipe."""
    present = [f for f in path.files if (root / f).is_file()]
    return present, [f for f in path.files if f not in present]


def read_recipe(path: DeployPath, root: Path) -> dict[str, str | bytes]:
    """Every file under the path's recipe folders (text as str, anything else as bytes); NotFound naming
    exactly which required files are missing."""
    _, missing = recipe_status(path, root)
    if missing:
        raise NotFound(f"The {path.name} recipe is missing {len(missing)} file(s): "
                       + ", ".join(f"recipes/{m}" for m in missing) + f" (looked in {root}).",
                       hint=f"Restore them, or point {RECIPES_ENV} at a recipes folder that has them.",
                       code="recipe-files-missing")
    files: dict[str, str | bytes] = {}
    for folder in path.dirs:
        base = root / folder
        for file in sorted(base.rglob("*")):
            if not file.is_file() or "__pycache__" in file.parts:
                continue
            raw = file.read_bytes()
            try:
                files[file.relative_to(root).as_posix()] = raw.decode("utf-8")
            except UnicodeDecodeError:
                files[file.relative_to(root).as_posix()] = raw
    return files


def write_rendered(rendered: Rendered, out: Path, root: Path, *, force: bool = False) -> list[Path]:
    """Write every file under `out`, keeping the source's executable bit. Nothing is written when a file
    exists already, unless `force`."""
    targets = {rel: out / rel for rel in rendered.files}
    existing = [t for t in targets.values() if t.exists()]
    if existing and not force:
        shown = ", ".join(str(t) for t in existing[:5]) + (" ..." if len(existing) > 5 else "")
        raise AlreadyExists(f"{len(existing)} file(s) exist already: {shown}. Nothing was written.",
                            hint="Pass --force to overwrite them, or choose another --out.", code="output-exists")
    written: list[Path] = []
    for rel, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        content = rendered.files[rel]
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        target.write_bytes(data)
        source = root / rel
        mode = 0o755 if source.exists() and os.access(source, os.X_OK) else 0o644
        target.chmod(mode)
        written.append(target)
    return written
