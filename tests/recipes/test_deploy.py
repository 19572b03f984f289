"""`aegress deploy list` and `aegress deploy render` as real processes, and the commands the runbooks give."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.procs import ROOT, aegress

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:aegress/{}-AbCdEf"


def _deploy(home: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    return aegress(home, "deploy", *args, check=check, **env)


def test_list_shows_the_five_paths(aegress_home: Path) -> None:
    rows = json.loads(_deploy(aegress_home, "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["managed", "tunnel", "docker", "azure", "aws-lambda"]
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows if r["recommended"]] == ["managed"]
    for row in rows:
        assert {"runtime", "tenant_binding", "client_transport", "boundary", "recipe_files", "runbook"} <= set(row)
    assert by_name["aws-lambda"]["recipe_files"] == ["recipes/aws/Dockerfile", "recipes/aws/template.yaml",
                                                     "recipes/aws/parameters.json", "recipes/aws/README.md"]
    assert by_name["aws-lambda"]["recipe_files_missing"] == []
    assert by_name["managed"]["recipe_files_missing"] == []
    assert "JSON responses only" in by_name["aws-lambda"]["client_transport"]
    text = _deploy(aegress_home, "list").stdout
    assert "managed (recommended)" in text and "docs/operations/aws-lambda.md" in text


def test_render_fills_the_lambda_recipe(aegress_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "deploy"
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/aegress@sha256:" + "0" * 63 + "1"
    result = json.loads(_deploy(
        aegress_home, "render", "aws-lambda", "--out", str(out), "--image", image, "--replicas", "12",
        "--set", "region=eu-west-1", "--set", "endpoint-type=http-api",
        "--set", f"master-key-secret-arn={ARN.format('master-key')}",
        "--set", f"signing-key-secret-arn={ARN.format('signing-key')}",
        "--set", f"database-url-secret-arn={ARN.format('database-url')}",
        "--set", "subnet-ids=subnet-0a,subnet-0b", "--set", "security-group-ids=sg-0c", "--json").stdout)
    assert sorted(Path(f).relative_to(out).as_posix() for f in result["files"]) == [
        "aws/Dockerfile", "aws/README.md", "aws/parameters.json", "aws/template.yaml"]
    assert result["unfilled"] == {} and result["secrets"] == {}
    params = {p["ParameterKey"]: p["ParameterValue"] for p in json.loads((out / "aws" / "parameters.json").read_text())}
    assert params["ImageUri"] == image and params["ReservedConcurrency"] == "12"
    assert params["SubnetIds"] == "subnet-0a,subnet-0b" and params["EndpointType"] == "http-api"
    assert (out / "aws" / "template.yaml").read_text() == (ROOT / "recipes" / "aws" / "template.yaml").read_text()
    assert "--region eu-west-1" in (out / "aws" / "README.md").read_text()
    for file in (out / "aws").iterdir():
        assert "${AEGRESS_" not in file.read_text(), file
        assert stat.S_IMODE(file.stat().st_mode) == 0o644

    again = _deploy(aegress_home, "render", "aws-lambda", "--out", str(out), "--replicas", "3", check=False)
    assert again.returncode == 1 and "exist already" in again.stderr and "--force" in again.stderr
    assert json.loads((out / "aws" / "parameters.json").read_text())[-1]["ParameterValue"] == "12"  # untouched
    _deploy(aegress_home, "render", "aws-lambda", "--out", str(out), "--replicas", "3", "--force")
    assert json.loads((out / "aws" / "parameters.json").read_text())[-1]["ParameterValue"] == "3"


@pytest.mark.parametrize("pair", ["database-url=postgresql://aegress:pw@db/aegress", "region=aeg_" + "Z" * 40])
def test_render_refuses_secrets(aegress_home: Path, tmp_path: Path, pair: str) -> None:
    result = _deploy(aegress_home, "render", "aws-lambda", "--out", str(tmp_path / "o"), "--set", pair, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "Hint: " in result.stderr
    assert "pw@" not in result.stderr and "Z" * 40 not in result.stderr
    assert not (tmp_path / "o").exists()


def test_render_names_the_missing_files_of_a_recipe(aegress_home: Path, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    (recipes / "docker").mkdir(parents=True)
    (recipes / "docker" / "Dockerfile").write_text("FROM ${AEGRESS_IMAGE}\n")
    result = _deploy(aegress_home, "render", "docker", "--out", str(tmp_path / "o"), check=False,
                     AEGRESS_RECIPES_DIR=str(recipes))
    assert result.returncode == 1
    missing = re.search(r"missing 3 file\(s\): (.*) \(looked in", result.stderr)
    assert missing and missing.group(1).split(", ") == [
        "recipes/docker/gateway.compose.yaml", "recipes/docker/README.md", "recipes/kubernetes/README.md"]
    listed = {r["name"]: r for r in json.loads(_deploy(aegress_home, "list", "--json",
                                                       AEGRESS_RECIPES_DIR=str(recipes)).stdout)}
    assert listed["docker"]["recipe_files_missing"] == [
        "recipes/docker/gateway.compose.yaml", "recipes/docker/README.md", "recipes/kubernetes/README.md"]
    assert listed["aws-lambda"]["recipe_files_missing"] == [
        "recipes/aws/Dockerfile", "recipes/aws/template.yaml", "recipes/aws/parameters.json", "recipes/aws/README.md"]


def test_render_copies_a_whole_recipe_and_keeps_secret_placeholders(aegress_home: Path, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    for rel, text in {
        "docker/Dockerfile": "FROM ${AEGRESS_IMAGE}\n",
        "docker/gateway.compose.yaml": "services:\n  gateway:\n    image: ${AEGRESS_IMAGE}\n    environment:\n"
                                       "      AEGRESS_DATABASE_URL: ${AEGRESS_DATABASE_URL}\n"
                                       "      AEGRESS_ALLOWED_HOSTS: ${AEGRESS_PUBLIC_HOST}\n",
        "docker/README.md": "# docker\n", "docker/.dockerignore": ".venv\n",
        "docker/tls/Caddyfile": "${AEGRESS_PUBLIC_HOST} {\n  reverse_proxy gateway:8765\n}\n",
        "kubernetes/README.md": "# k8s\n", "kubernetes/gateway.yaml": "replicas: ${AEGRESS_REPLICAS}\n",
    }.items():
        (recipes / rel).parent.mkdir(parents=True, exist_ok=True)
        (recipes / rel).write_text(text)
    out = tmp_path / "o"
    result = json.loads(_deploy(aegress_home, "render", "docker", "--out", str(out), "--image", "r.example/a:1",
                                "--public-url", "https://mcp.example.com/mcp", "--replicas", "3", "--json",
                                AEGRESS_RECIPES_DIR=str(recipes)).stdout)
    assert result["secrets"] == {"AEGRESS_DATABASE_URL": ["docker/gateway.compose.yaml"]}
    assert (out / "docker" / ".dockerignore").read_text() == ".venv\n"
    assert (out / "docker" / "tls" / "Caddyfile").read_text().startswith("mcp.example.com {")
    compose = (out / "docker" / "gateway.compose.yaml").read_text()
    assert "image: r.example/a:1" in compose and "${AEGRESS_DATABASE_URL}" in compose
    assert (out / "kubernetes" / "gateway.yaml").read_text() == "replicas: 3\n"
    text = _deploy(aegress_home, "render", "docker", "--out", str(tmp_path / "o2"), AEGRESS_RECIPES_DIR=str(recipes)
                   ).stdout
    assert "Secrets, left for your secret store at deploy time: AEGRESS_DATABASE_URL" in text


def test_managed_recipe_renders_to_a_valid_policy_and_script(aegress_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "acme"
    _deploy(aegress_home, "render", "managed", "--out", str(out), "--tenant", "acme",
            "--public-url", "https://mcp.aegress.example/mcp", "--set", "actor-id=alice@acme.example",
            "--set", "upstream-name=github", "--set", "upstream-url=https://api.githubcopilot.com/mcp/")
    checked = aegress(aegress_home, "policy", "check", str(out / "managed" / "policy.toml"))
    assert "valid" in checked.stdout
    script = out / "managed" / "onboard.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert 'TENANT="acme"' in script.read_text() and "${AEGRESS_" not in script.read_text()


def test_recipes_ship_with_the_package() -> None:
    """gateway/_recipes links to recipes/, and the wheel's package data takes everything under it."""
    link = ROOT / "gateway" / "_recipes"
    assert link.is_symlink() and link.resolve() == (ROOT / "recipes").resolve()
    assert '"_recipes/**/*"' in (ROOT / "pyproject.toml").read_text()


# -- the commands the runbooks and recipes give exist, with the options they use ---------------------------------
DOCS = ["docs/operations/aegress-managed-saas.md", "docs/operations/aws-lambda.md", "docs/operations/README.md",
        "recipes/managed/README.md", "recipes/managed/onboard.sh", "recipes/aws/README.md"]


def _command_lines(text: str) -> list[str]:
    """Every `aegress ...` command: whole lines (joined across backslash continuations) and inline code."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = [line.strip() for line in joined.splitlines() if line.strip().startswith("aegress ")]
    found += re.findall(r"`(aegress [^`]+)`", joined)
    return found


def _check(root: Any, line: str) -> str | None:
    words = line.split("#", 1)[0].replace("|", " ").split()
    with contextlib.suppress(ValueError):  # an unbalanced quote in prose: the plain split stands
        words = shlex.split(" ".join(words))
    command, path = root, ["aegress"]
    for word in words[1:]:
        subcommands = getattr(command, "commands", None)
        if subcommands and word in subcommands:
            command = subcommands[word]
            path.append(word)
        else:
            break
    if getattr(command, "commands", None) is not None and len(words) > len(path) and \
            not words[len(path)].startswith("-"):
        return f"{' '.join(path)} has no subcommand {words[len(path)]!r}: {line}"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in words[len(path):]:
        name = word.split("=", 1)[0]
        if re.fullmatch(r"--[a-z][a-z0-9-]*|-[a-zA-Z]", name) and name not in known:
            return f"{' '.join(path)} has no option {name}: {line}"
    return None


@pytest.mark.parametrize("doc", DOCS)
def test_commands_in_the_runbooks_exist(doc: str) -> None:
    import typer.main

    from aegress_cli.main import app

    root = typer.main.get_command(app)
    lines = _command_lines((ROOT / doc).read_text())
    assert lines, doc
    problems = [p for p in (_check(root, line) for line in lines) if p]
    assert problems == []
