"""Evaluation: one example per matcher, the precedence rules, built-ins, pins and visibility."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidInput
from gateway.policy import (
    ArgCondition,
    Builtins,
    Kind,
    PinStatus,
    Policy,
    RateLimit,
    RateLimits,
    Request,
    ReviewMode,
    ReviewSettings,
    Rule,
    Verdict,
    demo_policy_text,
    effective_annotations,
    evaluate,
    load_policy,
    rate_limit_for,
    visible,
)

A, R, B = Verdict.ALLOW, Verdict.REVIEW, Verdict.BLOCK
NO_BUILTINS = Builtins(destructive=None, trusted_read_only=None)


def tool_req(name: str = "t", upstream: str = "up", args: dict[str, Any] | None = None, actor: str = "alice",
             groups: frozenset[str] = frozenset(), annotations: dict[str, Any] | None = None,
             pin: PinStatus | None = None) -> Request:
    tool = {"name": name, "annotations": annotations} if annotations is not None else {"name": name}
    return Request(Kind.TOOL, upstream, name, actor, groups, args or {}, tool, pin)


def verdict(policy: Policy, request: Request) -> Verdict:
    return evaluate(policy, request).verdict


def allow_only(*conds: ArgCondition, **rule: Any) -> Policy:
    return Policy(rules=(Rule(id="r", verdict=A, args=conds, **rule),), builtins=NO_BUILTINS)


# -- defaults -------------------------------------------------------------------------------------

def test_unmatched_tool_gets_block_by_default() -> None:
    d = evaluate(Policy(builtins=NO_BUILTINS), tool_req())
    assert (d.verdict, d.rule_id, d.review_mode) == (B, "default", None)
    assert d.reason


def test_default_can_be_set() -> None:
    assert verdict(Policy(default=A, builtins=NO_BUILTINS), tool_req()) is A
    d = evaluate(Policy(default=R, builtins=NO_BUILTINS), tool_req())
    assert (d.verdict, d.review_mode) == (R, ReviewMode.APPROVE)


def test_client_requests_denied_unless_allowed_even_with_default_allow() -> None:
    policy = Policy(default=A)
    req = Request(Kind.CLIENT_REQUEST, "up", "sampling")
    d = evaluate(policy, req)
    assert (d.verdict, d.rule_id) == (B, "default:client-request")
    allowed = Policy(rules=(Rule(id="s", verdict=A, kind=Kind.CLIENT_REQUEST, name="sampling"),))
    assert verdict(allowed, req) is A
    assert verdict(allowed, Request(Kind.CLIENT_REQUEST, "up", "elicitation")) is B


@pytest.mark.parametrize("kind", [Kind.RESOURCE, Kind.PROMPT, Kind.COMPLETION])
def test_other_kinds_use_default_and_their_own_rules(kind: Kind) -> None:
    policy = Policy(rules=(Rule(id="x", verdict=A, kind=kind, name="file:///docs/*"),))
    assert verdict(policy, Request(kind, "up", "file:///docs/a.md")) is A
    assert verdict(policy, Request(kind, "up", "file:///etc/passwd")) is B
    # A rule of another kind never applies.
    assert verdict(policy, tool_req("file:///docs/a.md", annotations={})) is R  # builtin: destructive


def test_policy_version_is_carried() -> None:
    assert evaluate(Policy(policy_version=7), tool_req()).policy_version == 7


# -- built-ins and trust --------------------------------------------------------------------------

def test_builtins_out_of_the_box() -> None:
    policy = Policy(trusted_upstreams=frozenset({"trusted"}))
    ro = {"readOnlyHint": True}
    d = evaluate(policy, tool_req(upstream="trusted", annotations=ro))
    assert (d.verdict, d.rule_id) == (A, "builtin:trusted-read-only")
    # Untrusted: the read-only claim is ignored; spec defaults make it destructive -> review.
    d = evaluate(policy, tool_req(upstream="other", annotations=ro))
    assert (d.verdict, d.rule_id, d.review_mode) == (R, "builtin:destructive", ReviewMode.APPROVE)
    # Trusted, destructive.
    assert verdict(policy, tool_req(upstream="trusted", annotations={"destructiveHint": True})) is R
    # Trusted, neither read-only nor destructive: nothing applies -> default.
    d = evaluate(policy, tool_req(upstream="trusted", annotations={"destructiveHint": False}))
    assert (d.verdict, d.rule_id) == (B, "default")


def test_builtins_configurable() -> None:
    policy = Policy(builtins=Builtins(destructive=Verdict.BLOCK, trusted_read_only=None),
                    trusted_upstreams=frozenset({"up"}))
    assert verdict(policy, tool_req(annotations={})) is B
    assert evaluate(policy, tool_req(annotations={"readOnlyHint": True})).rule_id == "default"


def test_effective_annotations() -> None:
    policy = Policy(trusted_upstreams=frozenset({"t"}))
    tool = {"name": "x", "annotations": {"readOnlyHint": True, "openWorldHint": "no"}}
    assert effective_annotations(policy, "t", tool) == {
        "readOnlyHint": True, "destructiveHint": True, "idempotentHint": False, "openWorldHint": True}
    assert effective_annotations(policy, "u", tool)["readOnlyHint"] is False


# -- precedence ----------------------------------------------------------------------------------

def test_explicit_allow_beats_builtin_review_for_untrusted_tool() -> None:
    policy = Policy(rules=(Rule(id="ok", verdict=A, upstream="gh", name="create_issue"),))
    d = evaluate(policy, tool_req("create_issue", "gh"))
    assert (d.verdict, d.rule_id) == (A, "ok")


def test_review_and_block_rules_tighten_builtin_allow() -> None:
    policy = Policy(trusted_upstreams=frozenset({"up"}),
                    rules=(Rule(id="rv", verdict=R, name="t"), Rule(id="bk", verdict=B, name="x")))
    ro = {"readOnlyHint": True}
    assert evaluate(policy, tool_req("t", annotations=ro)).rule_id == "rv"
    assert evaluate(policy, tool_req("x", annotations=ro)).rule_id == "bk"


def test_review_rule_alone_never_grants() -> None:
    policy = Policy(rules=(Rule(id="rv", verdict=R),), builtins=NO_BUILTINS)
    d = evaluate(policy, tool_req())
    assert (d.verdict, d.rule_id) == (B, "default")


def test_most_restrictive_wins_and_first_rule_is_reported() -> None:
    policy = Policy(rules=(
        Rule(id="a1", verdict=A), Rule(id="r1", verdict=R), Rule(id="r2", verdict=R), Rule(id="a2", verdict=A),
    ))
    assert evaluate(policy, tool_req()).rule_id == "r1"
    policy = Policy(rules=(*policy.rules, Rule(id="b1", verdict=B, reason="no")))
    d = evaluate(policy, tool_req())
    assert (d.verdict, d.rule_id, d.reason) == (B, "b1", "no")


def test_rule_order_does_not_change_verdict() -> None:
    rules = (Rule(id="a", verdict=A), Rule(id="r", verdict=R, name="t*"), Rule(id="b", verdict=B, name="tx"))
    for order in (rules, rules[::-1], (rules[1], rules[0], rules[2])):
        policy = Policy(rules=order)
        assert verdict(policy, tool_req("t")) is R
        assert verdict(policy, tool_req("tx")) is B
        assert verdict(policy, tool_req("u")) is A


def test_review_mode_strictest_wins() -> None:
    confirm = ReviewSettings(mode=ReviewMode.CONFIRM)
    policy = Policy(review=confirm, rules=(Rule(id="a", verdict=A), Rule(id="r", verdict=R)))
    assert evaluate(policy, tool_req()).review_mode is ReviewMode.CONFIRM
    policy = Policy(rules=(Rule(id="a", verdict=A), Rule(id="r", verdict=R, review_mode=ReviewMode.CONFIRM)))
    assert evaluate(policy, tool_req()).review_mode is ReviewMode.CONFIRM
    policy = Policy(review=confirm, rules=(
        Rule(id="a", verdict=A), Rule(id="r", verdict=R), Rule(id="r2", verdict=R, review_mode=ReviewMode.APPROVE)))
    d = evaluate(policy, tool_req())
    assert (d.rule_id, d.review_mode) == ("r", ReviewMode.APPROVE)


# -- pins -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("pin", [PinStatus.CHANGED, PinStatus.NEW])
def test_changed_or_new_tool_goes_to_review(pin: PinStatus) -> None:
    policy = Policy(rules=(Rule(id="a", verdict=A),), review=ReviewSettings(mode=ReviewMode.CONFIRM))
    d = evaluate(policy, tool_req(pin=pin))
    assert (d.verdict, d.rule_id, d.review_mode) == (R, "pin", ReviewMode.APPROVE)
    assert evaluate(policy, tool_req(pin=PinStatus.OK)).verdict is A
    assert evaluate(policy, tool_req(pin=None)).verdict is A


def test_pin_never_loosens_a_block() -> None:
    policy = Policy(rules=(Rule(id="b", verdict=B),))
    assert evaluate(policy, tool_req(pin=PinStatus.CHANGED)).rule_id == "b"


# -- matchers -------------------------------------------------------------------------------------

def test_upstream_and_name_globs() -> None:
    policy = allow_only(upstream=("git*", "fs"), name=("get_?", "list_[ab]*"))
    assert verdict(policy, tool_req("get_x", "github")) is A
    assert verdict(policy, tool_req("list_alpha", "fs")) is A
    assert verdict(policy, tool_req("list_c", "fs")) is B
    assert verdict(policy, tool_req("get_xy", "github")) is B
    assert verdict(policy, tool_req("get_x", "gitlab2")) is A
    assert verdict(policy, tool_req("get_x", "other")) is B
    assert verdict(policy, tool_req("GET_X", "github")) is B  # case-sensitive


def test_annotations_match_effective_values() -> None:
    policy = Policy(trusted_upstreams=frozenset({"t"}), builtins=NO_BUILTINS, rules=(
        Rule(id="ro", verdict=A, annotations={"readOnlyHint": True, "openWorldHint": False}),))
    claims = {"readOnlyHint": True, "openWorldHint": False}
    assert verdict(policy, tool_req(upstream="t", annotations=claims)) is A
    assert verdict(policy, tool_req(upstream="u", annotations=claims)) is B  # untrusted: claims ignored
    assert verdict(policy, tool_req(upstream="t", annotations={"readOnlyHint": True})) is B  # openWorld default


def test_actor_globs_and_groups() -> None:
    policy = Policy(groups={"ops": ("carol",)}, builtins=NO_BUILTINS, rules=(
        Rule(id="who", verdict=A, actors=("bot-*",), groups=("ops", "sre")),))
    assert verdict(policy, tool_req(actor="bot-1")) is A
    assert verdict(policy, tool_req(actor="carol")) is A  # group from the policy
    assert verdict(policy, tool_req(actor="dave", groups=frozenset({"sre"}))) is A  # group from the caller
    assert verdict(policy, tool_req(actor="dave")) is B


@pytest.mark.parametrize(
    ("cond", "good", "bad"),
    [
        (ArgCondition("mode", equals="fast"), [{"mode": "fast"}], [{"mode": "slow"}, {}, {"mode": ["fast"]}]),
        (ArgCondition("n", equals=1), [{"n": 1}, {"n": 1.0}], [{"n": True}, {"n": "1"}]),
        (ArgCondition("flag", equals=True), [{"flag": True}], [{"flag": 1}]),
        (ArgCondition("o", equals={"a": [1, 2]}), [{"o": {"a": [1, 2]}}], [{"o": {"a": [2, 1]}}]),
        (ArgCondition("lang", one_of=("en", "fr")), [{"lang": "fr"}], [{"lang": "de"}, {}]),
        (ArgCondition("path", prefix="/workspace/"), [{"path": "/workspace/a"}], [{"path": "/etc"}, {"path": 5}]),
        (ArgCondition("q", regex="[a-z]+"), [{"q": "abc"}], [{"q": "abc1"}, {"q": "ABC"}, {"q": 3}]),
        (ArgCondition("q", regex=".*drop.*"), [{"q": "x\ny drop z"}], [{"q": "DROP"}]),
        (ArgCondition("n", min=1), [{"n": 1}, {"n": 2.5}], [{"n": 0}, {"n": "5"}, {"n": True}, {}]),
        (ArgCondition("n", max=10), [{"n": 10}, {"n": -3}], [{"n": 11}, {"n": float("nan")}]),
        (ArgCondition("s", max_length=3), [{"s": "abc"}, {"s": [1, 2]}], [{"s": "abcd"}, {"s": 7}]),
        (ArgCondition("s", present=True), [{"s": None}, {"s": ""}], [{}]),
        (ArgCondition("s", present=False), [{}, {"t": 1}], [{"s": None}]),
        (ArgCondition("opts.depth", max=3), [{"opts": {"depth": 2}}], [{"opts": {"depth": 4}}, {"opts": 3}]),
        (ArgCondition("files.1", prefix="b"), [{"files": ["a", "b"]}], [{"files": ["b"]}, {"files": {"1": "a"}}]),
    ],
)
def test_argument_conditions(cond: ArgCondition, good: list[dict[str, Any]], bad: list[dict[str, Any]]) -> None:
    policy = allow_only(cond)
    for args in good:
        assert verdict(policy, tool_req(args=args)) is A, args
    for args in bad:
        assert verdict(policy, tool_req(args=args)) is B, args


def test_all_conditions_of_a_rule_must_hold() -> None:
    policy = allow_only(ArgCondition("path", prefix="/w/", max_length=8), ArgCondition("n", min=0, max=5))
    assert verdict(policy, tool_req(args={"path": "/w/a", "n": 3})) is A
    assert verdict(policy, tool_req(args={"path": "/w/abcdefgh", "n": 3})) is B
    assert verdict(policy, tool_req(args={"path": "/w/a", "n": 6})) is B


def test_model_rejects_bad_values() -> None:
    with pytest.raises(InvalidInput):
        Rule(id="x", verdict=A, name="bad[")
    with pytest.raises(InvalidInput):
        ArgCondition("q", regex="(")
    with pytest.raises(InvalidInput):
        ArgCondition("a..b", present=True)
    with pytest.raises(InvalidInput):
        Policy(rules=(Rule(id="x", verdict=A), Rule(id="x", verdict=B)))
    with pytest.raises(ValueError):
        Rule(id="x", verdict="maybe")  # type: ignore[arg-type]


# -- visibility -----------------------------------------------------------------------------------

def test_visible_follows_verdicts_without_arguments() -> None:
    policy = Policy(trusted_upstreams=frozenset({"up"}), rules=(
        Rule(id="hide", verdict=B, name="shell"),
        Rule(id="w", verdict=A, name="write", args=(ArgCondition("p", prefix="/w/"),)),
        Rule(id="guard", verdict=B, name="write", args=(ArgCondition("p", regex=".*\\.\\..*"),)),
        Rule(id="admins", verdict=B, name="admin", actors=("mallory",)),
    ))
    assert not visible(policy, tool_req("shell"))
    assert visible(policy, tool_req("write", annotations={"destructiveHint": False}))  # some args allow it
    assert not visible(policy, tool_req("other", annotations={"destructiveHint": False}))  # default block
    assert visible(policy, tool_req("other", annotations={}))  # destructive -> review, still visible
    assert visible(policy, tool_req("admin", actor="alice"))
    assert not visible(policy, tool_req("admin", actor="mallory"))


# -- the demo policy ------------------------------------------------------------------------------

DEMO_TOOLS: dict[str, dict[str, Any]] = {
    "echo": {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False},
    "add": {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False},
    "get_time": {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False},
    "write_note": {"readOnlyHint": False, "destructiveHint": False, "openWorldHint": False},
    "delete_note": {"readOnlyHint": False, "destructiveHint": True, "openWorldHint": False},
    "shell_preview": {"readOnlyHint": False, "destructiveHint": True, "openWorldHint": True},
}


@pytest.mark.parametrize(
    ("name", "args", "expected", "rule_id", "shown"),
    [
        ("echo", {"text": "hi"}, A, "builtin:trusted-read-only", True),
        ("add", {"a": 1, "b": 2}, A, "builtin:trusted-read-only", True),
        ("get_time", {}, A, "builtin:trusted-read-only", True),
        ("write_note", {"name": "n", "text": "t"}, A, "demo-write-note", True),
        ("write_note", {"name": "shared-x", "text": "t"}, R, "demo-shared-notes-review", True),
        ("write_note", {"name": "n", "text": "x" * 2001}, B, "demo-note-size", True),
        ("delete_note", {"name": "n"}, R, "demo-delete-review", True),
        ("shell_preview", {"command": "ls"}, B, "demo-shell-block", False),
        ("unknown_tool", {}, R, "builtin:destructive", True),
    ],
)
def test_demo_policy(name: str, args: dict[str, Any], expected: Verdict, rule_id: str, shown: bool) -> None:
    policy = load_policy(demo_policy_text(), "demo.toml")
    req = tool_req(name, "demo", args, actor="demo-user", annotations=DEMO_TOOLS.get(name, {}))
    d = evaluate(policy, req)
    assert (d.verdict, d.rule_id) == (expected, rule_id)
    assert visible(policy, req) is shown
    assert verdict(policy, Request(Kind.RESOURCE, "demo", "demo://notes")) is A
    assert verdict(policy, Request(Kind.PROMPT, "demo", "summarize_notes")) is A
    assert verdict(policy, Request(Kind.CLIENT_REQUEST, "demo", "sampling")) is B


# -- rate limits ----------------------------------------------------------------------------------

def test_rate_limit_resolution() -> None:
    slow, fast, default = RateLimit(10, 60), RateLimit(100, 60), RateLimit(30, 60)
    policy = Policy(groups={"ops": ("carol",)}, rate_limits=RateLimits(
        default=default, actors={"bot": RateLimit(1, 1)}, groups={"ops": fast, "slow": slow}))
    assert rate_limit_for(policy, "bot", frozenset({"ops"})) == RateLimit(1, 1)
    assert rate_limit_for(policy, "carol", frozenset({"slow"})) == fast
    assert rate_limit_for(policy, "dave", frozenset({"slow"})) == slow
    assert rate_limit_for(policy, "dave") == default
    assert rate_limit_for(Policy(), "dave") is None
