"""The fastpath stage: sources on the allow or deny list are decided before any costly
stage runs, by the longest matching prefix of either list (bpf/stages/fastpath.bpf.c).

The root classifies every packet's source once (dataplane.sources); this stage's table
holds, for each source class, what its lists say: nothing, allowlisted or blocklisted.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Iterable

from .. import abi
from ..dataplane.sources import SourceMap
from ..model.parse import ParsedPacket
from ..policy.errors import Issue
from ..policy.model import AddrValue, Network, Policy, PrefixSet, PrefixTable, expand
from ..policy.reference import Decision
from ..policy.validator import Validator
from ..policy.values import parse_items, sort_key
from . import register
from .base import Stage, StageBuild

TABLE = "sw_fp_tab"


@dataclass(frozen=True)
class Fastpath:
    """Source addresses decided before the rules: the longest matching prefix wins."""

    allow: tuple[AddrValue, ...] = ()
    deny: tuple[AddrValue, ...] = ()
    allow_table: PrefixTable = field(init=False, repr=False, compare=False)
    deny_table: PrefixTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_table", PrefixTable(expand(self.allow)))
        object.__setattr__(self, "deny_table", PrefixTable(expand(self.deny)))

    def networks(self, which: str) -> list[Network]:
        return list(dict.fromkeys(expand(self.allow if which == "allow" else self.deny)))


class FastpathStage(Stage):
    name = "fastpath"
    reasons = ("allowlisted", "blocklisted")
    keys = ("fastpath",)
    order = 10
    config_maps = {TABLE: ("__u32", "__u32")}  # a table: one value (lib/table.h)

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> Fastpath | None:
        spec = v.mapping(doc.get("fastpath", {}), "fastpath", ("allow", "deny"))
        if spec is None:
            return None
        lists: dict[str, tuple[AddrValue, ...]] = {"allow": (), "deny": ()}
        for key in lists:
            # Unlike a match field, an empty list is fine: nothing is fast-pathed.
            if spec.get(key, []) == []:
                continue
            items = v.check(f"fastpath.{key}", parse_items, spec[key], v.address)
            if items is None:
                continue
            for negated in items.negated:
                v.report(f"fastpath.{key}", f"entries cannot be negated: !{negated}")
            lists[key] = items.plain
        allow, deny = (set(expand(lists[key])) for key in ("allow", "deny"))
        for net in sorted(allow & deny, key=sort_key):
            v.report("fastpath", f"{net} is in both allow and deny")
        count = len(allow) + len(deny)
        v.within_capacity("fastpath", count, v.capacity.fastpath_entries, "entries")
        return Fastpath(lists["allow"], lists["deny"])

    def busy(self, section: Fastpath) -> bool:
        return bool(section.allow or section.deny)

    def summary(self, section: Fastpath) -> list[str]:
        return [f"fastpath: {len(section.networks('allow'))} allowed, "
                f"{len(section.networks('deny'))} denied prefixes"]

    def sets_used(self, section: Fastpath) -> set[str]:
        return {v.name for v in (*section.allow, *section.deny) if isinstance(v, PrefixSet)}

    def warnings(self, policy: Policy) -> Iterable[Issue]:
        return ()

    def changes(self, old: Fastpath | None, new: Fastpath | None) -> list[str]:
        lines = []
        for which in ("allow", "deny"):
            before = set(old.networks(which)) if old else set()
            after = set(new.networks(which)) if new else set()
            if before != after:
                lines.append(f"fastpath.{which}: +{len(after - before)} -{len(before - after)} "
                             f"prefixes ({len(after)} in all)")
        return lines

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Fastpath, pkt: ParsedPacket) -> Decision | None:
        allow = section.allow_table.longest_match(pkt.src_ip)
        deny = section.deny_table.longest_match(pkt.src_ip)
        if allow is None and deny is None:
            return None
        # The loader refuses a prefix in both lists, so the lengths never tie.
        if deny is None or (allow is not None and allow > deny):
            return Decision("pass", "allowlisted")
        return Decision("drop", "blocklisted")

    # -- the data plane -----------------------------------------------------------------
    def sources(self, image: Fastpath) -> SourceMap:
        nodes: dict[int, list[tuple[int, int, int]]] = {4: [(0, 0, abi.SW_FP_NONE)],
                                                        6: [(0, 0, abi.SW_FP_NONE)]}
        for which, action in (("allow", abi.SW_ACT_PASS), ("deny", abi.SW_ACT_DROP)):
            for net in image.networks(which):
                nodes[net.version].append((int(net.network_address), net.prefixlen, action))
        # A live entry is a single address: the longest prefix, so its list decides.
        allow = {v.name for v in image.allow if isinstance(v, PrefixSet)}
        deny = {v.name for v in image.deny if isinstance(v, PrefixSet)}
        values = (abi.SW_FP_NONE, abi.SW_ACT_PASS, abi.SW_ACT_DROP)
        live = {name: dict.fromkeys(values, abi.SW_ACT_PASS if name in allow else abi.SW_ACT_DROP)
                for name in allow ^ deny}
        return SourceMap(nodes, live=live, reads=frozenset(allow | deny))

    def reads(self, image: Fastpath) -> dict[str, set[str]]:
        return {v.name: {"src"} for v in (*image.allow, *image.deny) if isinstance(v, PrefixSet)}

    def build(self, image: Fastpath, column: list[int] | None) -> StageBuild:
        values = array("I", column or [abi.SW_FP_NONE])
        return StageBuild(table=(TABLE, values.tobytes()), memory=4 * len(values))

    def describe(self, image: Fastpath) -> list[str]:
        return [f"fastpath: {len(image.networks('allow')) + len(image.networks('deny'))} prefixes, "
                "classified with the rules' sources in one trie walk"]

    def status(self, maps: dict[str, Any]) -> dict:
        table = maps.get(TABLE)
        if table is None:
            return {}
        counts = {abi.SW_ACT_PASS: 0, abi.SW_ACT_DROP: 0}
        for value in array("I", table.lookup_raw(0) or b""):
            if value in counts:
                counts[value] += 1
        return {"allowlisted_classes": counts[abi.SW_ACT_PASS],
                "blocklisted_classes": counts[abi.SW_ACT_DROP]}

    def status_lines(self, report: dict) -> list[str]:
        if not report:
            return []
        return [f"fastpath: {report['allowlisted_classes']} allowlisted and "
                f"{report['blocklisted_classes']} blocklisted source classes"]


register(FastpathStage())
