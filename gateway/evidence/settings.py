"""Where evidence lives in a data dir and how the record stage is tuned (EvidenceSettings, from the environment)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = Path("secrets") / "audit-signing.key"
KEYS_TXT = Path("audit") / "keys.txt"
CHECKPOINT_DIR = Path("audit") / "checkpoints"
CRASH_ENV = "AEGRESS_TEST_CRASH"
"""TEST ONLY. `after-intent`, `after-forward` or `during-outcome`: the gateway SIGKILLs itself at that point
(crash tests). Never set it in a deployment."""


MAX_HELD_RECORDS = 100_000
MAX_HELD_BYTES = 64 * 1024 * 1024
"""Records waiting in the writer (queued or held for a retry) beyond which new ones are refused
(StoreUnavailable, 503): a long store outage must not grow memory without limit. Outcomes are never
refused: they are bounded by the calls already in flight, whose intents committed."""


@dataclass(frozen=True)
class EvidenceSettings:
    """Tuning of the record stage. Turning it off is not a setting: only `aegress serve --no-evidence`."""

    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 10.0
    heartbeat_s: float = 300.0
    publish_dir: Path | None = None
    publish_hook: str | None = None
    commit_wait_s: float = 0.0
    max_batch: int = 1024
    auth_window_s: float = 60.0
    key_file: Path | None = None
    origin_prefix: str | None = None
    crash_point: str | None = None
    await_outcome: bool = False
    outcome_defer_s: float = 0.01
    inline_commit: bool = True
    max_held: int = MAX_HELD_RECORDS
    max_held_bytes: int = MAX_HELD_BYTES

    @classmethod
    def from_env(cls, home: Path, env: dict[str, str] | None = None) -> EvidenceSettings:
        """Read the AEGRESS_AUDIT* / AEGRESS_CHECKPOINT* variables (documented in docs/audit.md)."""
        e = dict(os.environ if env is None else env)

        def num(name: str, default: float) -> float:
            raw = e.get(name)
            return float(raw) if raw else default

        return cls(
            checkpoint_every=int(num("AEGRESS_CHECKPOINT_EVERY", 1000)),
            checkpoint_interval_s=num("AEGRESS_CHECKPOINT_INTERVAL", 10.0),
            heartbeat_s=num("AEGRESS_CHECKPOINT_HEARTBEAT", 300.0),
            publish_dir=Path(e["AEGRESS_CHECKPOINT_DIR"]) if e.get("AEGRESS_CHECKPOINT_DIR") else home / CHECKPOINT_DIR,
            publish_hook=e.get("AEGRESS_CHECKPOINT_HOOK") or None,
            commit_wait_s=num("AEGRESS_GROUP_COMMIT_WAIT_MS", 0.0) / 1000,
            auth_window_s=num("AEGRESS_AUTH_FAILURE_WINDOW", 60.0),
            key_file=Path(e["AEGRESS_SIGNING_KEY_FILE"]) if e.get("AEGRESS_SIGNING_KEY_FILE") else home / KEY_FILE,
            origin_prefix=e.get("AEGRESS_AUDIT_ORIGIN") or None,
            crash_point=e.get(CRASH_ENV) or None,
            await_outcome=e.get("AEGRESS_AUDIT_AWAIT_OUTCOME", "off").lower() in ("on", "1", "true"),
            outcome_defer_s=max(0.0, num("AEGRESS_AUDIT_OUTCOME_DEFER_MS", 10.0) / 1000),
            inline_commit=e.get("AEGRESS_AUDIT_INLINE_COMMIT", "on").lower() not in ("off", "0", "false"),
            max_held=max(1, int(num("AEGRESS_AUDIT_MAX_HELD", MAX_HELD_RECORDS))),
            max_held_bytes=max(1, int(num("AEGRESS_AUDIT_MAX_HELD_MB", MAX_HELD_BYTES / 2**20) * 2**20)),
        )


def crash_here(settings: EvidenceSettings, point: str) -> None:
    """TEST ONLY hook: die exactly like a power cut at a named point (see CRASH_ENV)."""
    if settings.crash_point == point:
        os.kill(os.getpid(), signal.SIGKILL)
