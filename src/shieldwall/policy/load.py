"""Reading a policy file and validating it into a Policy.

Validation is strict: unknown keys, wrong types, values out of range, unknown set
references and capacity overruns are all errors. It goes on after a problem so that one
run reports as many as it can, then raises a single PolicyError with all of them; no
Policy exists for an invalid file, so nothing of it can reach the kernel.

The document's own keys are `version`, `sets`, `pipeline`, `events` and `mitigation`
(the daemon's, policy/mitigation.py); every other key belongs to a stage, which
validates its section (shieldwall.stages).
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from ..stages import policy_keys, stages
from . import mitigation
from .errors import Invalid, PolicyError, quote
from .files import NotReadable, read_bounded
from .model import Capacity, Events, Pipeline, Policy
from .validator import Validator
from .values import describe, parse_rate, parse_verdict

SUPPORTED_VERSION = 1
_OWN_KEYS = ("version", "sets", "pipeline", "events", "mitigation")


def load_policy(path: str | Path, capacity: Capacity = Capacity()) -> Policy:
    """Read and validate a policy file. Set files are found relative to its directory."""
    source = str(path)
    try:
        text = read_bounded(Path(path), MAX_POLICY_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError, NotReadable) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else (
            "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err))
        raise PolicyError(source, "", f"cannot read the policy: {reason}") from None
    return parse_policy_text(text, source, Path(path).parent, capacity)


# A policy is a few kilobytes of YAML; large data lives in set files.
MAX_POLICY_BYTES = 16 << 20


def parse_policy_text(
    text: str, source: str, base_dir: str | Path, capacity: Capacity = Capacity(),
    files: Mapping[str, Path] | None = None, extra: Mapping[str, Any] | None = None,
) -> Policy:
    """Validate a policy given as YAML text; `source` names it in errors."""
    try:
        data = load_yaml(text)
    except Invalid as exc:
        raise PolicyError(source, "", str(exc)) from None
    return parse_policy(data, source, base_dir, capacity, files, extra)


def load_yaml(text: str) -> Any:
    """YAML data of a policy or a segment file (Invalid, with a short reason)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        raise Invalid(_yaml_problem(err)) from None
    except yaml.YAMLError as err:
        raise Invalid(f"invalid YAML: {_cut(str(err))}") from None
    except RecursionError:
        # compose_node() counts levels; this is for whatever else recurses.
        raise Invalid("invalid YAML: nested too deeply") from None


def parse_policy(
    data: Any, source: str, base_dir: str | Path, capacity: Capacity = Capacity(),
    files: Mapping[str, Path] | None = None, extra: Mapping[str, Any] | None = None,
) -> Policy:
    """Validate a policy already read into Python data (as from yaml.safe_load); `files`
    gives set files by their names in the policy, to read them from elsewhere; `extra`
    adds prefixes to sets by name (live entries compiled in)."""
    v = Validator(source, Path(base_dir), capacity, files, extra)
    owners = policy_keys()
    top = tuple(dict.fromkeys(key.split(".")[0] for key in owners))
    doc = v.mapping(data, "", _OWN_KEYS + top, required=("version",))
    if doc is None:
        raise PolicyError.of(v.issues)
    version = doc.get("version")
    if "version" in doc and (type(version) is not int or version != SUPPORTED_VERSION):
        v.report("version", f"unsupported version {quote(version)} (supported: {SUPPORTED_VERSION})")
    v.read_sets(doc.get("sets", {}))
    sections = {}
    for stage in stages().values():
        sections[stage.name] = stage.section(_own_part(doc, stage.keys, owners), v)
    for stage in stages().values():
        sections[stage.name] = stage.link(sections[stage.name], sections, v)
    pipeline = _pipeline(doc.get("pipeline", {}), v)
    events = _events(doc.get("events", {}), v)
    # The daemon's, not a stage's: it reads the rules and sets the stages made, and
    # the sampling of events.
    sections["mitigation"] = (mitigation.read(doc["mitigation"], events, sections, v)
                              if "mitigation" in doc else None)
    if pipeline is not None and pipeline.stages is not None:
        _check_chain(pipeline.stages, sections, v)
    if v.issues:
        raise PolicyError.of(v.issues)
    return Policy(
        source=source,
        version=SUPPORTED_VERSION,
        sets=MappingProxyType(dict(v.sets)),  # type: ignore[arg-type]
        pipeline=pipeline,  # type: ignore[arg-type]
        events=events,  # type: ignore[arg-type]
        sections=MappingProxyType(sections),
    )


def _own_part(doc: dict, keys: tuple[str, ...], owners: Mapping[str, Any]) -> dict:
    """A stage's keys of the document. A dotted key (`protect.syn`) is a sub-key that
    another stage's section holds (`protect:`); that stage gets its section without
    the sub-keys others own, so each validates only its own."""
    part = {}
    for key in keys:
        head, _, sub = key.partition(".")
        value = doc.get(head)
        if sub:
            if isinstance(value, dict) and sub in value:
                part[key] = value[sub]
        elif head in doc:
            if isinstance(value, dict):
                value = {k: x for k, x in value.items() if f"{head}.{k}" not in owners}
            part[key] = value
    return part


def _pipeline(value: Any, v: Validator) -> Pipeline | None:
    spec = v.mapping(value, "pipeline", ("on_missing_stage", "stages"))
    if spec is None:
        return Pipeline()
    verdict = "pass"
    if "on_missing_stage" in spec:
        verdict = v.check("pipeline.on_missing_stage", parse_verdict, spec["on_missing_stage"])
    chain = _stages(spec["stages"], v) if "stages" in spec else None
    return Pipeline(verdict, chain) if verdict else None  # type: ignore[arg-type]


# Events a second per CPU: beyond this the ring, not the budget, would be the limit.
MAX_EVENT_RATE = 100_000
MAX_EVERY = 1 << 30


def _events(value: Any, v: Validator) -> Events | None:
    """`events: off`, or `{rate, drops, passes}` (docs/policy.md, "Events")."""
    if value in (False, "off"):
        return Events(rate=0)
    spec = v.mapping(value, "events", ("rate", "drops", "passes"))
    if spec is None:
        return None
    rate = spec.get("rate", Events.rate)
    if rate not in (0, "0", False, "off"):
        rate = v.check("events.rate", parse_rate, rate, "a rate of events a second per CPU",
                       MAX_EVENT_RATE)
    else:
        rate = 0
    drops = v.check("events.drops", _one_in, spec.get("drops", Events.drops), 1)
    passes = v.check("events.passes", _one_in, spec.get("passes", Events.passes), 0)
    if rate is None or drops is None or passes is None:
        return None
    return Events(rate, drops, passes)


def _one_in(value: Any, least: int) -> int:
    """N of "1 in N packets", from `least` (0: none)."""
    if type(value) is not int or not least <= value <= MAX_EVERY:
        raise Invalid(f"expected a whole number from {least} to {MAX_EVERY:,} (1 in N packets), "
                      f"got {quote(value) if isinstance(value, str) else describe(value)}")
    return value


def _stages(value: Any, v: Validator) -> tuple[str, ...] | None:
    known = stages()
    listed = v.sequence(value, "pipeline.stages")
    for index, name in enumerate(listed):
        if not isinstance(name, str) or name not in known:
            v.report(f"pipeline.stages[{index}]",
                     f"unknown stage {quote(name)}; known: {', '.join(known)}")
        elif listed.index(name) != index:
            v.report(f"pipeline.stages[{index}]", f"stage {name!r} is listed twice")
    return tuple(listed)


def _check_chain(chain: tuple[str, ...], sections: dict, v: Validator) -> None:
    """A stage left out of an explicit chain while its section asks for work would
    let an operator believe something protects the host that nothing enforces."""
    for name, stage in stages().items():
        section = sections.get(name)
        if name not in chain and section is not None and stage.required(section):
            keys = " and ".join(k for k in stage.keys)
            v.report("pipeline.stages", f"stage {name!r} is left out, but {keys} give it "
                                        "work: nothing would enforce it")


# --- YAML ---------------------------------------------------------------------------


# No policy needs more; PyYAML composes nodes recursively, so without a bound a file
# of 100,000 `[` would exhaust the stack.
MAX_NESTING = 64
# Longer integers are refused before int(), which is slow on them (or refuses them
# with a message about Python's own limit).
MAX_INT_CHARS = 100


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which PyYAML would silently overwrite,
    nesting deeper than MAX_NESTING and integers longer than MAX_INT_CHARS."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_NESTING} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        if len(node.value) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number of {len(node.value)} characters, too large for any "
                "field", node.start_mark)
        return super().construct_yaml_int(node)

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
                    None, None, f"duplicate key {quote(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _cut(text: str, limit: int = 200) -> str:
    """PyYAML's messages can quote the file (an alias name, a tag): a glimpse only."""
    return text if len(text) <= limit else text[:limit] + "..."


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = _cut(err.problem or err.context or "invalid YAML")
    hint = ""
    # `!80` unquoted is a YAML tag, the most likely way to trip here.
    if "tag" in problem and "!" in problem:
        hint = ' (quote values that start with !, for example "!80")'
    return f"{where}invalid YAML: {problem}{hint}"
