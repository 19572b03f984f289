"""Shared fixtures: every test gets its own data dir, and no test touches the real home or keyring."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def aegress_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "aegress-home"
    monkeypatch.setenv("AEGRESS_HOME", str(home))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name in ("AEGRESS_TENANT_ID", "AEGRESS_ACTOR_ID", "AEGRESS_MCP_GATEWAY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield home


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
