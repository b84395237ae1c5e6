"""The policy stage: the rules and default_action (bpf/stages/policy.bpf.c).

The rules compile into decision chains (policy.classifier, docs/classifier.md); this
module lays the chains out in the stage's table and its program constants, and carries each rule's counters across rulesets by the rule's name.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from .. import abi
from ..dataplane import addrtrie
from ..dataplane.images import pack, pack_names, read_names
from ..dataplane.livehosts import Lookup
from ..dataplane.sources import SourceMap
from ..dataplane.tables import TableImage
from ..model.parse import ParsedPacket
from ..policy.analysis import rule_warnings
from ..policy.classes import FIELDS
from ..policy.classifier import Plan, plan
from ..policy.direct import words
from ..policy.errors import Issue
from ..policy.model import Policy, PrefixSet, RuleSet, State
from ..policy.reference import Decision, evaluate_rules
from ..policy.rules import parse_ruleset
from ..policy.validator import Validator
from . import register
from .base import Stage, StageBuild

TABLE, HOSTS, HITS, NAMES = "sw_pol_tab", "sw_pol_hosts", "sw_pol_hits", "sw_pol_names"
BASE = "sw_pol_base"
CLOCK = "sw_pol_clock"
CONSTS = ".rodata.pol"


@dataclass(frozen=True)
class RuleCounter:
    packets: int
    bytes: int
    last_hit_ns: int  # bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC_COARSE); 0 if never hit
    would_drop: int


def established_rule(policy: Policy) -> bool:
    """Some rule passes the replies to the host's own flows (the conntrack stage)."""
    return any(rule.match.state is State.ESTABLISHED and rule.action.verdict == "pass"
               for rule in policy.rules)


class PolicyStage(Stage):
    name = "policy"
    reasons = ("rule", "default", "nd_protected")
    keys = ("default_action", "segments", "rules")
    order = 20
    config_maps = {
        TABLE: ("__u32", "__u32"),  # a table: one value (lib/table.h)
        HOSTS: ("struct sw_addr_key", "struct sw_host"),
        NAMES: ("__u32", "struct sw_rule_name"),
        HITS: ("__u32", "struct sw_rule_counter"),
        BASE: ("__u32", "struct sw_rule_counter"),
        # lib/clock.h: a timer and a time, never read from here; pinned so it ticks.
        CLOCK: ("__u32", "__u64[3]"),
    }

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> RuleSet | None:
        return parse_ruleset(doc, v)

    def busy(self, section: RuleSet) -> bool:
        # Even without rules the default action is a decision (reason `default`).
        return True

    def required(self, section: RuleSet) -> bool:
        # Without rules, a default pass is what the end of the chain does anyway.
        return bool(section.rules) or section.default_action == "drop"

    def summary(self, section: RuleSet) -> list[str]:
        by_action: dict[str, int] = {}
        for rule in section.rules:
            by_action[rule.action.name] = by_action.get(rule.action.name, 0) + 1
        actions = ", ".join(f"{n} {a}" for a, n in sorted(by_action.items())) or "none"
        lines = [f"rules: {len(section.rules)} ({actions}); default action: {section.default_action}"]
        for seg in section.segments:
            lines.append(f"segment {seg.name}: {len(seg.rules)} rules for "
                         f"{', '.join(map(str, seg.dst))} (from {seg.file})")
        return lines

    def warnings(self, policy: Policy) -> Iterable[Issue]:
        yield from rule_warnings(policy)
        if policy.default_action == "drop" and not established_rule(policy):
            yield Issue(policy.source, "default_action",
                        "drop also drops the replies to connections this host opens itself "
                        "(DNS lookups, updates, outbound TCP): add a rule that passes them, "
                        "{name: replies, match: {state: established}, action: pass} "
                        "(docs/defenses.md, Connection state)")

    def sets_used(self, section: RuleSet) -> set[str]:
        used = set()
        for rule in section.rules:
            for items in (rule.match.src, rule.match.dst):
                if items is not None:
                    used |= _set_names(items)
        return used

    def changes(self, old: RuleSet | None, new: RuleSet | None) -> list[str]:
        old, new = old or RuleSet(), new or RuleSet()
        lines = []
        before_segs = {seg.name: seg for seg in old.segments}
        for seg in new.segments:
            was = before_segs.pop(seg.name, None)
            if was is None:
                lines.append(f"segment {seg.name}: added ({len(seg.rules)} rules)")
            elif (was.dst, [(r.name, r.match, r.action) for r in was.rules]) != \
                    (seg.dst, [(r.name, r.match, r.action) for r in seg.rules]):
                lines.append(f"segment {seg.name}: changed (applied as a change of its own)")
        lines += [f"segment {name}: removed" for name in before_segs]
        if old.default_action != new.default_action:
            lines.append(f"policy.default_action: {old.default_action} -> {new.default_action}")
        before = {r.name: r for r in old.rules}
        after = {r.name: r for r in new.rules}
        added = [n for n in after if n not in before]
        removed = [n for n in before if n not in after]
        changed = [n for n in after if n in before
                   and (before[n].match, before[n].action) != (after[n].match, after[n].action)]
        kept = [n for n in after if n in before]
        moved = [n for n in kept if [k for k in before if k in after].index(n) != kept.index(n)]
        for what, names in (("added", added), ("removed", removed), ("changed", changed),
                            ("moved", moved)):
            if names:
                shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
                lines.append(f"rules {what}: {shown}")
        return lines

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: RuleSet, pkt: ParsedPacket) -> Decision:
        return evaluate_rules(section, pkt)

    # -- the data plane -----------------------------------------------------------------
    def image(self, section: RuleSet) -> Plan:
        if len(section.rules) > abi.SW_POL_MAX_RULES:
            raise ValueError(f"{len(section.rules)} rules: the policy stage holds at most "
                             f"{abi.SW_POL_MAX_RULES}")
        return plan(section)

    def sources(self, image: Plan) -> SourceMap | None:
        # Direct mode compares the address itself: no source classes to ask for.
        src = image.fields.get("src")
        if src is None:
            return None
        return SourceMap(src.nodes, live=src.live, reads=frozenset(
            s for r in image.rules if r.match.src is not None
            for s in _set_names(r.match.src)))

    def build(self, image: Plan, column: list[int] | None) -> StageBuild:
        return _Layout(image, column).build()

    def reads(self, image: Plan) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for rule in image.rules:
            for place, items in (("src", rule.match.src), ("dst", rule.match.dst)):
                for name in _set_names(items) if items is not None else ():
                    # Direct mode tests a set's prefixes as constants of the program.
                    found.setdefault(name, set()).add("direct" if image.direct else place)
        return found

    def describe(self, image: Plan) -> list[str]:
        n = image.lookups()
        if image.direct is not None:
            return [f"policy: {len(image.rules)} rules tested directly, in order (no table read)"]
        return [f"policy: {len(image.rules)} rules in {n['buckets']} buckets; per packet "
                f"{n['field_lookups']} field lookups, {n['misc_lookups']} for the small fields, "
                f"{n['chain_steps']} chain steps ({n['sparse_steps']} sparse)"]

    # -- counters follow rule names -----------------------------------------------------
    def carry(self, maps: dict[str, Any]) -> dict[str, RuleCounter]:
        """Every rule's whole count by name ("" for id 0, the default's), read from the
        maps of a generation that no longer runs: exact, nothing counts there any more."""
        if HITS not in maps or NAMES not in maps:
            return {}
        names = rule_names(maps)
        return {names.get(i, ""): counter(maps, i) for i in [0, *names]}

    def after_swap(self, maps: dict[str, Any], carried: Any) -> None:
        """Each surviving name's count becomes the base of its new id. The live counters
        are not touched (the programs write them), so nothing counted since the swap is
        lost; writing the same base twice, as a recovery may, changes nothing."""
        if not carried or BASE not in maps:
            return
        names = {"": 0, **{name: i for i, name in rule_names(maps).items()}}
        ids = {names[name]: c for name, c in carried.items() if name in names}
        maps[BASE].update_batch(list(ids), [asdict(c) for c in ids.values()])

    # -- status ------------------------------------------------------------------------
    def status(self, maps: dict[str, Any]) -> dict:
        missing = [name for name in (HITS, NAMES) if name not in maps]
        if missing:
            return {"problem": f"rule counters unreadable: {' and '.join(missing)} not pinned "
                               "(a reload pins them again)"}
        names = rule_names(maps)
        now = time.monotonic_ns()
        wall = time.time()
        rules = []
        for rule_id in [0, *names]:
            c = counter(maps, rule_id)
            rules.append({"id": rule_id, "name": names.get(rule_id) if rule_id else None,
                          "packets": c.packets, "bytes": c.bytes, "would_drop": c.would_drop,
                          "last_hit_seconds_ago": round(max(0, now - c.last_hit_ns) / 1e9, 1)
                          if c.last_hit_ns else None,
                          # the data plane's clock is monotonic: as wall-clock seconds
                          "last_hit": round(wall - max(0, now - c.last_hit_ns) / 1e9, 1)
                          if c.last_hit_ns else None})
        return {"rules": rules}


def _set_names(items: Any) -> set[str]:
    return {i.value.name for i in items.items if isinstance(i.value, PrefixSet)}


def rule_names(maps: dict[str, Any]) -> dict[int, str]:
    """Names of the active ruleset's rules by id (the map holds exactly the ruleset's:
    id 0, the default's, has none)."""
    return read_names(maps[NAMES])


def counter(maps: dict[str, Any], rule_id: int) -> RuleCounter:
    """A rule's count: its live per-CPU cells and what earlier generations counted."""
    cells = [*maps[HITS].lookup(rule_id)]
    if BASE in maps:
        cells.append(maps[BASE].lookup(rule_id))
    return RuleCounter(sum(c.packets for c in cells), sum(c.bytes for c in cells),
                       max(c.last_hit_ns for c in cells), sum(c.would_drop for c in cells))


def rule_counters(maps: dict[str, Any]) -> dict[int, RuleCounter]:
    """Counters of the active ruleset by rule id, summed over CPUs (id 0: no rule decided)."""
    return {rule_id: counter(maps, rule_id) for rule_id in [0, *rule_names(maps)]}


class _Layout:
    """Where each part of a Plan lives in the stage's table, and its constants."""

    def __init__(self, image: Plan, column: list[int] | None) -> None:
        self.image = image
        self.column = column
        self.tab = TableImage()
        self.lookups: dict[str, Lookup] = {}
        per_field = ("field_used", "field_base", "field_na", "misc_stride")
        self.consts: dict[str, Any] = {"enabled": 1, "default_action": abi.ACTION_CODES[image.default_action],
                                       **{name: [0] * abi.SW_POL_FIELDS for name in per_field}}

    def build(self) -> StageBuild:
        image, tab, c = self.image, self.tab, self.consts
        hosts: dict[bytes, int] = {}
        if image.direct is not None:
            c["direct"], c["nrules"] = 1, len(image.direct)
            c["rule"] = [self._direct_rule(r) for r in image.direct]
            return self._maps(hosts)
        for name, fc in image.fields.items():
            fid = FIELDS[name]
            c["field_used"][fid] = 1
            if name == "src":
                c["field_base"][fid] = tab.add(array("I", self.column or [0]))
            elif name == "dst":
                trie = addrtrie.build(tab, fc.nodes)
                c["dst_root4"], c["dst_root6"] = trie.root4, trie.root6
                hosts = trie.hosts
                self.lookups["dst"] = Lookup("dst", TABLE, HOSTS, trie.root4, trie.root6, fc.live)
            else:
                c["field_base"][fid] = self._scalar(fc.keys)
                c["field_na"][fid] = fc.na_class
        if image.misc_fields:
            c["misc_used"] = 1
            c["misc_base"] = tab.add(image.misc_table)
            for name, stride in zip(image.misc_fields, image.misc_strides):
                c["misc_stride"][FIELDS[name]] = stride
        lists: dict[tuple, int] = {(): 0}
        buckets = []
        for bucket in image.buckets:
            steps = []
            for step in bucket.steps:
                entry = {"dim": step.dim, "sparse": int(not step.dense), "width": step.width,
                         "remap_base": 0 if step.direct else tab.add(step.remap)}
                entry["table_base"] = tab.add(step.table) if step.dense else self._sparse(step)
                steps.append(entry)
            words = array("I")
            for d in bucket.decisions:
                if d.counted not in lists:
                    lists[d.counted] = tab.add([len(d.counted)] + [
                        rule | (abi.SW_POL_WOULD_DROP if would else 0) for rule, would in d.counted])
                words.append(d.rule_id | (abi.SW_POL_DROPS if d.verdict == "drop" else 0))
                words.append(lists[d.counted])
            buckets.append({"nsteps": len(steps), "decision_base": tab.add(words), "step": steps})
        c["nbuckets"] = len(buckets)
        c["bucket"] = buckets
        c["counting"] = int(any(r.action.counts for r in image.rules))
        return self._maps(hosts)

    @staticmethod
    def _direct_rule(rule: Any) -> dict:
        entry: dict[str, Any] = {"used": 0, "verdict": abi.ACTION_CODES[rule.verdict] if rule.verdict else 0,
                                 "counts": int(rule.counts), "would_drop": int(rule.would_drop),
                                 "value": [{} for _ in range(abi.SW_POL_FIELDS)], "prefix": [{}, {}]}
        for name, test in rule.tests.items():
            fid = FIELDS[name]
            entry["used"] |= 1 << fid
            shape = {"n": len(test.items), "negated": test.negated, "plain": int(test.plain)}
            if name in ("src", "dst"):
                shape["item"] = [{"family": fam, **dict(zip(("addr0", "addr1"), words(addr))),
                                  **dict(zip(("mask0", "mask1"), words(mask)))}
                                 for fam, addr, mask in test.items]
                entry["prefix"][fid] = shape
            else:
                shape["item"] = [{"lo": lo, "hi": hi} for lo, hi in test.items]
                entry["value"][fid] = shape
        return entry

    def _scalar(self, keys: array) -> int:
        """A scalar field's classes by value: one level for byte-wide fields, else a
        first level by value >> 8 whose uniform blocks need no second-level node."""
        if len(keys) <= addrtrie.FANOUT:
            return self.tab.add(keys)
        fan = addrtrie.FANOUT
        blocks = [keys[i:i + fan] for i in range(0, len(keys), fan)]
        top = array("I", (b[0] if b.count(b[0]) == len(b) else 0 for b in blocks))
        base = self.tab.add(top)
        for i, b in enumerate(blocks):
            if b.count(b[0]) != len(b):
                self.tab.align(fan)
                node = self.tab.add(b) // fan
                self.tab.entries[base + i] = addrtrie.CHILD | node
        return base

    def _sparse(self, step: Any) -> int:
        """Two entries per state: its default next state, and either its few exceptions
        (a short list of (class, next) pairs, scanned) or a dense row of its own."""
        by_state: dict[int, list[tuple[int, int]]] = {}
        for (state, cls), nxt in step.exceptions.items():
            by_state.setdefault(state, []).append((cls, nxt))
        records = array("I")
        for state, default in enumerate(step.default):
            found = sorted(by_state.get(state, ()))
            if len(found) <= abi.SW_POL_SCAN:
                pairs = self.tab.add([v for pair in found for v in pair]) if found else 0
                records.extend((default, pairs << 4 | len(found)))
            else:
                row = array("I", [default]) * step.width
                for cls, nxt in found:
                    row[cls] = nxt
                records.extend((default, abi.SW_POL_ROW | self.tab.add(row)))
        return self.tab.add(records)

    def _maps(self, hosts: dict[bytes, int]) -> StageBuild:
        names = pack_names([r.name for r in self.image.rules])
        build = StageBuild(rodata={CONSTS: pack("struct sw_pol_consts", self.consts)})
        ids = len(self.image.rules) + 1
        build.sizes = {HOSTS: addrtrie.hash_size(hosts), NAMES: ids, HITS: ids, BASE: ids}
        build.table = (TABLE, self.tab.value())
        build.lookups = self.lookups
        if hosts:
            build.contents[HOSTS] = addrtrie.host_contents(hosts)
        if names:
            build.contents[NAMES] = (array("I", range(1, len(self.image.rules) + 1)).tobytes(), names)
        build.memory = self.tab.bytes + 96 * len(hosts)
        return build


register(PolicyStage())
