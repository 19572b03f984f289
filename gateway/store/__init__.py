"""The store seam: one interface (`Store`), implementations per database.

`open_store(home, database_url)` picks SQLite (the default, one file under the data dir) or, when a
`DATABASE_URL` is given, the Postgres store once it exists.
"""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError
from gateway.store.base import Store


def open_store(home: Path, database_url: str | None = None, *, busy_timeout_s: float = 5.0) -> Store:
    """`busy_timeout_s`: how long one statement waits for another process's lock (the gateway uses less
    than the CLI, so a locked database turns into a prompt refusal rather than a stalled request)."""
    if database_url and not database_url.startswith("sqlite"):
        raise ConfigError(
            "Only the SQLite store is available in this version.",
            hint="Unset DATABASE_URL to use the SQLite store under the data dir.",
        )
    from gateway.store.sqlite import SQLiteStore

    path = home / "aegress.db"
    if database_url and database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
    return SQLiteStore(path, busy_timeout_s=busy_timeout_s)


__all__ = ["Store", "open_store"]
