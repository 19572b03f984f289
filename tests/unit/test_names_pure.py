"""Pure pieces of issue 9's name checks: `did you mean` suggestions and policy upstream warnings."""

from __future__ import annotations

from gateway import naming
from gateway.policy import Policy, Rule, upstream_warnings


def test_closest_prefers_a_case_twin_then_difflib_and_says_nothing_when_far() -> None:
    assert naming.closest("ACME", ["acme", "beta"]) == "acme"
    assert naming.closest("acm", ["acme", "beta"]) == "acme"
    assert naming.closest("Alcie", ["alice", "bob"]) == "alice"
    assert naming.closest("zzz", ["acme"]) is None
    assert naming.closest("acme", []) is None
    assert naming.did_you_mean("acm", ["acme"]) == "did you mean 'acme'?"
    assert naming.did_you_mean("zzz", ["acme"]) is None


def test_same_id_ignoring_case_never_returns_the_id_itself() -> None:
    assert naming.same_id_ignoring_case("Acme", ["acme", "Acme"]) == "acme"
    assert naming.same_id_ignoring_case("acme", ["acme"]) is None
    assert naming.same_id_ignoring_case("acme", ["acmf"]) is None


def test_upstream_warnings_name_rules_trusted_and_pins_but_never_the_catch_all() -> None:
    policy = Policy(
        rules=(Rule("typo", "block", upstream="filez"), Rule("glob", "allow", upstream=("gh-*", "*")),
               Rule("fine", "allow", upstream="fil*"), Rule("any", "allow")),
        trusted_upstreams=frozenset({"files", "github"}),
        pins={"gone": {"t": "sha256:00"}},
    )
    found = upstream_warnings(policy, ["files"])
    assert [(w.where, w.name, w.suggestion) for w in found] == [
        ("rule 'typo'", "filez", "files"), ("rule 'glob'", "gh-*", None), ("trusted_upstreams", "github", None),
        ("pins", "gone", None)]
    assert "did you mean 'files'?" in found[0].message and found[0].to_dict()["code"] == "unknown-upstream"
    assert "pattern 'gh-*'" in found[1].message
    assert upstream_warnings(policy, ["files", "filez", "github", "gh-x", "gone"]) == []
    assert upstream_warnings(Policy(), []) == []
