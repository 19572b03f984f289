"""The running side of sealed evidence: I/O and threads around the pure `gateway.audit`, one concern a module.

    Pipeline.record stage ──> Evidence.append(entry) ──> EvidenceWriter (one thread)
                                                            │  batch = everything queued (+ a bounded wait)
                                                            │  store.append_evidence(batch): ONE transaction,
                                                            │  heads read inside it, one fsync for all
                                                            └─> futures resolved; Observer told; Checkpointer told
    Checkpointer (one thread): every N records or T seconds, and as an idle heartbeat, signs a C2SP
      checkpoint per log (never one inconsistent with the last it signed), stores it, publishes it to
      a directory and an optional command hook; it also writes the security log's aggregated
      authentication failures once per window.

Everything pure (chaining, canonical bytes, digests, previews, signatures, Merkle proofs, bundle format,
verification of bytes) lives in `gateway.audit`. Modules here:

    clock         now_time: record times, cheap on the request path
    settings      data-dir paths (KEY_FILE, KEYS_TXT, CHECKPOINT_DIR), EvidenceSettings.from_env, crash_here
    origins       the deployment's origin prefix, a tenant's (or the security) log origin
    keys          signing key load / create / rotate, trusted verifier keys (audit/keys.txt), `--key` arguments
    writer        EvidenceWriter: group commit, hold-and-retry, admission limits, Observer.evidence_commit
    events        records outside the request path: operator events, recovery, not_forwarded, decision_seq_for
    checkpointer  Checkpointer, published checkpoints (write and read), sign_checkpoints, sign_if_possible
    failures      AuthFailures: authentication failures counted per window
    redaction     RedactingFilter, install_log_redaction
    facade        Evidence (the service `gateway.server` starts) and NoEvidence (`serve --no-evidence`)
    proofs        `audit proof`: receipts, the covering checkpoint, inclusion proofs from a store
    stream        a stored log a page at a time: streaming verification, jsonl and csv export
    export        `audit export`: record ranges by time, one log or every log as bundles
    bundles       bundle files of a stored log, and `audit import` (verify, plan, one transaction)
    verification  `audit verify` of a store (database and published checkpoints), `audit repair`

The CLI (`aegress audit ...`) only parses options and renders: every function it calls takes plain
arguments and, for long work, a progress callback. Importing this package imports nothing else: the
names below are loaded on first use, so a command that needs only `origins` never loads the writer or
`cryptography`. Import from the concern's module; the package keeps the names `gateway.server` and
`gateway.pipeline` import from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.evidence.clock import now_time
    from gateway.evidence.facade import Evidence, NoEvidence
    from gateway.evidence.redaction import install_log_redaction
    from gateway.evidence.settings import EvidenceSettings

__all__ = ["Evidence", "EvidenceSettings", "NoEvidence", "install_log_redaction", "now_time"]

_HOME = {"Evidence": "facade", "NoEvidence": "facade", "EvidenceSettings": "settings", "now_time": "clock",
         "install_log_redaction": "redaction"}


def __getattr__(name: str) -> Any:
    """Load a re-exported name's module on first use (keeps `import gateway.evidence.origins` light)."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.evidence' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gateway.evidence.{module}"), name)
