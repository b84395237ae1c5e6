"""The limit stage: named rate limits that rules use as actions, and timed blocks
(bpf/stages/limit.bpf.c, docs/defenses.md "Rate limits").

    limits:
      udp-per-source: {per: source, prefix4: 32, prefix6: 64, pps: 1000, burst: 2000, block: 60s}
    rules:
      - {name: udp, match: {proto: udp}, action: {limit: udp-per-source}}

A rule whose action is a limit passes what its key's token bucket allows and drops the
rest (reason rate_limited); with `block`, going over also blocks the source's prefix
for that long, and the stage drops blocked sources before the rules (reason blocked).
Buckets and blocks are state maps: pinned, kept across reloads, keyed by the limit's
name, not its place in the file.
"""

from __future__ import annotations

import ipaddress
import math
import os
import time
import zlib
from array import array
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from .. import abi
from ..dataplane.addresses import from_key_bytes, lpm_key
from ..dataplane.images import pack, pack_names, read_names
from ..model.parse import ParsedPacket
from ..policy.errors import Issue, quote
from ..policy.model import Network, Policy, RuleSet
from ..policy.reference import Decision
from ..policy.validator import NAME, Validator
from ..policy.values import describe, parse_duration, parse_rate
from . import register
from .base import Stage, StageBuild

TABLE, BUCKETS, BLOCKS, SKETCH = "sw_lim_tab", "sw_lim_buckets", "sw_lim_blocks", "sw_lim_sketch"
STATS, BASE, NAMES = "sw_lim_stats", "sw_lim_base", "sw_lim_names"
BITS = "sw_lim_block_bits"
CONSTS = ".rodata.lim"

PER = {"source": abi.SW_LIM_PER_SOURCE, "destination": abi.SW_LIM_PER_DESTINATION,
       "rule": abi.SW_LIM_PER_RULE, "flow": abi.SW_LIM_PER_FLOW}
KEYS = ("per", "prefix4", "prefix6", "pps", "bps", "burst", "burst_bytes", "block", "description")
WINDOW_S = (1 << abi.SW_LIM_WINDOW_SHIFT) / 1e9
# A key that stays under its gate in a sketch window passes without a bucket; the gate
# is set so that this adds at most this share of the rate to what a key can pass.
GATE_SLACK = 0.1
MAX_PPS = 10**9     # the bucket counts whole nanoseconds per packet
MAX_BPS = 10**12
MAX_BLOCK_S = 7 * 86400


@dataclass(frozen=True)
class Limit:
    name: str
    per: str = "source"
    prefix4: int = 32
    prefix6: int = 64
    pps: int | None = None
    bps: int | None = None
    burst: int = 0          # packets, with pps
    burst_bytes: int = 0    # with bps
    block_s: float = 0      # 0: going over does not block

    @property
    def id(self) -> int:
        """The bucket keys' limit id: the same name is the same buckets after a reload."""
        return zlib.crc32(self.name.encode()) or 1

    @property
    def gate(self) -> int:
        """Packets a key sends in one sketch window before it gets a bucket. Under the
        gate, at most gate - 1 packets a window go uncounted: GATE_SLACK of the rate.
        A bit rate alone is not gated (packet sizes vary)."""
        if not self.pps:
            return 1
        return min(1 + int(GATE_SLACK * WINDOW_S * self.pps), abi.SW_LIM_GATE_MAX)

    def prefix(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Network:
        """The prefix an address counts in (its family's aggregation length)."""
        length = self.prefix4 if addr.version == 4 else self.prefix6
        return ipaddress.ip_network((addr, length), strict=False)


@dataclass(frozen=True)
class Limits:
    """The limits section, and which rules use which limit (rule id, limit name)."""

    limits: Mapping[str, Limit] = field(default_factory=dict)
    rules: tuple[tuple[int, str], ...] = ()

    def __hash__(self) -> int:
        return hash((tuple(self.limits.items()), self.rules))


def _span(prefix: int, v4: bool) -> int:
    """A prefix length over the 16-byte (IPv4-mapped) address the data plane keys by."""
    return 96 + prefix if v4 else prefix


def _mask(prefix: int, v4: bool) -> list[int]:
    bits = _span(prefix, v4)
    value = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    return list(value.to_bytes(16, "big"))


# -- the reference model -------------------------------------------------------------


def bucket_key(limit: Limit, rule_id: int, pkt: ParsedPacket) -> tuple:
    """What a packet's bucket is keyed by, as the stage keys it."""
    if limit.per in ("source", "destination"):
        return (limit.per, limit.prefix(pkt.src_ip if limit.per == "source" else pkt.dst_ip))
    if limit.per == "rule":
        return ("rule", rule_id)
    return ("flow", pkt.src_ip, pkt.dst_ip, pkt.sport, pkt.dport, pkt.l4_proto)


class LimiterModel:
    """The buckets and blocks of a limits section, in Python: GCRA per key, time given
    by the caller (ns). Keys under the gate are counted like any other (the model of a
    gate-free limit, which is what an attacker who repeats a key gets)."""

    def __init__(self, section: Limits):
        self.section = section
        self.tat: dict[tuple, list[int]] = {}
        self.blocks: dict[Any, int] = {}

    def blocked(self, pkt: ParsedPacket, now: int) -> bool:
        for limit in self.section.limits.values():
            if limit.block_s and self.blocks.get(limit.prefix(pkt.src_ip), 0) > now:
                return True
        return False

    def offer(self, rule_id: int, pkt: ParsedPacket, now: int) -> bool:
        """Whether the packet a rule passed fits its limit (True if the rule has none)."""
        name = dict(self.section.rules).get(rule_id)
        if name is None:
            return True
        limit = self.section.limits[name]
        key = (name, *bucket_key(limit, rule_id, pkt))
        tat = self.tat.setdefault(key, [now, now])
        d = bucket_consts(limit)
        costs = []
        if d["pkt_ns"]:
            costs.append((0, d["pkt_ns"], d["pkt_tol"]))
        if d["byte_ns16"]:
            costs.append((1, (pkt.frame_len * d["byte_ns16"]) >> abi.SW_LIM_NS16_SHIFT, d["byte_tol"]))
        if all(max(tat[i], now) <= now + tol for i, _, tol in costs):
            for i, cost, _ in costs:
                tat[i] = max(tat[i], now) + cost
            return True
        if limit.block_s:
            self.blocks[limit.prefix(pkt.src_ip)] = now + int(limit.block_s * 1e9)
        return False


def bucket_consts(limit: Limit) -> dict:
    """The limit as its program reads it (struct sw_lim_def)."""
    pkt_ns = round(1e9 / limit.pps) if limit.pps else 0
    byte_ns16 = round(8e9 * (1 << abi.SW_LIM_NS16_SHIFT) / limit.bps) if limit.bps else 0
    return {
        "id": limit.id, "per": PER[limit.per], "gate": limit.gate, "block": int(bool(limit.block_s)),
        "pkt_ns": pkt_ns, "pkt_tol": max(limit.burst - 1, 0) * pkt_ns,
        "byte_ns16": byte_ns16, "byte_tol": (limit.burst_bytes * byte_ns16) >> abi.SW_LIM_NS16_SHIFT,
        "block_ns": int(limit.block_s * 1e9),
        "plen4": _span(limit.prefix4, True), "plen6": _span(limit.prefix6, False),
        "mask4": {"m": _mask(limit.prefix4, True)}, "mask6": {"m": _mask(limit.prefix6, False)},
    }


# -- the policy file -----------------------------------------------------------------


def parse_limit(name: str, spec: dict, path: str, v: Validator) -> Limit | None:
    ok = True

    def number(key: str, lo: int, hi: int, default: int) -> int:
        nonlocal ok
        value = spec.get(key, default)
        if type(value) is not int or not lo <= value <= hi:
            v.report(f"{path}.{key}", f"expected a whole number from {lo} to {hi}, got {describe(value)}")
            ok = False
            return default
        return value

    per = spec.get("per", "source")
    if per not in PER:
        v.report(f"{path}.per", f"expected one of {', '.join(PER)}, got "
                                f"{quote(per) if isinstance(per, str) else describe(per)}")
        return None
    pps = v.check(f"{path}.pps", parse_rate, spec["pps"], "a packet rate", MAX_PPS) if "pps" in spec else None
    bps = v.check(f"{path}.bps", parse_rate, spec["bps"], "a bit rate", MAX_BPS) if "bps" in spec else None
    if "pps" not in spec and "bps" not in spec:
        v.report(path, "a limit needs pps, bps or both")
        return None
    if ("pps" in spec and pps is None) or ("bps" in spec and bps is None):
        return None
    if "burst" in spec and not pps:
        v.report(f"{path}.burst", "burst is in packets: it goes with pps (burst_bytes goes with bps)")
        return None
    if "burst_bytes" in spec and not bps:
        v.report(f"{path}.burst_bytes", "burst_bytes goes with bps")
        return None
    for key in ("prefix4", "prefix6"):
        if key in spec and per not in ("source", "destination", "flow"):
            v.report(f"{path}.{key}", f"a per {per} limit has no address to aggregate")
            return None
    block_s = 0.0
    if "block" in spec:
        if per not in ("source", "flow"):
            v.report(f"{path}.block", f"a per {per} bucket is shared by many sources: only per "
                                      "source or per flow limits can block the source")
            return None
        block_s = v.check(f"{path}.block", parse_duration, spec["block"])
        if block_s is None:
            return None
        if block_s > MAX_BLOCK_S:
            v.report(f"{path}.block", "a block lasts at most 7d")
            return None
    limit = Limit(
        name, per,
        prefix4=number("prefix4", 0, 32, 32), prefix6=number("prefix6", 0, 128, 64),
        pps=pps, bps=bps,
        burst=number("burst", 1, 10**9, max(pps or 1, 1)) if pps else 0,
        burst_bytes=number("burst_bytes", 64, 10**12, max((bps or 0) // 8, 1514)) if bps else 0,
        block_s=block_s)
    return limit if ok else None


class LimitStage(Stage):
    name = "limit"
    reasons = ("rate_limited", "blocked")
    keys = ("limits",)
    order = 18  # blocks before the rules; the rules hand it what a limit rule passed
    config_maps = {
        TABLE: ("__u32", "__u32"),
        SKETCH: ("__u32", "struct sw_lim_line"),
        STATS: ("__u32", "struct sw_lim_stat"),
        BASE: ("__u32", "struct sw_lim_stat"),
        NAMES: ("__u32", "struct sw_rule_name"),
        # lib/clock.h, ticking every millisecond: pinned so that it ticks.
        "sw_lim_clock": ("__u32", "__u64[3]"),
    }
    state_maps = {
        BUCKETS: ("struct sw_lim_key", "struct sw_lim_bucket"),
        BLOCKS: ("struct sw_block_key", "struct sw_block"),
        BITS: ("__u32", "struct sw_lim_bits"),
    }

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: Validator) -> Limits | None:
        if "limits" not in doc:
            return None
        spec = doc["limits"]
        if not isinstance(spec, dict):
            v.report("limits", f"expected a mapping of limit names, got {describe(spec)}")
            return None
        found: dict[str, Limit] = {}
        for name, body in spec.items():
            path = f"limits.{name}"
            if not isinstance(name, str) or not NAME.match(name):
                v.report("limits", f"invalid limit name {quote(name)} (letters, digits, _ and -)")
                continue
            body = v.mapping(body, path, KEYS)
            if body is not None and (limit := parse_limit(name, body, path, v)) is not None:
                found[name] = limit
        if not v.within_capacity("limits", len(spec), abi.SW_LIM_MAX, "limits"):
            return None
        for version, key in ((4, "prefix4"), (6, "prefix6")):
            lengths = {getattr(x, key) for x in found.values() if x.block_s}
            if len(lengths) > abi.SW_LIM_BLOCK_LENS:
                v.report("limits", f"blocking limits use {len(lengths)} IPv{version} prefix lengths; "
                                   f"at most {abi.SW_LIM_BLOCK_LENS} (each costs a test per packet)")
        return Limits(found)

    def link(self, section: Limits | None, sections: dict, v: Validator) -> Limits | None:
        """Resolves the rules' `{limit: NAME}` actions against the section."""
        ruleset = sections.get("policy")
        rules = ruleset.rules if isinstance(ruleset, RuleSet) else ()
        used = []
        for rule in rules:
            name = rule.action.limit
            if name is None:
                continue
            if section is None or name not in section.limits:
                known = ", ".join(section.limits) if section and section.limits else "none defined"
                v.report(f"rules.{rule.name}.action.limit", f"unknown limit {quote(name)} "
                                                           f"(limits: {known})")
                continue
            used.append((rule.id, name))
        if section is None:
            return None
        return replace(section, rules=tuple(used))

    def place(self, section: Limits | None) -> int:
        # Without blocks there is nothing to do before the rules: after them, the stage
        # only runs for the packets the rules hand it, not one tail call more for all.
        if section is not None and not any(x.block_s for x in section.limits.values()):
            return 25
        return self.order

    def busy(self, section: Limits | None) -> bool:
        return section is not None and bool(section.rules)

    def summary(self, section: Limits | None) -> list[str]:
        if section is None:
            return []
        lines = []
        for limit in section.limits.values():
            users = sum(1 for _, name in section.rules if name == limit.name)
            rate = " + ".join(x for x in (f"{limit.pps:,} pps" if limit.pps else "",
                                          f"{limit.bps:,} bit/s" if limit.bps else "") if x)
            block = f", blocks for {limit.block_s:g}s" if limit.block_s else ""
            lines.append(f"limit {limit.name}: {rate} per {limit.per}{block}; "
                         f"used by {users} rule(s)")
        return lines

    def warnings(self, policy: Policy) -> Iterable[Issue]:
        section = policy.sections.get("limit")
        if not isinstance(section, Limits):
            return
        used = {name for _, name in section.rules}
        for name, limit in section.limits.items():
            if name not in used:
                yield Issue(policy.source, f"limits.{name}", "no rule uses this limit")
            if limit.pps and limit.gate == 1:
                yield Issue(policy.source, f"limits.{name}",
                            f"{limit.pps} pps is under {math.ceil(1 / (GATE_SLACK * WINDOW_S))} pps: "
                            "every new key gets a bucket, so a flood of spoofed sources costs a "
                            "table insert per packet; aggregate (prefix4/prefix6) or limit per "
                            "destination as well")

    def changes(self, old: Limits | None, new: Limits | None) -> list[str]:
        before = old.limits if old else {}
        after = new.limits if new else {}
        lines = [f"limit {n}: added" for n in after if n not in before]
        lines += [f"limit {n}: removed (its buckets stay until they age out)" for n in before if n not in after]
        lines += [f"limit {n}: changed" for n in after if n in before and before[n] != after[n]]
        return lines

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Limits, pkt: ParsedPacket) -> Decision | None:
        # Blocks and buckets are state, not policy: LimiterModel models them over time.
        return None

    # -- the data plane -----------------------------------------------------------------
    def build(self, image: Limits, column: list[int] | None) -> StageBuild:
        order = list(image.limits.values())
        index = {limit.name: i + 1 for i, limit in enumerate(order)}
        top = max((rule_id for rule_id, _ in image.rules), default=0)
        table = array("I", [0] * (top + 1))
        for rule_id, name in image.rules:
            table[rule_id] = index[name]
        consts: dict[str, Any] = {"nlimits": len(order),
                                  "seed": int.from_bytes(os.urandom(8), "little"),
                                  "def": [bucket_consts(limit) for limit in order]}
        for version, key in ((4, "4"), (6, "6")):
            lengths = sorted({getattr(x, f"prefix{key}") for x in order if x.block_s})
            consts[f"nblock{key}"] = len(lengths)
            consts[f"block_plen{key}"] = [_span(n, version == 4) for n in lengths]
            consts[f"block_mask{key}"] = [{"m": _mask(n, version == 4)} for n in lengths]
        contents = {}
        if order:
            contents[NAMES] = (array("I", range(len(order))).tobytes(), pack_names([x.name for x in order]))
        return StageBuild(rodata={CONSTS: pack("struct sw_lim_consts", consts)},
                          table=(TABLE, table.tobytes()), contents=contents,
                          memory=4 * len(table) + 64 * abi.SW_LIM_SKETCH_LINES)

    def describe(self, image: Limits) -> list[str]:
        blocking = sum(1 for x in image.limits.values() if x.block_s)
        return [f"limit: {len(image.limits)} limits for {len(image.rules)} rules; "
                f"{blocking} blocking (a bit test per packet per block prefix length); "
                f"buckets shared by all CPUs, at most {abi.SW_LIM_BUCKETS:,}; "
                f"blocks at most {abi.SW_LIM_BLOCKS:,}"]

    # -- counters follow limit names ----------------------------------------------------
    def carry(self, maps: dict[str, Any]) -> dict[str, dict]:
        if STATS not in maps or NAMES not in maps:
            return {}
        return {name: stat_of(maps, i) for i, name in limit_names(maps).items()}

    def after_swap(self, maps: dict[str, Any], carried: Any) -> None:
        if BLOCKS in maps and BITS in maps:
            rebuild_block_bits(maps[BLOCKS], maps[BITS])
        if not carried or BASE not in maps:
            return
        ids = {i: carried[name] for i, name in limit_names(maps).items() if name in carried}
        if ids:
            maps[BASE].update_batch(list(ids), list(ids.values()))

    # -- status ------------------------------------------------------------------------
    def status(self, maps: dict[str, Any]) -> dict:
        if STATS not in maps or NAMES not in maps:
            return {}
        report: dict[str, Any] = {"limits": {name: stat_of(maps, i)
                                             for i, name in limit_names(maps).items()}}
        if BLOCKS in maps:
            report["blocks"] = len(list_blocks(maps[BLOCKS]))
        return report

    def status_lines(self, report: dict) -> list[str]:
        lines = []
        for name, s in report.get("limits", {}).items():
            lines.append(f"limit {name}: {s['passed']:,} passed, {s['limited']:,} rate-limited, "
                         f"{s['blocks']:,} blocks set")
        if "blocks" in report:
            lines.append(f"blocks in force: {report['blocks']:,}")
        return lines


def limit_names(maps: dict[str, Any]) -> dict[int, str]:
    return read_names(maps[NAMES])


def stat_of(maps: dict[str, Any], i: int) -> dict:
    fields = ("passed", "limited", "bucketed", "blocks")
    total = {f: 0 for f in fields}
    for cell in maps[STATS].lookup(i):
        for f in fields:
            total[f] += int(getattr(cell, f))
    if BASE in maps:
        base = maps[BASE].lookup(i)
        for f in fields:
            total[f] += int(getattr(base, f))
    return total


@dataclass(frozen=True)
class Block:
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    limit_id: int
    remaining_s: float


def block_network(key: Any) -> Network:
    addr = from_key_bytes(bytes(key.addr))
    return ipaddress.ip_network((addr, int(key.plen) - (96 if addr.version == 4 else 0)))


def list_blocks(blocks: Any, now_ns: int | None = None) -> list[Block]:
    """The blocks in force (expired ones are left for the data plane to drop)."""
    now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC) if now_ns is None else now_ns
    found = []
    for key, value in blocks.lookup_batch():
        if int(value.expires_ns) > now_ns:
            found.append(Block(block_network(key), int(value.limit), (int(value.expires_ns) - now_ns) / 1e9))
    return sorted(found, key=lambda b: (b.prefix.version, b.prefix))


_M64 = (1 << 64) - 1


def block_bit(key: dict) -> int:
    """A block key's bit in the presence bitmap, as sw_lim_block_word() computes it."""
    raw = bytes(key["addr"])
    w0, w1 = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
    h = ((w0 * 0x9E3779B97F4A7C15) & _M64) ^ w1
    h = ((h ^ key["plen"]) * 0xBF58476D1CE4E5B9) & _M64
    return h >> 48


def rebuild_block_bits(blocks: Any, bits: Any) -> None:
    """The bitmap of the blocks in force, stale bits (lifted and expired blocks) gone.
    A block the data plane sets while this runs may lose its bit: its source is then
    looked up again only once it goes over its limit again."""
    words = [0] * (abi.SW_LIM_BLOCK_BITS // 32)
    for block in list_blocks(blocks):
        bit = block_bit(block_key(block.prefix))
        words[bit >> 5] |= 1 << (bit & 31)
    bits.update(0, {"word": words})


def block_key(net: Network) -> dict:
    """The struct sw_block_key of a blocked prefix (the 16-byte key with its length)."""
    key = lpm_key(net)
    return {"addr": key["addr"], "plen": key["prefixlen"]}


register(LimitStage())
