"""Secrets never land in the clear: keyed digests, redacted previews, redacted log text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.records import MAX_PREVIEW_CHARS
from gateway.audit.redact import (
    PREVIEW_SCAN_CHARS,
    PREVIEW_STRING_CHARS,
    REDACTED,
    derive_tenant_key,
    digest_value,
    is_secret_key,
    redact_preview,
    redact_preview_value,
    redact_text,
    redact_value,
    scrub,
    truncate,
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


def _whole_value_preview(value: object, secrets: tuple[str, ...] = ()) -> str:
    """The preview as it was made before its work was bounded: redact everything, then cut."""
    text = json.dumps(redact_value(value, secrets=secrets), ensure_ascii=False, separators=(",", ":"),
                      sort_keys=True, default=str)
    if secrets:
        text = scrub(text, [json.dumps(v, ensure_ascii=False)[1:-1] for v in secrets])
    return truncate(text, MAX_PREVIEW_CHARS)


_RANDOM_TOKEN = "q8Xz3L0pWm7Rt2Yv9Bn4Kc6Hd1Fg5Js0"
_FOUR_MIB = 4 * 1024 * 1024
_HUGE_VALUES = {  # 4 MiB of random-looking tokens, shaped several ways
    "one string": (_RANDOM_TOKEN + " ") * (_FOUR_MIB // 33),
    "one token": _RANDOM_TOKEN * (_FOUR_MIB // 32),
    "list of tokens": [_RANDOM_TOKEN] * (_FOUR_MIB // 32),
    "list of long tokens": [_RANDOM_TOKEN * 100] * (_FOUR_MIB // 3200),
    "map of tokens": {f"k{i:07d}": _RANDOM_TOKEN for i in range(_FOUR_MIB // 40)},
    "nested": {"a": [[_RANDOM_TOKEN * 10] * 100] * 1000, "b": "x"},
}


@pytest.mark.parametrize("shape", list(_HUGE_VALUES))
def test_a_huge_value_is_redacted_for_its_preview_only(shape: str) -> None:
    """Finding 2: the detectors see a bounded part of a 4 MiB value, not all of it."""
    value = _HUGE_VALUES[shape]
    _, scanned = redact_preview_value(value)
    assert scanned <= PREVIEW_SCAN_CHARS + PREVIEW_STRING_CHARS + 1
    preview = redact_preview(value)
    assert _RANDOM_TOKEN[:8] not in preview and len(preview) <= MAX_PREVIEW_CHARS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40)
    | st.sampled_from([c for c, _ in CANARIES] + ["hunter2-injected", "x" * 300]),
    lambda inner: st.lists(inner, max_size=30)
    | st.dictionaries(st.text(max_size=12) | st.sampled_from(["password", "token", "hunter2-injected"]),
                      inner, max_size=30),
    max_leaves=400,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_a_preview_is_what_redacting_the_whole_value_gave(value: object, injected: bool) -> None:
    """Strings up to PREVIEW_STRING_CHARS: the bounded preview equals the whole-value one exactly."""
    secrets = ("hunter2-injected",) if injected else ()
    assert redact_preview(value, secrets=secrets) == _whole_value_preview(value, secrets)


@pytest.mark.parametrize(("secret", "sensitive"), [
    ("ghp_0123456789abcdefghijABCDEFGHIJ012345", "0123456789abcdefghijABCDEFGHIJ012345"),
    ("hunter2-injected-value", "hunter2-injected-value"),
    ("https://admin:s3cr3tpass@db", "admin:s3cr3tpass"),
    ("Bearer abcdefghijklmnop", "abcdefghijklmnop"),
])
def test_a_secret_cut_by_the_clip_does_not_leak(secret: str, sensitive: str) -> None:
    """A long string is cut before redaction; a secret straddling the cut is left out, not half shown."""
    for at in range(1, len(secret)):
        head = _RANDOM_TOKEN * ((PREVIEW_STRING_CHARS - at - 40) // 32)
        filler = "," * (PREVIEW_STRING_CHARS - at - 1 - len(head))
        text = head + filler + " " + secret + " tail" * 2000
        assert text.index(secret) == PREVIEW_STRING_CHARS - at
        preview = redact_preview({"text": text}, secrets=("hunter2-injected-value",))
        assert preview.endswith("…\"}") and filler in preview
        shown = preview.rpartition(",")[2]
        assert not any(sensitive[k:k + 3] in shown for k in range(len(sensitive) - 2)), (at, shown)


def _ungated(text: str) -> str:
    """The detectors as they were before their needles: every one runs on every text."""
    from gateway.audit import redact

    for pattern in redact._DETECTORS:
        text = pattern.sub(REDACTED, text)
    protected = {m.span() for m in redact._OWN_DIGEST.finditer(text)}
    return redact._CANDIDATE.sub(
        lambda m: m.group() if m.span() in protected or not redact._looks_random(m.group()) else REDACTED, text)


_PIECES = ["-----BEGIN ", "RSA PRIVATE KEY-----", "-----END ", "CERTIFICATE-----", "bearer", "BaSiC", "toKen",
           "to\u212aen", "ba\u017fic", "bas\u0131c", "TOKEN", "eyJ", "AKIA", "ASIA", "ghp_", "github_pat_", "xox",
           "b-", "p-", "a-", "aeg_", "sk-", "AIza", "password", "pwd", "api-key", "ApI_KeY", "secret", "=", ":", " = ", "://",
           "@", "user", ":pw", "\u00e9", " ", "\n", "\"", ",", "&", "abcdefghijklmnop", "ABCDEFGHIJKLMNOP",
           "0123456789", "Zx9Qw2Lk8Mn4Rt6Yp1", "sha256:", "a" * 64, "_", ".", "/", "~", "+"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=24))
def test_needles_never_change_what_is_redacted(pieces: list[str]) -> None:
    """Each detector runs only when one of its needles is in the text (the fast path for ordinary text):
    the result is always what running every detector gives, case-folded letters (U+212A, U+017F, U+0131)
    included."""
    text = "".join(pieces)
    assert redact_text(text) == _ungated(text)


_EVERY_ALTERNATIVE = [
    "ba\u017fic abcdefghij0123", "to\u212aen abcdefghij0123", "bas\u0131c abcdefghij0123", "BEARER abcdefghij0123",
    "PaSsWoRd=hunter22", "pwd: hunter22", "Api_Key=x1", "secret : s3", "https://alice:pw0rd@example.com/x",
    "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----", "-----BEGIN CERTIFICATE-----\nMIIB",
    "eyJhbGciOi.eyJzdWIiOi.sig", *(f"{p}ABCDEFGHIJKLMNOP" for p in
                                   ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA")),
    *(f"{p}_abcdefghijklmnopqrstuvwxyz" for p in ("ghp", "gho", "ghu", "ghs", "ghr", "github_pat")),
    *(f"xox{c}-abcdefghij12" for c in "abposr"), "aeg_abcdefgh12", "sk-abcdefghijklmnop12",
    "AIza" + "b" * 30, "x Zx9Qw2Lk8Mn4Rt6Yp1Ab3Cd5Ef7 y",
]


@pytest.mark.parametrize("text", _EVERY_ALTERNATIVE)
def test_every_detector_alternative_is_redacted(text: str) -> None:
    """One text per alternative each detector's regex has (and case-folded letters): redacted, as ungated."""
    assert REDACTED in redact_text(text)
    assert redact_text(text) == _ungated(text)
