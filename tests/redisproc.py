"""Redis for tests: the machine's server (127.0.0.1:6379) for normal tests, and a PRIVATE redis-server the
test starts and stops (by its own pid) for the tests where Redis goes away (`private_redis`, the same
launcher as the cluster harness's).

Nothing here flushes, stops or configures the machine's server. Tests keep apart on it by key prefix:
every key and channel Aegress uses carries the fleet id, which comes from the per-run database (or is
random), so runs never see each other's state.
"""

from __future__ import annotations

import os
import secrets

from tests.cluster import private_redis

REDIS_URL = os.environ.get("AEGRESS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(url: str = REDIS_URL) -> str | None:
    """None when the server answers PING, else why not."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
        return None
    except Exception as exc:
        return f"no Redis for tests at {url}: {type(exc).__name__}"
    finally:
        client.close()


def fleet() -> str:
    """A fleet id of its own for one test (keys and channels of other runs never meet it)."""
    return "t" + secrets.token_hex(6)


# The private redis-server is the cluster harness's (one launcher: tests.cluster.Redis).
__all__ = ["REDIS_URL", "fleet", "private_redis", "reachable"]
