"""Pure guards against hostile upstreams: bounded stdio lines, backoff, client-facing errors, secret scrubbing,
limit validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.admin import check_limits
from gateway.audit.redact import REDACTED, redact_preview, redact_text, scrub, secret_values
from gateway.errors import InvalidInput
from gateway.proxy import BACKOFF_MAX_S, MAX_ERROR_MESSAGE_CHARS, client_error, next_backoff
from gateway.types import UpstreamLimits
from gateway.upstreams.stdio import LineSplitter, Oversize


def test_lines_within_the_limit_come_out_whole_across_chunks() -> None:
    s = LineSplitter(10)
    assert s.feed(b'{"a"') == []
    assert s.feed(b':1}\n{"b":2}\n\n{"c"') == [b'{"a":1}', b'{"b":2}', b""]
    assert s.feed(b":3}\n") == [b'{"c":3}']


def test_a_line_over_the_limit_is_dropped_keeping_only_its_ends() -> None:
    s = LineSplitter(1000)
    head = b'{"jsonrpc":"2.0","id":7,"result":{"text":"'
    out = s.feed(head + b"x" * 600)
    out += s.feed(b"x" * 5000)
    assert out == [] and len(s._buf) == 0  # dropped as it streams past, nothing held
    out = s.feed(b'"}}\n{"ok":1}\n')
    assert len(out) == 2 and isinstance(out[0], Oversize) and out[1] == b'{"ok":1}'
    assert out[0].id_hint() == 7 and len(out[0].head) <= 256 and len(out[0].tail) <= 256


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=64))
def test_splitting_never_buffers_more_than_limit_plus_a_chunk(chunks: list[bytes], limit: int) -> None:
    s = LineSplitter(limit)
    for chunk in chunks:
        for line in s.feed(chunk):
            assert isinstance(line, Oversize) or len(line) <= limit
        assert len(s._buf) <= limit + len(chunk)


@pytest.mark.parametrize(("head", "tail", "expected"), [
    (b'{"id":12,"jsonrpc":"2.0","result":{', b"", 12),
    (b'{"jsonrpc": "2.0", "id": 3, "result"', b"", 3),
    (b'{"jsonrpc":"2.0","result":{"content":[{"id":99', b'"}]},"id":5}', 5),
    (b'{"result":{"x":"', b'xxxx"}}', None),
    (b'{"jsonrpc":"2.0","result":{"id":4,', b'xx"}}', None),  # a nested id is not the message's
])
def test_the_id_of_an_oversized_answer_comes_from_its_ends(head: bytes, tail: bytes, expected: int | None) -> None:
    assert Oversize(head, tail).id_hint() == expected


def test_an_oversized_notification_is_told_from_an_answer() -> None:
    assert Oversize(b'{"jsonrpc":"2.0","method":"notifications/message","params":{', b"").is_request()
    assert Oversize(b'{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage",', b"").is_request()
    assert not Oversize(b'{"jsonrpc":"2.0","id":3,"result":{"method":"x"', b"").is_request()


def test_backoff_doubles_from_one_second_to_a_cap() -> None:
    delays = [next_backoff(None)]
    for _ in range(10):
        delays.append(next_backoff(delays[-1]))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0] and max(delays) == BACKOFF_MAX_S == delays[-1]


def test_client_errors_keep_the_code_bound_the_message_and_drop_data() -> None:
    err = {"code": -32050, "message": "E" * 5000, "data": {"trace": "internal.host"}}
    out = client_error(err, forward_data=False)
    assert out["code"] == -32050 and len(out["message"]) == MAX_ERROR_MESSAGE_CHARS and "data" not in out
    assert client_error(err, forward_data=True)["data"] == {"trace": "internal.host"}
    assert client_error("nonsense", forward_data=True) == {"code": -32603,
                                                           "message": "The upstream sent a malformed error."}
    assert client_error({"code": True, "message": 5}, forward_data=False)["code"] == -32603
    needs = {"code": -32021, "message": "m", "data": {"requiredCapabilities": {"sampling": {}}}}
    assert client_error(needs, forward_data=False)["data"] == needs["data"]  # MCP defines this data


def test_injected_secrets_are_scrubbed_wherever_they_reappear() -> None:
    secrets = secret_values(["Bearer plain-words-kept", "short", "another-plain-value"])
    assert secrets == ("Bearer plain-words-kept", "another-plain-value", "plain-words-kept")
    assert scrub("x plain-words-kept y", secrets) == f"x {REDACTED} y"
    assert "plain-words-kept" not in redact_preview({"echo": ["see plain-words-kept"]}, secrets=secrets)
    assert "another-plain-value" not in redact_preview({"another-plain-value": 1}, secrets=secrets)
    assert redact_text("nothing to see", secrets=secrets) == "nothing to see"
    assert "plain-words-kept" in redact_preview({"echo": "plain-words-kept"})  # unknown, it looks harmless


def test_limits_that_cannot_work_are_refused() -> None:
    assert check_limits(UpstreamLimits(call_timeout_s=0.5)).call_timeout_s == 0.5
    for bad in (UpstreamLimits(call_timeout_s=0), UpstreamLimits(init_timeout_s=float("nan")),
                UpstreamLimits(max_message_bytes=10)):
        with pytest.raises(InvalidInput):
            check_limits(bad)
