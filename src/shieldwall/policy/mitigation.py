"""The policy's `mitigation:` section: what the daemon may do by itself when a source
floods (docs/policy.md, "Mitigation"; ops/mitigate.py does it).

It names a set of the policy that a rule already reads, so every entry it adds takes
effect the way `shieldwall set add --ttl` does, and an operator can see and revert it
with the same commands. Its bounds are part of the policy: what the daemon may hold at
once, how fast it may add, and what it must never block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import Invalid, quote
from .model import AddrValue, Events, PrefixSet, PrefixTable, RuleSet, expand
from .validator import Validator
from .values import describe, parse_duration, parse_rate

MODES = ("monitor", "enforce")
_KEYS = ("mode", "block_set", "limit_set", "heavy", "release", "anomaly", "ttl",
         "max_entries", "max_per_minute", "never", "prefix4", "prefix6")
_HEAVY_KEYS = ("pps", "share")
_RELEASE_KEYS = ("pps",)
_ANOMALY_KEYS = ("factor", "min_pps", "warmup", "pps")
# A source's estimated rate is at most what one interface can carry.
MAX_PPS = 1_000_000_000
MAX_ENTRIES = 100_000
MAX_PER_MINUTE = 100_000
MAX_TTL = 7 * 86400.0


@dataclass(frozen=True)
class Mitigation:
    """A validated `mitigation:` section. Rates are packets per second; durations are
    seconds."""

    mode: str = "monitor"
    set: str = ""                 # the set entries go to
    kind: str = "block"           # block (a drop rule reads the set) or limit
    rules: tuple[int, ...] = ()   # ids of the rules that read the set
    rule_names: tuple[str, ...] = ()
    heavy_pps: int = 10_000
    heavy_share: float = 0.1
    release_pps: int = 0          # 0: heavy_pps / 4
    anomaly_factor: float = 4.0
    anomaly_min_pps: int = 1_000
    anomaly_warmup: float = 60.0
    anomaly_pps: int = 0          # 0: heavy_pps / 4
    ttl: float = 60.0
    max_entries: int = 1_000
    max_per_minute: int = 60
    never: tuple[AddrValue, ...] = ()
    prefix4: int = 32
    prefix6: int = 128
    # Sources the policy lets through on purpose: the fastpath's allow list and the
    # plain `src` items of rules that pass. Never blocked, as `never`.
    allowed: tuple[AddrValue, ...] = ()

    @property
    def enforce(self) -> bool:
        return self.mode == "enforce"

    @property
    def release(self) -> int:
        return self.release_pps or max(1, self.heavy_pps // 4)

    @property
    def under_anomaly_pps(self) -> int:
        return self.anomaly_pps or max(1, self.heavy_pps // 4)

    def summary(self) -> list[str]:
        """Its lines in `check`."""
        what = "blocks" if self.kind == "block" else "limits"
        verb = "reports what it would do" if self.mode == "monitor" else "acts"
        return [f"mitigation: {self.mode} ({verb}): {what} sources of at least "
                f"{self.heavy_pps:,} pps and {self.heavy_share:.0%} of the traffic through set "
                f"{self.set} (read by {', '.join(self.rule_names) or 'fastpath.deny'}), for "
                f"{self.ttl:g} s renewed while at least {self.release:,} pps; at most "
                f"{self.max_entries:,} entries, {self.max_per_minute:,} new a minute"]

    def spared(self) -> PrefixTable:
        """Every prefix it must never block (the host's own addresses come at run time)."""
        return PrefixTable(expand((*self.never, *self.allowed)))


def _share(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise Invalid(f"expected a share above 0 and at most 1 (0.1 is a tenth), got {describe(value)}")
    return float(value)


def _factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value <= 1000:
        raise Invalid(f"expected a factor above 1 and at most 1000, got {describe(value)}")
    return float(value)


def _count(value: Any, top: int) -> int:
    if type(value) is not int or not 0 < value <= top:
        raise Invalid(f"expected a whole number from 1 to {top:,}, got {describe(value)}")
    return value


def _length(value: Any, top: int) -> int:
    if type(value) is not int or not 8 <= value <= top:
        raise Invalid(f"expected a prefix length from 8 to {top}, got {describe(value)}")
    return value


def _duration(value: Any, top: float = MAX_TTL) -> float:
    seconds = parse_duration(value)
    if seconds > top:
        raise Invalid(f"{quote(value)}: at most {int(top)} seconds")
    return seconds


def _reads(rule, name: str) -> bool:
    """Whether a rule's `src` holds every member of the set (a plain item naming it)."""
    src = rule.match.src
    return src is not None and any(isinstance(value, PrefixSet) and value.name == name
                                   for value in src.plain) and not src.negated


def read(value: Any, events: Events | None, sections: dict[str, Any], v: Validator) -> Mitigation | None:
    """The section, validated; problems go to v with their paths (`mitigation.heavy.pps`)."""
    spec = v.mapping(value, "mitigation", _KEYS)
    if spec is None:
        return None
    errors = len(v.issues)
    out: dict[str, Any] = {}
    if "mode" in spec:
        if spec["mode"] not in MODES:
            v.report("mitigation.mode", f"expected one of {', '.join(MODES)}, got {describe(spec['mode'])}")
        else:
            out["mode"] = spec["mode"]
    else:
        v.report("mitigation", "missing key 'mode' (monitor only reports, enforce blocks)")
    out.update(_target(spec, sections, v))
    for key, keys in (("heavy", _HEAVY_KEYS), ("release", _RELEASE_KEYS),
                      ("anomaly", _ANOMALY_KEYS)):
        if key not in spec:
            continue
        part = v.mapping(spec[key], f"mitigation.{key}", keys) or {}
        at = f"mitigation.{key}"
        for name, raw in part.items():
            if name not in keys:
                continue
            if name in ("pps", "min_pps"):
                got = v.check(f"{at}.{name}", parse_rate, raw, "packets per second", MAX_PPS)
            elif name == "share":
                got = v.check(f"{at}.{name}", _share, raw)
            elif name == "factor":
                got = v.check(f"{at}.{name}", _factor, raw)
            else:  # warmup
                got = v.check(f"{at}.{name}", _duration, raw, 86400.0)
            if got is not None:
                out[f"{key}_{name}"] = got
    if "ttl" in spec:
        got = v.check("mitigation.ttl", _duration, spec["ttl"])
        if got is not None:
            out["ttl"] = got
    for key, top in (("max_entries", MAX_ENTRIES), ("max_per_minute", MAX_PER_MINUTE)):
        if key in spec:
            got = v.check(f"mitigation.{key}", _count, spec[key], top)
            if got is not None:
                out[key] = got
    for key, top in (("prefix4", 32), ("prefix6", 128)):
        if key in spec:
            got = v.check(f"mitigation.{key}", _length, spec[key], top)
            if got is not None:
                out[key] = got
    never = []
    for index, item in enumerate(v.sequence(spec.get("never", []), "mitigation.never")):
        got = v.check(f"mitigation.never[{index}]", v.address, item)
        if got is not None:
            never.append(got)
    out["never"] = tuple(never)
    if out.get("release_pps", 0) > out.get("heavy_pps", Mitigation.heavy_pps):
        v.report("mitigation.release.pps", f"{out['release_pps']} is above heavy.pps "
                 f"({out.get('heavy_pps', Mitigation.heavy_pps)}): a block would be released while "
                 "its source is still hot")
    _sampling(events, v)
    out["allowed"] = _allowed(sections)
    if len(v.issues) > errors:
        return None
    return Mitigation(**out)


def _target(spec: dict, sections: dict[str, Any], v: Validator) -> dict[str, Any]:
    """The set entries go to, checked against the rules that read it."""
    given = [key for key in ("block_set", "limit_set") if key in spec]
    if len(given) != 1:
        v.report("mitigation", "name the set its entries go to: block_set (a set a drop rule "
                 "reads as src) or limit_set (one a limit rule reads), one of the two")
        return {}
    key = given[0]
    at = f"mitigation.{key}"
    name = spec[key]
    if not isinstance(name, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$", name):
        v.report(at, f"expected a set name, got {describe(name)}")
        return {}
    if name not in v.sets:
        v.report(at, f"unknown set {quote(name)} (defined sets: {', '.join(v.sets) or 'none'})")
        return {}
    ruleset = sections.get("policy")
    rules = ruleset.rules if isinstance(ruleset, RuleSet) else ()
    if key == "block_set":
        found = [r for r in rules if _reads(r, name) and r.action.name == "drop"]
        readers = tuple(r.id for r in found)
        fastpath = sections.get("fastpath")
        denied = fastpath is not None and any(isinstance(x, PrefixSet) and x.name == name
                                              for x in getattr(fastpath, "deny", ()))
        if not readers and not denied:
            v.report(at, f"set {quote(name)} is read by no drop rule (match: {{src: '@{name}'}}, "
                     "action: drop) nor by fastpath.deny: its entries would block nothing")
            return {}
        return {"set": name, "kind": "block", "rules": readers,
                "rule_names": tuple(r.name for r in found)}
    found = [r for r in rules if _reads(r, name) and r.action.limit is not None]
    readers = tuple(r.id for r in found)
    if not readers:
        v.report(at, f"set {quote(name)} is read by no limit rule (match: {{src: '@{name}'}}, "
                 "action: {limit: NAME}): its entries would limit nothing")
        return {}
    return {"set": name, "kind": "limit", "rules": readers,
            "rule_names": tuple(r.name for r in found)}


def _sampling(events: Events | None, v: Validator) -> None:
    """A new flood passes until it is blocked, so only pass samples show it. (None: the
    events section is invalid, and said so.)"""
    if events is not None and (not events.rate or not events.passes):
        v.report("mitigation", "needs samples of passed packets, where a new flood shows: "
                 "set events: {passes: N} (1 in N passed packets; 100 is a fair start)")


def _allowed(sections: dict[str, Any]) -> tuple[AddrValue, ...]:
    found: list[AddrValue] = list(getattr(sections.get("fastpath"), "allow", ()) or ())
    ruleset = sections.get("policy")
    for rule in (ruleset.rules if isinstance(ruleset, RuleSet) else ()):
        if rule.action.name == "pass" and rule.match.src is not None:
            found.extend(rule.match.src.plain)
    return tuple(found)
