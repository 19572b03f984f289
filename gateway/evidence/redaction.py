"""Log redaction: detected secrets never reach a log line."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.audit.redact import redact_text


class RedactingFilter(logging.Filter):
    """Rewrites every log record's message with `redact_text`, so detected secrets never reach a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact_text(message)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = redact_text(f"{type(exc).__name__}: {exc}")
            record.exc_info = None
            record.exc_text = None
            redacted = f"{redacted} ({text})"
        record.msg, record.args = redacted, None
        return True


_FILTER = RedactingFilter()


def install_log_redaction(logger_names: Sequence[str] = ("", "uvicorn", "uvicorn.error", "uvicorn.access")) -> None:
    """Attach the redacting filter to every handler of these loggers (handler filters see propagated
    records too). Idempotent; `serve` calls it after logging is configured."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
