"""Shared pieces for the client-setup e2e tests: one real gateway per module, a throw-away HOME per test."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import (
    ROOT,
    Gateway,
    add_stdio_fixture,
    aegress,
    aegress_json,
    allow_all,
    cli_env,
    run_gateway,
    setup_tenant,
)

NODE_BIN = ROOT / "tests" / "node_modules" / ".bin"
_ids = itertools.count(1)


@dataclass
class World:
    gw: Gateway

    @property
    def home(self) -> Path:
        return self.gw.home

    @property
    def url(self) -> str:
        return self.gw.url

    def token(self, tenant: str, actor: str) -> str:
        return self.gw.tokens[(tenant, actor)]

    def new_actor(self, tenant: str = "acme") -> tuple[str, str, str]:
        """A fresh actor with a stored token: (actor, token, token id). For tests that revoke."""
        actor = f"user{next(_ids)}"
        aegress(self.home, "actor", "add", "--tenant", tenant, actor)
        issued = aegress_json(self.home, "token", "issue", "--tenant", tenant, "--actor", actor)
        self.gw.tokens[(tenant, actor)] = issued["token"]
        return actor, issued["token"], issued["id"]

    def cli(self, user_home: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        """`aegress` as the user whose HOME is `user_home` (the gateway's data dir is shared)."""
        return aegress(self.home, *args, check=check, HOME=str(user_home), AEGRESS_URL=self.url, **env)

    def env(self, user_home: Path, **extra: str) -> dict[str, str]:
        """Environment for a real client process: throw-away HOME, node first on PATH, no proxies."""
        env = cli_env(self.home, HOME=str(user_home))
        env["PATH"] = os.pathsep.join([str(NODE_BIN), str(Path(sys.executable).parent), env.get("PATH", "")])
        for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
                    "CLAUDE_CONFIG_DIR", "CODEX_HOME", "XDG_CONFIG_HOME", "AEGRESS_MCP_GATEWAY_TOKEN"):
            env.pop(key, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env["CI"] = "1"
        env.update(extra)
        return env


def start_world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Tenants acme (actor alice) and beta (actor bob), each with a stdio fixture upstream."""
    home = tmp_path_factory.mktemp("gw") / "home"
    alice = setup_tenant(home, "acme", "alice")
    bob = setup_tenant(home, "beta", "bob")
    allow_all(home, "acme")  # these tests are about connecting; the policy gate is tested elsewhere
    add_stdio_fixture(home, "acme", "files")
    add_stdio_fixture(home, "beta", "vault")
    return home, {("acme", "alice"): alice, ("beta", "bob"): bob}


def world_fixture(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    home, tokens = start_world(tmp_path_factory)
    with run_gateway(home) as gw:
        gw.tokens.update(tokens)
        yield World(gw)


def user_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(HOME, project dir) for one test."""
    home, project = tmp_path / "user-home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    return home, project


def doctor_json(world: World, user_home: Path, client: str, *args: str, **env: str) -> tuple[int, dict[str, Any]]:
    proc = world.cli(user_home, "client", "doctor", client, *args, "--json", check=False, **env)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def failed(report: dict[str, Any]) -> dict[str, Any]:
    bad = [c for c in report["checks"] if not c["ok"]]
    assert len(bad) == 1, report
    return bad[0]
