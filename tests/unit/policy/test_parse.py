"""Parsing: valid files load, and every problem names the file, the line and the field."""

from __future__ import annotations

import re
import tomllib

import jsonschema
import pytest

from gateway.errors import InvalidInput
from gateway.policy import (
    PolicyInvalid,
    ReviewMode,
    Verdict,
    check_policy,
    demo_policy_text,
    load_policy,
    policy_schema,
    starter_policy_text,
)
from gateway.policy._locate import key_lines


def problems(text: str) -> list[tuple[int | None, str, str]]:
    return [(p.line, p.field, p.message) for p in check_policy(text, "t.toml")]


def only(text: str) -> tuple[int | None, str, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def uncommented_examples(text: str) -> str:
    """The starter file with its example rules switched on (code lines start with '# ')."""
    head, _, examples = text.partition("# --- examples")
    lines = examples.splitlines()[1:]
    return head + "\n".join(line[2:] if line.startswith("# ") else line for line in lines) + "\n"


SHIPPED = {
    "starter.toml": starter_policy_text(),
    "demo.toml": demo_policy_text(),
    "starter.toml (examples on)": uncommented_examples(starter_policy_text()),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_files_validate_against_parser_and_schema(name: str) -> None:
    text = SHIPPED[name]
    policy = load_policy(text, name)
    jsonschema.validate(tomllib.loads(text), policy_schema())
    jsonschema.Draft202012Validator.check_schema(policy_schema())
    if "examples on" in name:
        assert len(policy.rules) == 5


def test_schema_file_and_function_agree() -> None:
    import json
    from pathlib import Path

    import gateway.policy

    path = Path(gateway.policy.__file__).with_name("schema.json")
    assert json.loads(path.read_text()) == policy_schema()


@pytest.mark.parametrize(
    "text",
    [
        "version = 1\ncolour = 'red'\n",
        "version = 1\n[[rules]]\nid = 'a'\nverdict = 'allow'\nnmae = 'x'\n",
        "version = 1\n[[rules]]\nid = 'a'\nverdict = 'alow'\n",
        "version = 1\n[[rules]]\nverdict = 'allow'\n",
        "version = 1\n[[rules]]\nid = 'a'\nverdict = 'allow'\n[rules.args]\nx = { between = 3 }\n",
        "version = 1\n[review]\nmode = 'later'\n",
        "version = 2\n",
    ],
)
def test_schema_rejects_what_the_parser_rejects(text: str) -> None:
    assert problems(text)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads(text), policy_schema())


def test_minimal_policy_defaults() -> None:
    policy = load_policy("version = 1\n", "p.toml")
    assert policy.default is Verdict.BLOCK
    assert policy.review.mode is ReviewMode.APPROVE
    assert policy.review.hold_timeout_seconds == 25
    assert policy.rules == ()
    assert policy.source == "p.toml"


def test_unknown_top_level_key_names_line_and_field() -> None:
    assert only("version = 1\n\ncolour = 'red'\n") == (3, "colour", only("version = 1\ncolour = 1\n")[2])
    assert "unknown key" in only("version = 1\ncolour = 1\n")[2]


def test_unknown_rule_key_points_at_that_key() -> None:
    text = """version = 1

[[rules]]
id = "first"
verdict = "allow"

[[rules]]
id = "second"
verdict = "allow"
nmae = "echo"
"""
    line, field, message = only(text)
    assert (line, field) == (10, "rules[1].nmae")
    assert "unknown key" in message and "name" in message


def test_bad_verdict_names_rule_line_field() -> None:
    text = 'version = 1\n[[rules]]\nid = "a"\nverdict = "alow"\n'
    line, field, message = only(text)
    assert (line, field) == (4, "rules[0].verdict")
    assert "allow, review, block" in message and "alow" in message


def test_missing_id_points_at_the_rule_header() -> None:
    text = 'version = 1\n\n[[rules]]\nverdict = "allow"\n'
    assert only(text)[:2] == (3, "rules[0]")
    assert "'id'" in only(text)[2]


def test_duplicate_rule_id_points_at_the_second() -> None:
    text = """version = 1
[[rules]]
id = "same"
verdict = "allow"
[[rules]]
id = "same"
verdict = "block"
"""
    line, field, message = only(text)
    assert (line, field) == (6, "rules[1].id")
    assert "duplicate" in message and "rules[0]" in message


def test_reserved_rule_id_refused() -> None:
    assert "bad rule id" in only('version = 1\n[[rules]]\nid = "pin"\nverdict = "allow"\n')[2]


def test_bad_glob_and_regex_and_types() -> None:
    text = """version = 1
[[rules]]
id = "a"
verdict = "block"
name = ["ok", "bad[glob"]
upstream = 7
[rules.args]
q = { regex = "(unclosed" }
n = { min = "3" }
"""
    found = problems(text)
    assert [(line, field) for line, field, _ in found] == [
        (5, "rules[0].name[1]"),
        (6, "rules[0].upstream"),
        (8, "rules[0].args.q.regex"),
        (9, "rules[0].args.n.min"),
    ]
    messages = [m for _, _, m in found]
    assert "bad glob" in messages[0]
    assert "string" in messages[1] and "integer" in messages[1]
    assert "bad regex" in messages[2]
    assert "number" in messages[3]


def test_many_errors_listed_at_once_in_line_order() -> None:
    text = """version = 1
default = "maybe"
origins = ["https://ok.example", "not an origin"]

[review]
hold_timeout_seconds = 0
mode = "later"

[builtin]
destructive = "sometimes"

[rate_limits]
default = { calls = 0, per_seconds = 60 }

[[rules]]
id = "x"
verdict = "allow"
kind = "tool!"
"""
    found = problems(text)
    assert [line for line, _, _ in found] == [2, 3, 6, 7, 10, 13, 18]
    assert [field for _, field, _ in found] == [
        "default", "origins[1]", "review.hold_timeout_seconds", "review.mode", "builtin.destructive",
        "rate_limits.default.calls", "rules[0].kind",
    ]
    with pytest.raises(PolicyInvalid) as caught:
        load_policy(text, "t.toml")
    err = caught.value
    assert isinstance(err, InvalidInput)
    assert err.code == "policy-invalid" and err.exit_code == 1 and err.hint
    assert len(err.problems) == 7
    assert "t.toml:2: default:" in err.message
    assert "t.toml:18: rules[0].kind:" in err.message


def test_inline_tables_and_dotted_paths() -> None:
    text = """version = 1
[[rules]]
id = "a"
verdict = "block"
args = { "opts.depth" = { max = 3 }, n = { min = 5, max = 1 } }
annotations = { readOnlyHint = "yes" }
groups = [
  "ops",
  7,
]
"""
    found = problems(text)
    assert [(line, field) for line, field, _ in found] == [
        (5, "rules[0].args.n.min"),
        (6, "rules[0].annotations.readOnlyHint"),
        (9, "rules[0].groups[1]"),
    ]


def test_unquoted_dotted_argument_path_gets_a_hint() -> None:
    text = 'version = 1\n[[rules]]\nid = "a"\nverdict = "block"\n[rules.args]\nopts.depth = { max = 3 }\n'
    line, field, message = only(text)
    assert (line, field) == (6, "rules[0].args.opts.depth")
    assert '"opts.depth"' in message


def test_toml_syntax_error_has_line() -> None:
    line, field, message = only('version = 1\n[[rules]]\nid = "a\n')
    assert line == 3 and field == "" and "not valid TOML" in message


def test_missing_version_and_wrong_version() -> None:
    assert "version" in only("default = 'allow'\n")[2]
    assert only("version = 3\n")[:2] == (1, "version")


def test_semantic_checks() -> None:
    base = 'version = 1\n[[rules]]\nid = "a"\n'
    prompt_rule = 'verdict = "allow"\nkind = "prompt"\nannotations = { readOnlyHint = true }\n'
    prompt_rule = 'verdict = "allow"\nkind = "prompt"\nannotations = { readOnlyHint = true }\n'
    assert "annotations only apply" in only(base + prompt_rule)[2]
    assert "review_mode only applies" in only(base + 'verdict = "allow"\nreview_mode = "confirm"\n')[2]
    assert "client requests are" in only(base + 'verdict = "allow"\nkind = "client_request"\nname = "sampeling"\n')[2]
    assert "present = false" in only(base + 'verdict = "block"\nargs = { x = { present = false, equals = 1 } }\n')[2]
    assert "no condition" in only(base + 'verdict = "block"\nargs = { x = {} }\n')[2]
    assert "dates and times" in only(base + 'verdict = "block"\nargs = { x = { equals = 1979-05-27 } }\n')[2]
    assert "sha256" in only('version = 1\n[pins.demo]\necho = "md5:abc"\n')[2]


def test_full_rule_round_trip() -> None:
    text = """version = 1
default = "review"
trusted_upstreams = ["demo"]
origins = ["http://localhost:5173"]
[review]
mode = "confirm"
approval_lifetime_seconds = 60
[builtin]
destructive = "off"
[groups]
ops = ["alice"]
[rate_limits]
default = { calls = 10, per_seconds = 1 }
[rate_limits.actors]
bot = { calls = 100, per_seconds = 1.5 }
[pins.demo]
echo = "sha256:%s"
[[rules]]
id = "r"
kind = "tool"
upstream = ["demo", "gh*"]
name = "write_*"
actors = "bot-*"
groups = ["ops"]
annotations = { destructiveHint = false }
verdict = "review"
review_mode = "approve"
reason = "why"
[rules.args]
path = { prefix = "/w/", max_length = 100 }
"n.0" = { one_of = [1, 2], min = 0, max = 9 }
flag = { present = true, equals = true }
""" % ("a" * 64)
    policy = load_policy(text, "full.toml")
    rule = policy.rules[0]
    assert rule.upstream == ("demo", "gh*") and rule.name == ("write_*",) and rule.actors == ("bot-*",)
    assert rule.annotations == {"destructiveHint": False}
    assert [a.path for a in rule.args] == ["path", "n.0", "flag"]
    assert rule.review_mode is ReviewMode.APPROVE
    assert policy.builtins.destructive is None
    assert policy.rate_limits.actors["bot"].per_seconds == 1.5
    assert policy.pins == {"demo": {"echo": "sha256:" + "a" * 64}}
    jsonschema.validate(tomllib.loads(text), policy_schema())


def test_key_lines_handles_strings_arrays_and_tables() -> None:
    text = '''a = """multi
line = "not a key"
"""
b = [1,
  2, # c = 3
  {x = 1}]
[t."quoted.key"]
y = 'lit'
[[arr]]
z = 1
[[arr]]
z = 2
[arr.sub]
w = 3
'''
    lines = key_lines(text)
    assert lines[("a",)] == 1
    assert ("line",) not in lines
    assert lines[("b",)] == 4 and lines[("b", 1)] == 5 and lines[("b", 2, "x")] == 6
    assert ("c",) not in lines
    assert lines[("t", "quoted.key", "y")] == 8
    assert lines[("arr", 0, "z")] == 10 and lines[("arr", 1, "z")] == 12
    assert lines[("arr", 1, "sub", "w")] == 14


def test_problem_str_format() -> None:
    found = check_policy('version = 1\n[[rules]]\nid = "a"\nverdict = "nope"\n', "policies/acme.toml")
    assert re.fullmatch(r"policies/acme\.toml:4: rules\[0\]\.verdict: must be one of .*", str(found[0]))


def test_docs_examples_are_valid() -> None:
    from pathlib import Path

    docs = Path(__file__).resolve().parents[3] / "docs" / "policy.md"
    blocks = re.findall(r"```toml\n(.*?)```", docs.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        text = block if block.startswith("version") else "version = 1\n" + block
        load_policy(text, "docs/policy.md")
        jsonschema.validate(tomllib.loads(text), policy_schema())
