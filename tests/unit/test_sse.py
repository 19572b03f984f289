"""The SSE parser (gateway.upstreams.sse): line ends, chunk splits anywhere, bounded events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstreams.sse import Event, EventTooLarge, SseParser


def parse(chunks: list[bytes], limit: int | None = None) -> list[Event]:
    parser = SseParser(limit)
    return [event for chunk in chunks for event in parser.feed(chunk)]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


STREAM = (
    b": a comment\n"
    b"id: s:1\nretry: 500\ndata:\n\n"
    b'data: {"a":1}\n\n'
    b"event: message\ndata: line one\ndata: line two\n\n"
    b"data:no-space\n\n"
    b"data\n\n"
    b'id: s:2\ndata: {"b":2}\n\n'
)
EVENTS = [
    ("s:1", 500, b""),
    ("", None, b'{"a":1}'),
    ("", None, b"line one\nline two"),
    ("", None, b"no-space"),
    ("", None, b""),
    ("s:2", None, b'{"b":2}'),
]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_end_gives_the_same_events(eol: bytes) -> None:
    assert parse([STREAM.replace(b"\n", eol)]) == EVENTS


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    assert parse([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [("", None, b"a"), ("", None, b"b")]
    # a CR at a chunk's end followed by another CR: two line ends, the second one dispatches
    assert parse([b"data: a\r", b"\rdata: b\r", b"\r"]) == [("", None, b"a"), ("", None, b"b")]


def test_an_event_cut_off_by_the_end_of_the_stream_is_not_dispatched() -> None:
    parser = SseParser()
    assert parser.feed(b"data: whole\n\ndata: half") == [("", None, b"whole")]


def test_a_leading_byte_order_mark_is_ignored() -> None:
    assert parse([b"\xef\xbb\xbfdata: x\n\n"]) == [("", None, b"x")]


def test_an_event_or_an_unfinished_line_over_the_bound_is_refused() -> None:
    assert parse([b"data: " + b"x" * 90 + b"\n\n"], limit=100) == [("", None, b"x" * 90)]
    with pytest.raises(EventTooLarge):  # many data lines of one event
        parse([b"data: " + b"x" * 40 + b"\n"] * 3, limit=100)
    parser = SseParser(100)
    with pytest.raises(EventTooLarge):  # one line that never ends, fed a byte at a time
        for _ in range(200):
            parser.feed(b"x")
    with pytest.raises(EventTooLarge):  # a comment that never ends is bounded too
        parse([b": " + b"c" * 200], limit=100)
    # many small events are each within the bound
    assert len(parse([b"data: " + b"x" * 50 + b"\n\n"] * 100, limit=100)) == 100


def test_a_huge_retry_value_is_ignored_rather_than_raising() -> None:
    assert parse([b"retry: " + b"9" * 5000 + b"\ndata: x\n\n"]) == [("", None, b"x")]


@settings(max_examples=300, deadline=None)
@given(eol=st.sampled_from([b"\n", b"\r\n", b"\r"]), cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_any_chunk_split_gives_the_same_events(eol: bytes, cuts: list[int]) -> None:
    data = STREAM.replace(b"\n", eol)
    assert parse(split(data, cuts)) == EVENTS


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=12),
    eols=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r"]), min_size=12, max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_mixed_line_ends_and_splits_match_parsing_whole_lines(lines: list[bytes], eols: list[bytes],
                                                                cuts: list[int]) -> None:
    """Arbitrary field lines with mixed line ends, split anywhere, parse as the LF-only whole stream."""
    body = [b"data: " + line for line in lines]
    mixed = b"".join(line + eol for line, eol in zip(body, eols, strict=False)) + b"\r\n"
    plain = b"".join(line + b"\n" for line in body) + b"\n"
    assert parse(split(mixed, cuts)) == parse([plain])
