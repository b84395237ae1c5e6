"""Reading a policy file and validating it into a Policy.

Validation is strict: unknown keys, wrong types, values out of range, unknown set
references and capacity overruns are all errors. It goes on after a problem so that one
run reports as many as it can, then raises a single PolicyError with all of them; no
Policy exists for an invalid file, so nothing of it can reach the kernel.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

import yaml

from .errors import Invalid, Issue, PolicyError
from .model import (
    ACTIONS,
    SET_TYPES,
    STAGE_NAMES,
    TCP_FLAG_BITS,
    VERDICTS,
    ActionKind,
    AddrValue,
    DOMAINS,
    PROTOCOLS,
    Capacity,
    Domain,
    Family,
    Fastpath,
    Fragment,
    Item,
    Items,
    Match,
    Network,
    Pipeline,
    Policy,
    PrefixSet,
    Range,
    Rule,
    TcpFlags,
    Verdict,
    expand,
)
from .sets import parse_prefix, read_set_file

SUPPORTED_VERSION = 1

# Rule names end up in counters and metrics labels.
_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_SET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_RANGE = re.compile(r"^([0-9]*)\s*-\s*([0-9]*)$")
_NUMBER = re.compile(r"^[0-9]+$")

T = TypeVar("T")
E = TypeVar("E", bound=Enum)


def load_policy(path: str | Path, capacity: Capacity = Capacity()) -> Policy:
    """Read and validate a policy file. Set files are found relative to its directory."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise PolicyError(source, "", f"cannot read the policy: {reason}") from None
    return parse_policy_text(text, source, Path(path).parent, capacity)


def parse_policy_text(
    text: str, source: str, base_dir: str | Path, capacity: Capacity = Capacity()
) -> Policy:
    """Validate a policy given as YAML text; `source` names it in errors."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        raise PolicyError(source, "", _yaml_problem(err)) from None
    except yaml.YAMLError as err:
        raise PolicyError(source, "", f"invalid YAML: {err}") from None
    return parse_policy(data, source, base_dir, capacity)


def parse_policy(
    data: Any, source: str, base_dir: str | Path, capacity: Capacity = Capacity()
) -> Policy:
    """Validate a policy already read into Python data (as from yaml.safe_load)."""
    return _Validator(source, Path(base_dir), capacity).policy(data)


# --- YAML ---------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would silently overwrite."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = err.problem or err.context or "invalid YAML"
    hint = ""
    # `!80` unquoted is a YAML tag, the most likely way to trip here.
    if "tag" in problem and "!" in problem:
        hint = ' (quote values that start with !, for example "!80")'
    return f"{where}invalid YAML: {problem}{hint}"


# --- scalar values ------------------------------------------------------------------


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int):
        return f"the number {value}"
    return f"a {type(value).__name__} ({value!r})"


def _suggest(word: str, choices: tuple[str, ...]) -> str | None:
    """The choice the word most likely misspells, if any."""
    # Swapped letters first: difflib ranks `dprot` closer to proto than to dport.
    for choice in choices:
        if sorted(choice) == sorted(word):
            return choice
    close = difflib.get_close_matches(word, choices, n=1)
    return close[0] if close else None


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected {what}, got {_describe(value)}")
    return value


def parse_range(value: Any, domain: Domain) -> Range:
    """A number, a name of the domain, or a range `a-b` (inclusive), `a-` or `-b`."""
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    else:
        text = _string(value, f"a {domain.noun} or a range").strip()
        if text.lower() in domain.names:
            lo = hi = domain.names[text.lower()]
        elif _NUMBER.match(text):
            lo = hi = int(text)
        else:
            found = _RANGE.match(text)
            if found is None or found[1] == found[2] == "":
                names = f", a name ({', '.join(domain.names)})" if domain.names else ""
                raise Invalid(f"{text!r} is not a {domain.noun}{names} or a range (a-b, a-, -b)")
            lo = int(found[1]) if found[1] else domain.lo
            hi = int(found[2]) if found[2] else domain.hi
    for number in (lo, hi):
        if not domain.lo <= number <= domain.hi:
            raise Invalid(f"{domain.noun} {number} is out of range {domain.lo}-{domain.hi}")
    if lo > hi:
        raise Invalid(f"range {value!r} is empty: {lo} is above {hi}")
    return Range(lo, hi)


def parse_items(value: Any, parse_one: Callable[[Any], T]) -> Items[T]:
    """A list field: one item or a list of items, each optionally negated with `!`."""
    listed = isinstance(value, list)
    raw_items = value if listed else [value]
    if not raw_items:
        raise Invalid("empty list: leave the field out to match any value")
    items = []
    for index, raw in enumerate(raw_items):
        try:
            negated = isinstance(raw, str) and raw.lstrip().startswith("!")
            body = raw.lstrip()[1:] if negated else raw
            if negated and not body.strip():
                raise Invalid("'!' needs a value to negate")
            items.append(Item(parse_one(body), negated))
        except Invalid as err:
            raise err.within(f"[{index}]") if listed else err
    return Items(tuple(items))


def parse_tcp_flags(value: Any) -> TcpFlags:
    """`SYN,!ACK`: flags that must be set, and with `!` flags that must be clear."""
    text = _string(value, 'TCP flags such as "SYN,!ACK"')
    mask = bits = 0
    for token in text.split(","):
        token = token.strip()
        clear = token.startswith("!")
        name = token[1:].strip().upper() if clear else token.upper()
        if name not in TCP_FLAG_BITS:
            known = " ".join(TCP_FLAG_BITS)
            raise Invalid(f"{token!r} is not a TCP flag (known: {known}; ! for must be clear)")
        bit = TCP_FLAG_BITS[name]
        if mask & bit:
            raise Invalid(f"flag {name} is given more than once")
        mask |= bit
        bits |= 0 if clear else bit
    return TcpFlags(mask, bits)


def parse_choice(value: Any, enum: type[E], what: str) -> E:
    choices = ", ".join(member.value for member in enum)
    text = _string(value, f"{what} (one of: {choices})")
    try:
        return enum(text.lower())
    except ValueError:
        raise Invalid(f"{text!r} is not a valid {what} (one of: {choices})") from None


def parse_verdict(value: Any) -> Verdict:
    text = _string(value, "pass or drop")
    if text not in VERDICTS:
        raise Invalid(f"{text!r} is not pass or drop")
    return text  # type: ignore[return-value]


def parse_action(value: Any) -> ActionKind:
    known = ", ".join(ACTIONS)
    text = _string(value, f"an action (one of: {known})")
    if text not in ACTIONS:
        raise Invalid(f"unknown action {text!r} (one of: {known})")
    return ACTIONS[text]


def _sort_key(net: Network) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


# --- the document -------------------------------------------------------------------

_TOP_KEYS = ("version", "default_action", "sets", "rules", "pipeline", "fastpath")
_SET_KEYS = ("type", "entries", "files")
_RULE_KEYS = ("name", "match", "action", "description")
_MATCH_KEYS = tuple(f.name for f in fields(Match))


class _Validator:
    def __init__(self, source: str, base_dir: Path, capacity: Capacity) -> None:
        self.source = source
        self.base_dir = base_dir
        self.capacity = capacity
        self.issues: list[Issue] = []
        # None for a set that is defined but invalid: references to it are not
        # reported again as unknown.
        self.sets: dict[str, PrefixSet | None] = {}

    def report(self, path: str, problem: str) -> None:
        self.issues.append(Issue(self.source, path, problem))

    def check(self, path: str, parse: Callable[..., T], *args: Any) -> T | None:
        """parse(*args), or None after reporting its problem at path."""
        try:
            return parse(*args)
        except Invalid as err:
            self.report(path + err.at, err.problem)
            return None

    def mapping(
        self, value: Any, path: str, keys: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict | None:
        """value if it is a mapping, after reporting its unknown and missing keys."""
        if not isinstance(value, dict):
            self.report(path, f"expected a mapping, got {_describe(value)}")
            return None
        for key in value:
            if key not in keys:
                close = _suggest(str(key), keys)
                hint = f"did you mean {close!r}?" if close else f"allowed: {', '.join(keys)}"
                self.report(path, f"unknown key {key!r} ({hint})")
        for key in required:
            if key not in value:
                self.report(path, f"missing key {key!r}")
        return value

    def sequence(self, value: Any, path: str) -> list:
        """value if it is a list; else [] after reporting it."""
        if not isinstance(value, list):
            self.report(path, f"expected a list, got {_describe(value)}")
            return []
        return value

    def within_capacity(self, path: str, count: int, limit: int, what: str) -> bool:
        if count > limit:
            self.report(path, f"{count} {what}, more than the capacity of {limit}")
        return count <= limit

    # --- top level

    def policy(self, data: Any) -> Policy:
        doc = self.mapping(data, "", _TOP_KEYS, required=("version", "default_action"))
        if doc is None:
            raise PolicyError.of(self.issues)
        version = doc.get("version")
        if "version" in doc and (type(version) is not int or version != SUPPORTED_VERSION):
            supported = SUPPORTED_VERSION
            self.report("version", f"unsupported version {version!r} (supported: {supported})")
        default = self.check("default_action", parse_verdict, doc.get("default_action", "pass"))
        self.read_sets(doc.get("sets", {}))
        fastpath = self.fastpath(doc.get("fastpath", {}))
        pipeline = self.pipeline(doc.get("pipeline", {}))
        rules = self.rules(doc.get("rules", []))
        if self.issues:
            raise PolicyError.of(self.issues)
        return Policy(
            source=self.source,
            version=SUPPORTED_VERSION,
            default_action=default,  # type: ignore[arg-type]
            rules=rules,
            sets=MappingProxyType(dict(self.sets)),  # type: ignore[arg-type]
            pipeline=pipeline,  # type: ignore[arg-type]
            fastpath=fastpath,  # type: ignore[arg-type]
        )

    # --- sets

    def read_sets(self, value: Any) -> None:
        if not isinstance(value, dict):
            self.report("sets", f"expected a mapping of set names, got {_describe(value)}")
            return
        for name, spec in value.items():
            path = f"sets.{name}"
            if not isinstance(name, str) or not _SET_NAME.match(name):
                self.report(path, f"invalid set name {name!r} (letters, digits, _ and -)")
                continue
            self.sets[name] = self.prefix_set(name, spec, path)

    def prefix_set(self, name: str, value: Any, path: str) -> PrefixSet | None:
        errors = len(self.issues)
        spec = self.mapping(value, path, _SET_KEYS, required=("type",))
        if spec is None:
            return None
        if "type" in spec and spec["type"] not in SET_TYPES:
            problem = f"unknown set type {spec['type']!r} (supported: {', '.join(SET_TYPES)})"
            self.report(f"{path}.type", problem)
        prefixes: set[Network] = set()
        entries = self.sequence(spec.get("entries", []), f"{path}.entries")
        for index, entry in enumerate(entries):
            at = f"{path}.entries[{index}]"
            text = self.check(at, _string, entry, "an address or prefix (quote IPv6 ones)")
            net = self.check(at, parse_prefix, text) if text is not None else None
            if net is not None:
                prefixes.add(net)
        files = []
        for index, entry in enumerate(self.sequence(spec.get("files", []), f"{path}.files")):
            at = f"{path}.files[{index}]"
            shown = self.check(at, _string, entry, "a file name")
            if shown is not None:
                files.append(shown)
                prefixes.update(self.check(at, read_set_file, self.base_dir / shown, shown) or ())
        self.within_capacity(path, len(prefixes), self.capacity.set_entries, "entries")
        if len(self.issues) > errors:
            return None
        return PrefixSet(name, spec["type"], tuple(sorted(prefixes, key=_sort_key)), tuple(files))

    def address(self, value: Any) -> AddrValue:
        """A literal address or prefix, or `@name` for a set."""
        text = _string(value, "an address, a prefix or @set (quote IPv6 ones)").strip()
        if not text.startswith("@"):
            return parse_prefix(text)
        name = text[1:]
        if name not in self.sets:
            defined = ", ".join(self.sets) or "none"
            raise Invalid(f"unknown set {name!r} (defined sets: {defined})")
        found = self.sets[name]
        if found is None:
            raise Invalid(f"set {name!r} is invalid")
        return found

    # --- fastpath and pipeline

    def fastpath(self, value: Any) -> Fastpath | None:
        spec = self.mapping(value, "fastpath", ("allow", "deny"))
        if spec is None:
            return None
        lists: dict[str, tuple[AddrValue, ...]] = {"allow": (), "deny": ()}
        for key in lists:
            # Unlike a match field, an empty list is fine: nothing is fast-pathed.
            if spec.get(key, []) == []:
                continue
            items = self.check(f"fastpath.{key}", parse_items, spec[key], self.address)
            if items is None:
                continue
            for negated in items.negated:
                self.report(f"fastpath.{key}", f"entries cannot be negated: !{negated}")
            lists[key] = items.plain
        allow, deny = (set(expand(lists[key])) for key in ("allow", "deny"))
        for net in sorted(allow & deny, key=_sort_key):
            self.report("fastpath", f"{net} is in both allow and deny")
        count = len(allow) + len(deny)
        self.within_capacity("fastpath", count, self.capacity.fastpath_entries, "entries")
        return Fastpath(lists["allow"], lists["deny"])

    def pipeline(self, value: Any) -> Pipeline | None:
        spec = self.mapping(value, "pipeline", ("on_missing_stage", "stages"))
        if spec is None:
            return Pipeline()
        verdict = "pass"
        if "on_missing_stage" in spec:
            verdict = self.check("pipeline.on_missing_stage", parse_verdict, spec["on_missing_stage"])
        stages = self.stages(spec["stages"]) if "stages" in spec else None
        return Pipeline(verdict, stages) if verdict else None

    def stages(self, value: Any) -> tuple[str, ...] | None:
        listed = self.sequence(value, "pipeline.stages")
        for index, name in enumerate(listed):
            if not isinstance(name, str) or name not in STAGE_NAMES:
                self.report(f"pipeline.stages[{index}]",
                            f"unknown stage {name!r}; known: {', '.join(STAGE_NAMES)}")
            elif listed.index(name) != index:
                self.report(f"pipeline.stages[{index}]", f"stage {name!r} is listed twice")
        return tuple(listed)

    # --- rules

    def rules(self, value: Any) -> tuple[Rule, ...]:
        listed = self.sequence(value, "rules")
        if not self.within_capacity("rules", len(listed), self.capacity.rules, "rules"):
            return ()
        rules = []
        first_seen: dict[str, int] = {}
        for index, spec in enumerate(listed):
            rule = self.rule(index, spec, first_seen)
            if rule is not None:
                rules.append(rule)
        return tuple(rules)

    def rule(self, index: int, value: Any, first_seen: dict[str, int]) -> Rule | None:
        path = f"rules[{index}]"
        spec = self.mapping(value, path, _RULE_KEYS, required=("name", "action"))
        if spec is None:
            return None
        name = action = None
        if "name" in spec:
            name = self.check(f"{path}.name", self.rule_name, spec["name"])
        if name in first_seen:
            first = f"rules[{first_seen[name]}]"
            self.report(f"{path}.name", f"duplicate rule name {name!r} (first at {first})")
        elif name is not None:
            first_seen[name] = index
        if "action" in spec:
            action = self.check(f"{path}.action", parse_action, spec["action"])
        match = self.match(spec.get("match", {}), f"{path}.match")
        description = None
        if "description" in spec:
            at = f"{path}.description"
            description = self.check(at, _string, spec["description"], "a string")
        if name is None or action is None or match is None:
            return None
        return Rule(index + 1, name, match, action, description)

    @staticmethod
    def rule_name(value: Any) -> str:
        name = _string(value, "a rule name")
        if not _RULE_NAME.match(name):
            raise Invalid(
                f"invalid rule name {name!r} "
                "(1-64 letters, digits, _ . : -, not starting with a symbol)"
            )
        return name

    def match(self, value: Any, path: str) -> Match | None:
        if value is None:
            problem = "expected a mapping, got nothing (null): write {} to match every packet"
            self.report(path, problem)
            return None
        spec = self.mapping(value, path, _MATCH_KEYS)
        if spec is None:
            return None
        parsed: dict[str, Any] = {}
        failed = False
        for key, raw in spec.items():
            parse = self.match_field(key)
            if parse is None:
                continue  # unknown key, already reported
            parsed[key] = self.check(f"{path}.{key}", parse, raw)
            failed |= parsed[key] is None
        return None if failed else Match(**parsed)

    def match_field(self, key: str) -> Callable[[Any], Any] | None:
        if key in ("src", "dst"):
            return lambda raw: parse_items(raw, self.address)
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
