"""Load a policy from TOML text, strictly: every problem is reported with file, line and field.

A policy that fails here is never applied (nothing fails open), so the checks are deliberately
strict: unknown keys, wrong types, bad globs and regexes, duplicate ids and bad verdicts are all
errors, and all of them are listed at once so one edit round fixes a file.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from importlib import resources
from typing import Any

from gateway.errors import AegressError, InvalidInput
from gateway.policy._locate import Path, key_lines
from gateway.policy._match import GlobSet, compile_regex, split_path
from gateway.policy.model import (
    ANNOTATION_HINTS,
    CLIENT_REQUESTS,
    FORMAT_VERSION,
    RESERVED_RULE_IDS,
    ArgCondition,
    Builtins,
    Kind,
    Policy,
    RateLimit,
    RateLimits,
    ReviewMode,
    ReviewSettings,
    Rule,
    Verdict,
)

MAX_HOLD_TIMEOUT_SECONDS = 600
MAX_APPROVAL_LIFETIME_SECONDS = 7 * 24 * 3600
_VERDICTS = tuple(v.value for v in Verdict)
_KINDS = tuple(k.value for k in Kind)
_MODES = tuple(m.value for m in ReviewMode)
_RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_CONDITIONS = ("equals", "one_of", "prefix", "regex", "min", "max", "max_length", "present")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file; `line` is None only when no line could be found."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PolicyInvalid(InvalidInput):
    """A policy file that must not be applied; `problems` lists every finding."""

    code = "policy-invalid"

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(
            "invalid policy:\n" + "\n".join(f"  {p}" for p in problems),
            hint="fix the fields listed above (format reference: docs/policy.md)",
        )


def load_policy(text: str, filename: str = "<policy>") -> Policy:
    """Parse and validate policy TOML into a Policy, or raise PolicyInvalid listing every problem."""
    policy, problems = _load(text, filename)
    if problems or policy is None:
        raise PolicyInvalid(problems)
    return policy


def check_policy(text: str, filename: str = "<policy>") -> list[Problem]:
    """The problems `load_policy` would raise, as a list (empty when the file is valid)."""
    return _load(text, filename)[1]


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of the policy format, for editors (same file as gateway/policy/schema.json)."""
    data: dict[str, Any] = json.loads(resources.files("gateway.policy").joinpath("schema.json").read_text("utf-8"))
    return data


def starter_policy_text() -> str:
    """The commented starter file `aegress policy init` writes."""
    return resources.files("gateway.policy").joinpath("starter.toml").read_text("utf-8")


def demo_policy_text() -> str:
    """The demo tenant's policy: allow, review and block on the bundled `demo` upstream."""
    return resources.files("gateway.policy").joinpath("demo.toml").read_text("utf-8")


def _load(text: str, filename: str) -> tuple[Policy | None, list[Problem]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        line = int(found.group(1)) if found else None
        return None, [Problem(filename, line, "", f"not valid TOML: {exc}")]
    checker = _Checker(filename, key_lines(text))
    policy = checker.policy(data)
    problems = sorted(checker.problems, key=lambda p: (p.line or 0, p.field))
    return (None if problems else policy), problems


def _field_name(path: Path) -> str:
    out = ""
    for seg in path:
        if isinstance(seg, int):
            out += f"[{seg}]"
        else:
            text = seg if _BARE_KEY.match(seg) else json.dumps(seg)
            out += f".{text}" if out else text
    return out


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


class _Checker:
    """Walks the parsed TOML, records problems with their lines, and builds the model parts."""

    def __init__(self, filename: str, lines: dict[Path, int]) -> None:
        self.filename = filename
        self.lines = lines
        self.problems: list[Problem] = []

    def err(self, path: Path, message: str) -> None:
        probe = path
        line = None
        while True:
            if probe in self.lines:
                line = self.lines[probe]
                break
            if not probe:
                break
            probe = probe[:-1]
        self.problems.append(Problem(self.filename, line, _field_name(path), message))

    # -- small typed getters: each returns None (and records a problem) when the value is wrong

    def keys(self, table: Mapping[str, Any], path: Path, allowed: tuple[str, ...]) -> None:
        for key in table:
            if key not in allowed:
                self.err((*path, key), f"unknown key (allowed: {', '.join(allowed)})")

    def table(self, value: Any, path: Path) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.err(path, f"must be a table, got {_type_name(value)}")
            return None
        return value

    def string(self, value: Any, path: Path, *, nonempty: bool = True) -> str | None:
        if not isinstance(value, str):
            self.err(path, f"must be a string, got {_type_name(value)}")
            return None
        if nonempty and not value:
            self.err(path, "must not be empty")
            return None
        return value

    def choice(self, value: Any, path: Path, options: tuple[str, ...]) -> str | None:
        if not isinstance(value, str) or value not in options:
            self.err(path, f"must be one of {', '.join(options)} (got {json.dumps(value, default=str)})")
            return None
        return value

    def number(self, value: Any, path: Path, low: float, high: float, *, integer: bool = False) -> float | None:
        ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type:
            self.err(path, f"must be {'an integer' if integer else 'a number'}, got {_type_name(value)}")
            return None
        if not low <= value <= high:
            self.err(path, f"must be between {low:g} and {high:g} (got {value})")
            return None
        return value

    def strings(self, value: Any, path: Path, check: Callable[[str, Path], bool] | None = None,
                *, allow_single: bool = False) -> tuple[str, ...] | None:
        if allow_single and isinstance(value, str):
            value = [value]
            single = True
        else:
            single = False
        if not isinstance(value, list):
            kind = "a string or an array of strings" if allow_single else "an array of strings"
            self.err(path, f"must be {kind}, got {_type_name(value)}")
            return None
        out: list[str] = []
        ok = True
        for n, item in enumerate(value):
            item_path = path if single else (*path, n)
            s = self.string(item, item_path)
            if s is None or (check is not None and not check(s, item_path)):
                ok = False
                continue
            out.append(s)
        return tuple(out) if ok else None

    def glob(self, pattern: str, path: Path) -> bool:
        try:
            GlobSet([pattern])
        except ValueError as exc:
            self.err(path, str(exc))
            return False
        return True

    # -- the document

    def policy(self, data: dict[str, Any]) -> Policy | None:
        allowed = ("version", "default", "trusted_upstreams", "origins", "review", "builtin", "groups",
                   "rate_limits", "pins", "rules")
        self.keys(data, (), allowed)
        if "version" not in data:
            self.err((), f"missing required key 'version' (add: version = {FORMAT_VERSION})")
        elif data["version"] != FORMAT_VERSION or isinstance(data["version"], bool):
            self.err(("version",), f"unsupported format version {data['version']!r} (expected {FORMAT_VERSION})")
        default = Verdict.BLOCK
        if "default" in data:
            got = self.choice(data["default"], ("default",), _VERDICTS)
            default = Verdict(got) if got else default
        trusted = self.strings(data.get("trusted_upstreams", []), ("trusted_upstreams",)) or ()
        origins = self.strings(data.get("origins", []), ("origins",), self._origin) or ()
        review = self.review(data.get("review", {}), ("review",))
        builtins = self.builtins(data.get("builtin", {}), ("builtin",))
        groups = self.groups(data.get("groups", {}), ("groups",))
        rate_limits = self.rate_limits(data.get("rate_limits", {}), ("rate_limits",))
        pins = self.pins(data.get("pins", {}), ("pins",))
        rules = self.rules(data.get("rules", []), ("rules",), review.mode)
        if self.problems:
            return None
        try:
            return Policy(
                rules=tuple(rules), default=default, review=review, builtins=builtins,
                trusted_upstreams=frozenset(trusted), origins=origins, groups=groups,
                rate_limits=rate_limits, pins=pins, source=self.filename,
            )
        except AegressError as exc:
            self.err((), exc.message)
            return None

    def _origin(self, value: str, path: Path) -> bool:
        if not _ORIGIN.match(value):
            self.err(path, f"bad origin {value!r}: expected scheme://host[:port], e.g. https://app.example.com")
            return False
        return True

    def review(self, value: Any, path: Path) -> ReviewSettings:
        table = self.table(value, path)
        if table is None:
            return ReviewSettings()
        self.keys(table, path, ("mode", "hold_timeout_seconds", "approval_lifetime_seconds"))
        settings = ReviewSettings()
        if "mode" in table:
            mode = self.choice(table["mode"], (*path, "mode"), _MODES)
            if mode:
                settings = ReviewSettings(mode=ReviewMode(mode))
        hold = settings.hold_timeout_seconds
        if "hold_timeout_seconds" in table:
            hold = self.number(table["hold_timeout_seconds"], (*path, "hold_timeout_seconds"), 1,
                               MAX_HOLD_TIMEOUT_SECONDS) or hold
        life = settings.approval_lifetime_seconds
        if "approval_lifetime_seconds" in table:
            life = self.number(table["approval_lifetime_seconds"], (*path, "approval_lifetime_seconds"), 1,
                               MAX_APPROVAL_LIFETIME_SECONDS) or life
        return ReviewSettings(mode=settings.mode, hold_timeout_seconds=float(hold),
                              approval_lifetime_seconds=float(life))

    def builtins(self, value: Any, path: Path) -> Builtins:
        table = self.table(value, path)
        if table is None:
            return Builtins()
        self.keys(table, path, ("destructive", "trusted_read_only"))
        out: dict[str, Verdict | None] = {}
        for key in ("destructive", "trusted_read_only"):
            if key in table:
                got = self.choice(table[key], (*path, key), (*_VERDICTS, "off"))
                if got is not None:
                    out[key] = None if got == "off" else Verdict(got)
        return Builtins(**out)  # type: ignore[arg-type]

    def groups(self, value: Any, path: Path) -> dict[str, tuple[str, ...]]:
        table = self.table(value, path)
        out: dict[str, tuple[str, ...]] = {}
        for name, members in (table or {}).items():
            got = self.strings(members, (*path, name))
            if got is not None:
                out[name] = got
        return out

    def rate_limit(self, value: Any, path: Path) -> RateLimit | None:
        table = self.table(value, path)
        if table is None:
            return None
        self.keys(table, path, ("calls", "per_seconds"))
        for key in ("calls", "per_seconds"):
            if key not in table:
                self.err(path, f"missing required key {key!r}")
        calls = self.number(table.get("calls", 1), (*path, "calls"), 1, 10**9, integer=True)
        per = self.number(table.get("per_seconds", 1), (*path, "per_seconds"), 0.001, 86400 * 31)
        if calls is None or per is None or "calls" not in table or "per_seconds" not in table:
            return None
        return RateLimit(calls=int(calls), per_seconds=float(per))

    def rate_limits(self, value: Any, path: Path) -> RateLimits:
        table = self.table(value, path)
        if table is None:
            return RateLimits()
        self.keys(table, path, ("default", "actors", "groups"))
        default = self.rate_limit(table["default"], (*path, "default")) if "default" in table else None
        by: dict[str, dict[str, RateLimit]] = {"actors": {}, "groups": {}}
        for key in ("actors", "groups"):
            sub = self.table(table[key], (*path, key)) if key in table else None
            for name, limit in (sub or {}).items():
                got = self.rate_limit(limit, (*path, key, name))
                if got is not None:
                    by[key][name] = got
        return RateLimits(default=default, actors=by["actors"], groups=by["groups"])

    def pins(self, value: Any, path: Path) -> dict[str, dict[str, str]]:
        table = self.table(value, path)
        out: dict[str, dict[str, str]] = {}
        for upstream, tools in (table or {}).items():
            sub = self.table(tools, (*path, upstream))
            if sub is None:
                continue
            out[upstream] = {}
            for tool, digest in sub.items():
                if not isinstance(digest, str) or not _PIN.match(digest):
                    self.err((*path, upstream, tool), "must be a tool definition hash: sha256:<64 hex digits>")
                else:
                    out[upstream][tool] = digest
        return out

    def rules(self, value: Any, path: Path, policy_mode: ReviewMode) -> list[Rule]:
        if not isinstance(value, list):
            self.err(path, f"must be an array of tables ([[rules]]), got {_type_name(value)}")
            return []
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for n, item in enumerate(value):
            rule = self.rule(item, (*path, n))
            if rule is None:
                continue
            if rule.id in seen:
                self.err((*path, n, "id"), f"duplicate rule id {rule.id!r} (first used by rules[{seen[rule.id]}])")
                continue
            seen[rule.id] = n
            rules.append(rule)
        return rules

    def rule(self, value: Any, path: Path) -> Rule | None:
        table = self.table(value, path)
        if table is None:
            return None
        allowed = ("id", "kind", "upstream", "name", "actors", "groups", "annotations", "args", "verdict",
                   "reason", "review_mode")
        before = len(self.problems)
        self.keys(table, path, allowed)
        rule_id = None
        if "id" not in table:
            self.err(path, "missing required key 'id'")
        else:
            rule_id = self.string(table["id"], (*path, "id"))
            if rule_id is not None and (not _RULE_ID.match(rule_id) or rule_id in RESERVED_RULE_IDS):
                self.err((*path, "id"), f"bad rule id {rule_id!r}: letters, digits and _.:- only, "
                         f"not one of {', '.join(sorted(RESERVED_RULE_IDS))}")
        verdict = None
        if "verdict" not in table:
            self.err(path, "missing required key 'verdict' (allow, review or block)")
        else:
            verdict = self.choice(table["verdict"], (*path, "verdict"), _VERDICTS)
        kind = Kind.TOOL
        if "kind" in table:
            got = self.choice(table["kind"], (*path, "kind"), _KINDS)
            kind = Kind(got) if got else kind
        globs: dict[str, tuple[str, ...]] = {}
        for key in ("upstream", "name", "actors"):
            if key in table:
                got_globs = self.strings(table[key], (*path, key), self.glob, allow_single=True)
                if got_globs is not None:
                    globs[key] = got_globs
        if kind is Kind.CLIENT_REQUEST:
            for n, name in enumerate(globs.get("name", ())):
                if GlobSet([name]).literals is not None and name not in CLIENT_REQUESTS:
                    self.err((*path, "name") if isinstance(table.get("name"), str) else (*path, "name", n),
                             f"client requests are {', '.join(CLIENT_REQUESTS)} (got {name!r})")
        groups = self.strings(table["groups"], (*path, "groups"), allow_single=True) if "groups" in table else ()
        annotations: dict[str, bool] = {}
        if "annotations" in table:
            ann = self.table(table["annotations"], (*path, "annotations"))
            if ann is not None and kind is not Kind.TOOL:
                self.err((*path, "annotations"), "annotations only apply to rules with kind = \"tool\"")
            for hint, flag in (ann or {}).items():
                if hint not in ANNOTATION_HINTS:
                    allowed_hints = ", ".join(ANNOTATION_HINTS)
                    self.err((*path, "annotations", hint), f"unknown annotation (allowed: {allowed_hints})")
                elif not isinstance(flag, bool):
                    self.err((*path, "annotations", hint), f"must be true or false, got {_type_name(flag)}")
                else:
                    annotations[hint] = flag
        args = self.args(table["args"], (*path, "args")) if "args" in table else []
        reason = self.string(table["reason"], (*path, "reason")) if "reason" in table else None
        review_mode = None
        if "review_mode" in table:
            got_mode = self.choice(table["review_mode"], (*path, "review_mode"), _MODES)
            review_mode = ReviewMode(got_mode) if got_mode else None
            if verdict is not None and verdict != Verdict.REVIEW:
                self.err((*path, "review_mode"), "review_mode only applies to rules with verdict = \"review\"")
        if len(self.problems) > before or rule_id is None or verdict is None:
            return None
        try:
            return Rule(
                id=rule_id, verdict=Verdict(verdict), kind=kind,
                upstream=globs.get("upstream", ("*",)), name=globs.get("name", ("*",)),
                actors=globs.get("actors", ()), groups=groups or (), annotations=annotations,
                args=tuple(args), reason=reason, review_mode=review_mode,
            )
        except AegressError as exc:
            self.err(path, exc.message)
            return None

    def args(self, value: Any, path: Path) -> list[ArgCondition]:
        table = self.table(value, path)
        out: list[ArgCondition] = []
        for arg_path, spec in (table or {}).items():
            here = (*path, arg_path)
            try:
                split_path(arg_path)
            except ValueError as exc:
                self.err(here, str(exc))
                continue
            cond = self.table(spec, here)
            if cond is None:
                continue
            unknown = [k for k in cond if k not in _CONDITIONS]
            if unknown:
                for key in unknown:
                    hint = ""
                    if isinstance(cond[key], dict):
                        hint = f" (to match the nested argument, quote the path: \"{arg_path}.{key}\" = {{ ... }})"
                    self.err((*here, key), f"unknown condition (allowed: {', '.join(_CONDITIONS)}){hint}")
                continue
            if not cond:
                self.err(here, "no condition given")
                continue
            got = self.condition(arg_path, cond, here)
            if got is not None:
                out.append(got)
        return out

    def condition(self, arg_path: str, cond: dict[str, Any], path: Path) -> ArgCondition | None:
        before = len(self.problems)
        fields: dict[str, Any] = {}
        if "equals" in cond and self.json_value(cond["equals"], (*path, "equals")):
            fields["equals"] = cond["equals"]
        if "one_of" in cond:
            options = cond["one_of"]
            if not isinstance(options, list) or not options:
                self.err((*path, "one_of"), "must be a non-empty array")
            elif all(self.json_value(o, (*path, "one_of", n)) for n, o in enumerate(options)):
                fields["one_of"] = tuple(options)
        if "prefix" in cond:
            fields["prefix"] = self.string(cond["prefix"], (*path, "prefix"), nonempty=False)
        if "regex" in cond:
            pattern = self.string(cond["regex"], (*path, "regex"), nonempty=False)
            if pattern is not None:
                try:
                    compile_regex(pattern)
                    fields["regex"] = pattern
                except ValueError as exc:
                    self.err((*path, "regex"), str(exc))
        for key in ("min", "max"):
            if key in cond:
                fields[key] = self.number(cond[key], (*path, key), float("-inf"), float("inf"))
        if "max_length" in cond:
            fields["max_length"] = self.number(cond["max_length"], (*path, "max_length"), 0, 2**31, integer=True)
        if "present" in cond:
            if not isinstance(cond["present"], bool):
                self.err((*path, "present"), f"must be true or false, got {_type_name(cond['present'])}")
            else:
                fields["present"] = cond["present"]
                if cond["present"] is False and len(cond) > 1:
                    self.err((*path, "present"), "present = false cannot be combined with other conditions")
        if fields.get("min") is not None and fields.get("max") is not None and fields["min"] > fields["max"]:
            self.err((*path, "min"), f"min ({fields['min']}) is greater than max ({fields['max']})")
        if len(self.problems) > before:
            return None
        return ArgCondition(path=arg_path, **fields)

    def json_value(self, value: Any, path: Path) -> bool:
        if isinstance(value, datetime | date | time):
            self.err(path, "dates and times are not JSON values; write them as strings")
            return False
        if isinstance(value, list):
            return all(self.json_value(v, (*path, n)) for n, v in enumerate(value))
        if isinstance(value, dict):
            return all(self.json_value(v, (*path, k)) for k, v in value.items())
        return True
