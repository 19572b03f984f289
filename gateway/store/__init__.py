"""The store seam: one interface (`Store`), implementations per database.

`open_store(home, database_url)` picks SQLite (the default, one file under the data dir, or
`sqlite:///<path>`) or Postgres (`postgresql://...` / `postgres://...`; psycopg is imported only then).

Where the URL comes from (`database_url_from_env`): `AEGRESS_DATABASE_URL`; or, only when the
operator names it in `AEGRESS_DATABASE_URL_FROM` (e.g. `DATABASE_URL`, as container platforms set),
that variable. A bare `DATABASE_URL` meant for another program is never read on its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from gateway.errors import ConfigError
from gateway.store.base import Store

URL_ENV = "AEGRESS_DATABASE_URL"
URL_FROM_ENV = "AEGRESS_DATABASE_URL_FROM"
REPLICA_ENV = "AEGRESS_REPLICA_ID"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_REPLICA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def mask_url(url: str) -> str:
    """The URL with its password (and any query string, which may carry one) replaced by `***`."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            if ":" in user:
                user = user.split(":", 1)[0] + ":***"
            netloc = f"{user}@{host}"
        return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))
    except ValueError:
        return "<an unreadable database URL>"


class DatabaseUrl(str):
    """A database URL that masks its password wherever it is shown (`repr`, `str()` stays the URL)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"DatabaseUrl({mask_url(self)!r})"

    @property
    def masked(self) -> str:
        return mask_url(self)


def database_url_from_env(env: Mapping[str, str] | None = None) -> DatabaseUrl | None:
    """`AEGRESS_DATABASE_URL`, else the variable `AEGRESS_DATABASE_URL_FROM` names, else None (SQLite)."""
    env = os.environ if env is None else env
    url = env.get(URL_ENV, "")
    if url:
        return DatabaseUrl(url)
    source = env.get(URL_FROM_ENV, "")
    if not source:
        return None
    if not _ENV_NAME.fullmatch(source):
        raise ConfigError(f"{URL_FROM_ENV} must name an environment variable (letters, digits, _).",
                          hint=f"For example {URL_FROM_ENV}=DATABASE_URL.")
    url = env.get(source, "")
    if not url:
        raise ConfigError(f"{URL_FROM_ENV} names {source}, which is not set or empty.",
                          hint=f"Set {source}, or unset {URL_FROM_ENV} to use the SQLite store.")
    return DatabaseUrl(url)


def replica_id_from_env(env: Mapping[str, str] | None = None) -> str:
    """This process's replica id: `AEGRESS_REPLICA_ID`, else a random one (`r-<8 hex>`)."""
    env = os.environ if env is None else env
    wanted = env.get(REPLICA_ENV, "")
    if not wanted:
        return f"r-{os.urandom(4).hex()}"
    if not _REPLICA.fullmatch(wanted):
        raise ConfigError(f"{REPLICA_ENV} must be 1-64 letters, digits, '.', '_', ':' or '-'.",
                          hint="Use a stable name per replica, such as the pod or host name.")
    return wanted


def is_postgres(url: str | None) -> bool:
    return bool(url) and str(url).startswith(("postgresql://", "postgres://"))


def open_store(home: Path, database_url: str | None = None, *, busy_timeout_s: float = 5.0,
               replica_id: str | None = None, migrate: bool = True) -> Store:
    """`busy_timeout_s`: how long one statement waits for another process's lock (the gateway uses less
    than the CLI, so a locked database turns into a prompt refusal rather than a stalled request).
    `replica_id`: None reads `AEGRESS_REPLICA_ID` (or makes one up). `migrate=False` opens the store
    without applying pending migrations (`aegress db status`)."""
    replica = replica_id if replica_id is not None else replica_id_from_env()
    if is_postgres(database_url):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(DatabaseUrl(database_url or ""), busy_timeout_s=busy_timeout_s, replica_id=replica,
                             migrate=migrate)
    if database_url and not database_url.startswith("sqlite:///"):
        scheme = database_url.split("://", 1)[0] if "://" in database_url else ""
        raise ConfigError(
            f"Unsupported database URL{f' scheme {scheme!r}' if scheme else ''}: use postgresql://, postgres:// "
            "or sqlite:///<path>.",
            hint=f"Check {URL_ENV} (or the variable {URL_FROM_ENV} names), or unset it to use the SQLite store "
                 "under the data dir.",
        )
    from gateway.store.sqlite import SQLiteStore

    path = home / "aegress.db"
    if database_url:
        path = Path(database_url.removeprefix("sqlite:///"))
    return SQLiteStore(path, busy_timeout_s=busy_timeout_s, replica_id=replica, migrate=migrate)


__all__ = ["DatabaseUrl", "Store", "database_url_from_env", "mask_url", "open_store", "replica_id_from_env"]
