"""The rules section of a policy file (`default_action` and `rules`): the policy
stage's part of the document, validated into a RuleSet."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from typing import Any, Callable

from .errors import Invalid, quote
from .model import (DOMAINS, Family, Fragment, Items, Match, Network, PrefixSet, Rule, RuleSet, Segment,
                    State)
from .validator import NAME, Validator
from .values import (
    parse_action,
    parse_choice,
    parse_items,
    parse_range,
    parse_tcp_flags,
    parse_verdict,
    describe,
    string,
)

# Rule names end up in counters and metrics labels.
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_RULE_KEYS = ("name", "match", "action", "description")
_MATCH_KEYS = tuple(f.name for f in fields(Match))


def parse_ruleset(doc: dict, v: Validator) -> RuleSet | None:
    """`default_action` (required), `segments` and `rules` of the document."""
    if "default_action" not in doc:
        v.report("", "missing key 'default_action'")
    default = v.check("default_action", parse_verdict, doc.get("default_action", "pass"))
    first_seen: dict[str, str] = {}
    segments = parse_segments(doc.get("segments", {}), v, first_seen)
    ahead = sum(len(s.rules) for s in segments)
    rules = parse_rules(doc.get("rules", []), v, first_seen, ahead)
    if default is None:
        return None
    everything = tuple(r for s in segments for r in s.rules) + rules
    v.within_capacity("rules", len(everything), v.capacity.rules, "rules (with the segments')")
    return RuleSet(default, everything, tuple(segments))  # type: ignore[arg-type]


def parse_rules(value: Any, v: Validator, first_seen: dict[str, str] | None = None,
                ahead: int = 0, at: str = "rules", dst: Items | None = None) -> tuple[Rule, ...]:
    """A list of rules at path `at`; their ids start after `ahead` rules; `dst`: the
    destinations of the segment they belong to."""
    listed = v.sequence(value, at)
    if not v.within_capacity(at, len(listed), v.capacity.rules, "rules"):
        return ()
    rules = []
    first_seen = {} if first_seen is None else first_seen
    for index, spec in enumerate(listed):
        rule = _rule(v, index, spec, first_seen, ahead, at, dst)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


# A segment's file is a list of rules, a few kilobytes; the same bound as a policy.
MAX_SEGMENT_BYTES = 16 << 20


def parse_segments(value: Any, v: Validator, first_seen: dict[str, str]) -> list[Segment]:
    """`segments: {NAME: {dst: [prefixes], file: FILE}}`: each segment's rules, read
    from its file, matching only its destinations (which no other segment shares)."""
    if not isinstance(value, dict):
        v.report("segments", f"expected a mapping of segment names, got {describe(value)}")
        return []
    found: list[Segment] = []
    owners: list[tuple[Network, str]] = []
    for name, spec in value.items():
        if not isinstance(name, str) or not NAME.match(name):
            v.report("segments", f"invalid segment name {quote(name)} (letters, digits, _ and -)")
            continue
        path = f"segments.{name}"
        spec = v.mapping(spec, path, ("dst", "file", "description"), required=("dst", "file"))
        if spec is None:
            continue
        dst = v.check(f"{path}.dst", parse_items, spec["dst"], v.address)
        shown = v.check(f"{path}.file", string, spec["file"], "a file name")
        if dst is None or shown is None:
            continue
        if dst.negated or any(isinstance(x, PrefixSet) for x in dst.plain):
            v.report(f"{path}.dst", "a segment's destinations are prefixes, not sets or negations")
            continue
        clash = False
        for net in dst.plain:
            for other, owner in owners:
                if net.version == other.version and (net.subnet_of(other) or other.subnet_of(net)):
                    v.report(f"{path}.dst", f"{net} overlaps {other} of segment {owner}: "
                             "a destination belongs to one segment")
                    clash = True
            owners.append((net, name))
        doc = _segment_file(v, f"{path}.file", shown)
        if doc is None or clash:
            continue
        ahead = sum(len(s.rules) for s in found)
        rules = parse_rules(doc.get("rules", []), v, first_seen, ahead, f"{path}.rules", dst)
        found.append(Segment(name, tuple(dst.plain), shown, rules))
    return found


def _segment_file(v: Validator, at: str, shown: str) -> dict | None:
    from .files import read_bounded
    from .load import load_yaml
    try:
        text = read_bounded(v.file(shown), MAX_SEGMENT_BYTES).decode("utf-8")
    except (OSError, ValueError) as exc:
        v.report(at, f"cannot read {quote(shown)}: {getattr(exc, 'strerror', None) or exc}")
        return None
    try:
        doc = load_yaml(text)
    except Invalid as exc:
        v.report(at, f"{quote(shown)}: {exc}")
        return None
    if doc is None:
        return {}
    spec = v.mapping(doc, f"{at}", ("rules",))
    return spec


def _rule(v: Validator, index: int, value: Any, first_seen: dict[str, str], ahead: int = 0,
          at: str = "rules", dst: Items | None = None) -> Rule | None:
    path = f"{at}[{index}]"
    spec = v.mapping(value, path, _RULE_KEYS, required=("name", "action"))
    if spec is None:
        return None
    name = action = None
    if "name" in spec:
        name = v.check(f"{path}.name", rule_name, spec["name"])
    if name in first_seen:
        v.report(f"{path}.name", f"duplicate rule name {name!r} (first at {first_seen[name]})")
    elif name is not None:
        first_seen[name] = path
    if "action" in spec:
        action = v.check(f"{path}.action", parse_action, spec["action"])
    match = _match(v, spec.get("match", {}), f"{path}.match")
    if dst is not None and match is not None:
        if match.dst is not None:
            v.report(f"{path}.match.dst", "a segment's rules take their destinations from the segment")
            match = None
        else:
            match = replace(match, dst=dst)
    description = None
    if "description" in spec:
        description = v.check(f"{path}.description", string, spec["description"], "a string")
    if name is None or action is None or match is None:
        return None
    return Rule(ahead + index + 1, name, match, action, description)


def rule_name(value: Any) -> str:
    name = string(value, "a rule name")
    if not _RULE_NAME.match(name):
        raise Invalid(
            f"invalid rule name {quote(name)} "
            "(1-64 letters, digits, _ . : -, not starting with a symbol)"
        )
    return name


def _match(v: Validator, value: Any, path: str) -> Match | None:
    if value is None:
        problem = "expected a mapping, got nothing (null): write {} to match every packet"
        v.report(path, problem)
        return None
    spec = v.mapping(value, path, _MATCH_KEYS)
    if spec is None:
        return None
    parsed: dict[str, Any] = {}
    failed = False
    for key, raw in spec.items():
        parse = _match_field(v, key)
        if parse is None:
            continue  # unknown key, already reported
        parsed[key] = v.check(f"{path}.{key}", parse, raw)
        failed |= parsed[key] is None
    return None if failed else Match(**parsed)


def _match_field(v: Validator, key: str) -> Callable[[Any], Any] | None:
    if key in ("src", "dst"):
        return lambda raw: parse_items(raw, v.address)
    if key in DOMAINS:
        domain = DOMAINS[key]
        return lambda raw: parse_items(raw, lambda item: parse_range(item, domain))
    if key == "tcp_flags":
        return parse_tcp_flags
    if key == "fragment":
        return lambda raw: parse_choice(raw, Fragment, "fragment")
    if key == "family":
        return lambda raw: parse_choice(raw, Family, "family")
    if key == "state":
        return lambda raw: parse_choice(raw, State, "state")
    return None
