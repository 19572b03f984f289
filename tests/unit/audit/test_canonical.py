"""RFC 8785 canonical bytes: what gets hashed must be reproducible by anyone."""

from __future__ import annotations

import pytest

from gateway.audit.canonical import canonicalize, is_canonical, parse_canonical
from gateway.audit.errors import InvalidRecord


def test_rfc8785_sample_object() -> None:
    # RFC 8785 section 3.2.2 input, minus the float members we never store.
    value = {"literals": [None, True, False], "string": "€$\x0f\nA'B\"\\\\\"/"}
    assert canonicalize(value) == (
        b'{"literals":[null,true,false],"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 (surrogates D83D..) sorts before U+FB33 in UTF-16, after it in code points.
    assert canonicalize({"\ufb33": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb33":1}'.encode()


@pytest.mark.parametrize("value", [float("nan"), 2**60, {1: "x"}, object()])
def test_refuses_what_jcs_cannot_represent(value: object) -> None:
    with pytest.raises(InvalidRecord):
        canonicalize(value)


@pytest.mark.parametrize(
    "data",
    [
        b'{"b":1, "a":2}',
        b'{"b":1,"a":2}',
        b'{"a":1,"a":1}',
        b'{"a":"\\u00e9"}',
        b'{"a":1.0}',
        b'{"a":NaN}',
        b'{"a":9007199254740993}',
        b'{"a":"\\/"}',
        b"\xff",
        b'{"a":1}\n',
    ],
)
def test_rejects_non_canonical_bytes(data: bytes) -> None:
    assert not is_canonical(data)
    with pytest.raises(InvalidRecord):
        parse_canonical(data)


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, -2, "é", None, True]},
        {"x": "\u2028\x7f\x00\U0001f600"},
        [1.5, 1e21, 0.1],
        {"\ufb33": 1, "\U0001f600": 2},
    ],
)
def test_round_trip(value: object) -> None:
    data = canonicalize(value)
    assert is_canonical(data)
    assert parse_canonical(data) == value
