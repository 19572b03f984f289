"""Client-config tests run with the token in the environment, as a real user's shell would have it,
so the canary checks prove that nothing copies it from there."""

from __future__ import annotations

import pytest
from clients_support import CANARY


@pytest.fixture(autouse=True)
def _canary_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGRESS_MCP_GATEWAY_TOKEN", CANARY)
