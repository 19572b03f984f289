"""Secrets never land in the clear: keyed digests, redacted previews, redacted log text."""

from __future__ import annotations

import json

import pytest

from gateway.audit.redact import (
    REDACTED,
    derive_tenant_key,
    digest_value,
    is_secret_key,
    redact_preview,
    redact_text,
)

MASTER = bytes(range(32))
CANARIES = [  # (text holding a secret, the part that must never appear)
    ("Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "eyJzdWIiOiIx"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "MIIEowIBAAKCAQEA"),
    ("AKIAIOSFODNN7EXAMPLE", "IOSFODNN7EXAMPLE"),
    ("ghp_0123456789abcdefghijABCDEFGHIJ012345", "0123456789abcdefghij"),
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
    ("xoxb-1234567890-abcdefghijkl", "1234567890-abcdefghijkl"),
    ("aeg_live_Zx9Qw8Er7Ty6Ui5Op4", "Zx9Qw8Er7Ty6Ui5Op4"),
    ("sk-proj-abcdefghijklmnopqrstuv", "abcdefghijklmnopqrstuv"),
    ("q8Xz3L0pWm7Rt2Yv9Bn4Kc6Hd1Fg5Js0", "q8Xz3L0pWm7Rt2Yv9Bn4Kc6Hd1Fg5Js0"),
    ("https://admin:s3cr3tpass@db.example.com/x", "s3cr3tpass"),
    ("password=hunter2", "hunter2"),
]


def test_digests_are_keyed_per_tenant_and_reproducible() -> None:
    acme, globex = derive_tenant_key(MASTER, "acme"), derive_tenant_key(MASTER, "globex")
    assert acme != globex and acme == derive_tenant_key(MASTER, "acme")
    value = {"b": [1, 2], "a": "x"}
    digest = digest_value(acme, value)
    assert digest.startswith("hmac-sha256:") and len(digest) == 12 + 64
    assert digest == digest_value(acme, {"a": "x", "b": [1, 2]})  # canonical JSON: key order does not matter
    assert digest != digest_value(globex, value)
    with pytest.raises(ValueError):
        derive_tenant_key(b"short", "acme")


@pytest.mark.parametrize("name", ["password", "X-Api-Key", "Authorization", "github_token", "client_secret",
                                  "Cookie", "session_id", "PRIVATE_KEY", "apiKey"])
def test_secret_key_names(name: str) -> None:
    assert is_secret_key(name)


@pytest.mark.parametrize("name", ["title", "body", "repo", "author", "count"])
def test_ordinary_key_names(name: str) -> None:
    assert not is_secret_key(name)


@pytest.mark.parametrize(("canary", "secret_part"), CANARIES)
def test_detectors_catch_canaries_in_text_and_previews(canary: str, secret_part: str) -> None:
    text = redact_text(f"upstream said: failed with {canary} (retry later)")
    assert secret_part not in text and REDACTED in text
    preview = redact_preview({"note": f"value {canary}", "nested": [{"x": canary}]})
    assert secret_part not in preview


def test_previews_redact_by_key_and_stay_bounded() -> None:
    preview = redact_preview({"title": "hello", "password": "hunter2", "headers": {"Authorization": "x"}})
    assert "hunter2" not in preview and json.loads(preview)["title"] == "hello"
    long = redact_preview({"body": "word " * 1000}, limit=100)
    assert len(long) == 100 and long.endswith("…")


def test_ordinary_text_and_our_digests_survive() -> None:
    digest = "hmac-sha256:" + "ab" * 32
    text = f"call create_issue on github for repo octo/hello-world took 12 ms, {digest}"
    assert redact_text(text) == text
