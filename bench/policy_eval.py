"""Per-decision cost of policy evaluation at 1,000 rules (target: under 50 microseconds).

Run: .venv/bin/python bench/policy_eval.py [--rules 1000] [--decisions 200000]

The policy mixes literal-name, glob, actor, annotation and argument rules over 20 upstreams; the
requests mix matched and unmatched tools. "warm" is the steady state (the rules that can match a
tool name are memoised per policy); "cold" rebuilds that memo for every decision, the worst case.
"""

from __future__ import annotations

import argparse
import random
import time

from gateway.policy import ArgCondition, Kind, Policy, Request, Rule, evaluate

VERDICTS = ("allow", "review", "block")


def build_policy(n_rules: int, rng: random.Random) -> Policy:
    rules: list[Rule] = []
    for i in range(n_rules):
        upstream = f"up{i % 20}"
        verdict = VERDICTS[i % 3]
        shape = i % 10
        if shape < 6:
            rules.append(Rule(id=f"r{i}", verdict=verdict, upstream=upstream, name=f"tool_{i}"))
        elif shape == 6:
            rules.append(Rule(id=f"r{i}", verdict=verdict, upstream=f"up{i % 20}*", name=f"tool_{i % 100}*"))
        elif shape == 7:
            rules.append(Rule(id=f"r{i}", verdict=verdict, upstream=upstream, name=f"tool_{i}",
                              actors=("alice", "bot-*"), groups=("ops",)))
        elif shape == 8:
            rules.append(Rule(id=f"r{i}", verdict=verdict, upstream=upstream, name=f"tool_{i}",
                              annotations={"readOnlyHint": True}))
        else:
            rules.append(Rule(id=f"r{i}", verdict=verdict, upstream=upstream, name=f"tool_{i}", args=(
                ArgCondition(path="path", prefix="/workspace/"),
                ArgCondition(path="opts.depth", max=5),
                ArgCondition(path="query", regex=r"(?i).*select.*"),
            )))
    return Policy(rules=tuple(rules), trusted_upstreams=frozenset(f"up{i}" for i in range(0, 20, 2)),
                  groups={"ops": ("carol",)})


def build_requests(n_rules: int, rng: random.Random, count: int) -> list[Request]:
    out = []
    for _ in range(count):
        i = rng.randrange(n_rules * 2)  # half of the names match no literal rule
        out.append(Request(
            kind=Kind.TOOL, upstream=f"up{i % 20}", name=f"tool_{i}", actor=rng.choice(["alice", "bob", "carol"]),
            arguments={"path": "/workspace/a.txt", "opts": {"depth": rng.randrange(10)}, "query": "SELECT 1"},
            tool={"name": f"tool_{i}", "annotations": {"readOnlyHint": rng.random() < 0.5}},
        ))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(1)
    policy = build_policy(args.rules, rng)
    requests = build_requests(args.rules, rng, 2000)
    for request in requests:  # warm the per-policy memo, as a running gateway would be
        evaluate(policy, request)
    rounds = max(1, args.decisions // len(requests))
    start = time.perf_counter()
    for _ in range(rounds):
        for request in requests:
            evaluate(policy, request)
    warm = (time.perf_counter() - start) / (rounds * len(requests)) * 1e6

    cold_n = min(2000, args.decisions)
    start = time.perf_counter()
    for request in requests[:cold_n]:
        policy._index.kinds[Kind.TOOL].cache.clear()
        evaluate(policy, request)
    cold = (time.perf_counter() - start) / cold_n * 1e6
    print(f"rules: {args.rules}  decisions: {rounds * len(requests)}")
    print(f"per decision, warm: {warm:.2f} us   cold (no memo): {cold:.2f} us   target: < 50 us")


if __name__ == "__main__":
    main()
