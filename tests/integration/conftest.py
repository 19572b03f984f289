"""Integration fixtures: every store test runs on SQLite and on the machine's real Postgres."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store import open_store
from gateway.store.base import Store


@pytest.fixture
def make_store(store_url: str, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Open (another) store on the test's database, like another process would; all closed after."""
    opened: list[Store] = []

    def make(**kwargs: Any) -> Store:
        kwargs.setdefault("replica_id", "r-test")
        store = open_store(tmp_path, store_url, **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., Store]) -> Store:
    return make_store()
