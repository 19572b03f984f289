"""What the CLI prints of values others chose cannot steer the operator's terminal (`_common.printable`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aegress_cli._common import printable


def test_control_characters_and_bidi_overrides_are_shown_escaped() -> None:
    assert printable("rm\x1b[2K\rread_file") == "rm\\x1b[2K\\rread_file"  # would rewrite the line it is on
    assert printable("\x1b]52;c;ZXZpbA==\x07") == "\\x1b]52;c;ZXZpbA==\\x07"  # OSC 52: the clipboard
    assert printable("safe\u202eexe.txt") == "safe\\u202eexe.txt"
    assert printable("a\x9bb\x7fc\td\ne") == "a\\x9bb\\x7fc\\td\\ne"
    assert printable("ünïcode 日本語 ok-1.2_x@y") == "ünïcode 日本語 ok-1.2_x@y"
    assert printable(None) == "" and printable(12) == "12"


@given(st.text())
def test_nothing_printed_can_start_an_escape_sequence(text: str) -> None:
    shown = printable(text)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                   "\u2066\u2067\u2068\u2069" for ch in shown)
    if all(ch.isprintable() and ch not in "\u200e\u200f" for ch in text):
        assert shown == text  # printable text is left exactly as it was


def test_error_messages_keep_their_lines_and_lose_their_escapes(capsys) -> None:  # type: ignore[no-untyped-def]
    from aegress_cli._common import fail
    from gateway.errors import NotFound

    assert printable("one\n\ttwo\x1b[2K\r", lines=True) == "one\n\ttwo\\x1b[2K\\r"
    fail(NotFound("No upstream 'a\x1b]0;x\x07'.\nKnown: b", hint="Did you mean 'b\u202e'?"))
    assert capsys.readouterr().err == ("Error: No upstream 'a\\x1b]0;x\\x07'.\nKnown: b\n"
                                       "Hint: Did you mean 'b\\u202e'?\n")
