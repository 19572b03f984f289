"""Plan and replay: what a candidate policy would change, computed with evaluate/visible."""

from __future__ import annotations

from gateway.policy import (
    ActorRef,
    Kind,
    RecordedCall,
    Request,
    Verdict,
    demo_policy_text,
    load_policy,
    plan,
    replay,
)
from gateway.policy.plan import ToolRef

DEMO = load_policy(demo_policy_text(), "demo.toml")
TOOLS = [
    ToolRef("demo", {"name": "echo", "annotations": {"readOnlyHint": True}}),
    ToolRef("demo", {"name": "write_note", "annotations": {"readOnlyHint": False, "destructiveHint": False}}),
    ToolRef("demo", {"name": "shell_preview", "annotations": {"destructiveHint": True}}),
]


def test_plan_from_nothing_lists_every_tool() -> None:
    changes = plan(None, DEMO, TOOLS)
    assert [(c.tool, c.old_verdict, c.new_verdict, c.new_visible) for c in changes] == [
        ("echo", None, Verdict.ALLOW, True),
        ("write_note", None, Verdict.ALLOW, True),
        ("shell_preview", None, Verdict.BLOCK, False),
    ]
    assert changes[1].argument_dependent and not changes[0].argument_dependent


def test_plan_lists_only_changes() -> None:
    assert plan(DEMO, DEMO, TOOLS) == []
    stricter = load_policy(
        demo_policy_text() + '\n[[rules]]\nid = "no-echo"\nupstream = "demo"\nname = "echo"\nverdict = "block"\n',
        "x.toml",
    )
    changes = plan(DEMO, stricter, TOOLS, actors=[ActorRef("demo-user"), ActorRef("ops", frozenset({"g"}))])
    assert [(c.tool, c.actor, c.old_verdict, c.new_verdict, c.old_visible, c.new_visible, c.new_rule_id)
            for c in changes] == [
        ("echo", "demo-user", Verdict.ALLOW, Verdict.BLOCK, True, False, "no-echo"),
        ("echo", "ops", Verdict.ALLOW, Verdict.BLOCK, True, False, "no-echo"),
    ]


def test_replay_reports_changed_verdicts() -> None:
    def call(i: str, name: str, args: dict[str, object], was: Verdict) -> RecordedCall:
        tool = {"name": name, "annotations": {"readOnlyHint": name == "echo", "destructiveHint": False}}
        return RecordedCall(i, Request(Kind.TOOL, "demo", name, "demo-user", frozenset(), args, tool), was)

    calls = [
        call("1", "echo", {"text": "hi"}, Verdict.ALLOW),
        call("2", "write_note", {"name": "shared-a", "text": "t"}, Verdict.ALLOW),
        call("3", "shell_preview", {"command": "ls"}, Verdict.ALLOW),
        call("4", "write_note", {"name": "n", "text": "t"}, Verdict.BLOCK),
    ]
    report = replay(DEMO, calls)
    assert (report.total, report.unchanged) == (4, 1)
    assert [(c.call_id, c.old_verdict, c.new_verdict, c.new_rule_id) for c in report.changed] == [
        ("2", Verdict.ALLOW, Verdict.REVIEW, "demo-shared-notes-review"),
        ("3", Verdict.ALLOW, Verdict.BLOCK, "demo-shell-block"),
        ("4", Verdict.BLOCK, Verdict.ALLOW, "demo-write-note"),
    ]
    assert report.transitions == {(Verdict.ALLOW, Verdict.REVIEW): 1, (Verdict.ALLOW, Verdict.BLOCK): 1,
                                  (Verdict.BLOCK, Verdict.ALLOW): 1}
    assert [c.call_id for c in report.more_permissive] == ["4"]
