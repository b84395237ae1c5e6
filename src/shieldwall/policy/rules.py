"""The rules section of a policy file (`default_action` and `rules`): the policy
stage's part of the document, validated into a RuleSet."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any, Callable

from .errors import Invalid, quote
from .model import DOMAINS, Family, Fragment, Match, Rule, RuleSet
from .validator import Validator
from .values import (
    parse_action,
    parse_choice,
    parse_items,
    parse_range,
    parse_tcp_flags,
    parse_verdict,
    string,
)

# Rule names end up in counters and metrics labels.
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_RULE_KEYS = ("name", "match", "action", "description")
_MATCH_KEYS = tuple(f.name for f in fields(Match))


def parse_ruleset(doc: dict, v: Validator) -> RuleSet | None:
    """`default_action` (required) and `rules` of the document."""
    if "default_action" not in doc:
        v.report("", "missing key 'default_action'")
    default = v.check("default_action", parse_verdict, doc.get("default_action", "pass"))
    rules = parse_rules(doc.get("rules", []), v)
    return RuleSet(default, rules) if default is not None else None  # type: ignore[arg-type]


def parse_rules(value: Any, v: Validator) -> tuple[Rule, ...]:
    listed = v.sequence(value, "rules")
    if not v.within_capacity("rules", len(listed), v.capacity.rules, "rules"):
        return ()
    rules = []
    first_seen: dict[str, int] = {}
    for index, spec in enumerate(listed):
        rule = _rule(v, index, spec, first_seen)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _rule(v: Validator, index: int, value: Any, first_seen: dict[str, int]) -> Rule | None:
    path = f"rules[{index}]"
    spec = v.mapping(value, path, _RULE_KEYS, required=("name", "action"))
    if spec is None:
        return None
    name = action = None
    if "name" in spec:
        name = v.check(f"{path}.name", rule_name, spec["name"])
    if name in first_seen:
        first = f"rules[{first_seen[name]}]"
        v.report(f"{path}.name", f"duplicate rule name {name!r} (first at {first})")
    elif name is not None:
        first_seen[name] = index
    if "action" in spec:
        action = v.check(f"{path}.action", parse_action, spec["action"])
    match = _match(v, spec.get("match", {}), f"{path}.match")
    description = None
    if "description" in spec:
        description = v.check(f"{path}.description", string, spec["description"], "a string")
    if name is None or action is None or match is None:
        return None
    return Rule(index + 1, name, match, action, description)


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
    return None
