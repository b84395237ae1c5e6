"""The plan of a change: what differs between the policy in force and a new one, entity
by entity, in lines an operator reads before applying it (`reload --dry-run`)."""

from __future__ import annotations

from ..config import Config
from ..stages import stages


def changes(old: Config | None, new: Config) -> list[str]:
    lines: list[str] = []
    before, after = old.pipeline if old else None, new.pipeline
    if before is None or before.chain != after.chain:
        lines.append(f"chain: {_chain(before) if before else '(nothing attached)'} -> {_chain(after)}")
    if before is not None and before.missed_action != after.missed_action:
        lines.append(f"pipeline.on_missing_stage: {before.missed_action} -> {after.missed_action}")
    old_sets = old.policy.sets if old and old.policy else {}
    new_sets = new.policy.sets if new.policy else {}
    for name in sorted(set(old_sets) | set(new_sets)):
        a = set(old_sets[name].prefixes) if name in old_sets else set()
        b = set(new_sets[name].prefixes) if name in new_sets else set()
        state = "new set" if name not in old_sets else "removed" if name not in new_sets else None
        if a != b or state:
            lines.append(f"set {name}: " + (f"{state}, " if state else "") +
                         f"+{len(b - a)} -{len(a - b)} prefixes ({len(b)} in all)")
    for name, stage in stages().items():
        a = old.policy.sections.get(name) if old and old.policy else None
        b = new.policy.sections.get(name) if new.policy else None
        lines.extend(stage.changes(a, b))
    return lines or ["nothing changes"]


def _chain(pipeline) -> str:
    return f"({', '.join(pipeline.chain)})"
