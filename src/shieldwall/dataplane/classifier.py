"""The policy stage's maps: installing a compiled ruleset and reading its rule counters.

A ruleset occupies one of two generation slots. Installing fills the idle slot with
fresh inner maps and then bumps sw_pol_state.gen: one write switches every map at once,
and a packet already running keeps the inner maps it looked up (the kernel frees them
after it). See docs/classifier.md.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import abi
from ..kernel._libbpf import ffi
from ..kernel.libbpf import (MAP_F_INNER_MAP, MAP_F_NO_PREALLOC, MAP_TYPE_ARRAY,
                             MAP_TYPE_LPM_TRIE, Map)

if TYPE_CHECKING:
    from ..policy.compile import PolicyImage

STATE = "sw_pol_state"
META = "sw_pol_meta"
HITS = "sw_pol_hits"
NAMES = "sw_pol_names"
BLOCK = f"__u64[{abi.SW_POL_BLOCK_WORDS}]"  # struct sw_pol_block


@dataclass(frozen=True)
class RuleCounter:
    packets: int
    bytes: int
    last_hit_ns: int  # bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC_COARSE); 0 if never hit
    would_drop: int


_COUNTER_FIELDS = ("packets", "bytes", "last_hit_ns", "would_drop")


def install(maps: dict[str, Map], image: PolicyImage | None) -> None:
    """Makes `image` the active ruleset (None: no policy, the stage hands packets on).
    Counters follow rule names: a rule that keeps its name keeps its counts."""
    state = maps[STATE]
    gen = state.lookup(0).gen + 1
    slot = gen & 1
    before = maps[META].lookup(slot ^ 1).nrules
    carried = _counters_by_name(maps, before)
    meta: dict = {"enabled": 0}
    if image is not None:
        for outer, inner in _inner_maps(image):
            try:
                maps[outer].set_fd(slot, inner.fd)
            finally:
                inner.close()  # the outer map holds it now
        meta = image.meta()
    maps[META].update(slot, meta)
    state.update(0, {"gen": gen})
    # What the new ruleset counts between the switch and the zeroing is lost: a few packets.
    names = image.rule_names if image is not None else ()
    _zero(maps[HITS], max(before, len(names)) + 1)
    _write_names(maps[NAMES], names)
    for rule_id, name in enumerate(("",) + names):
        if name in carried:
            maps[HITS].update(rule_id, carried[name])


def _counters_by_name(maps: dict[str, Map], nrules: int) -> dict[str, list]:
    """Per-CPU counters of the active ruleset's rules by name ("" is id 0, the default)."""
    names = rule_names(maps, nrules)
    return {names.get(rule_id, ""): _cells(maps[HITS], rule_id) for rule_id in range(nrules + 1)
            if rule_id == 0 or names.get(rule_id)}


def rule_names(maps: dict[str, Map], nrules: int | None = None) -> dict[int, str]:
    """Names of the active ruleset's rules by id."""
    if nrules is None:
        nrules = maps[META].lookup(maps[STATE].lookup(0).gen & 1).nrules
    return {rule_id: ffi.string(maps[NAMES].lookup(rule_id).name, abi.SW_RULE_NAME_LEN).decode()
            for rule_id in range(1, nrules + 1)}


def _cells(hits: Map, rule_id: int) -> list[dict]:
    return [{f: getattr(c, f) for f in _COUNTER_FIELDS} for c in hits.lookup(rule_id)]


def _write_names(names: Map, rule_names: tuple[str, ...]) -> None:
    if rule_names:
        blob = b"".join(n.encode().ljust(abi.SW_RULE_NAME_LEN, b"\0") for n in rule_names)
        names.update_batch(array("I", range(1, len(rule_names) + 1)).tobytes(), blob)


def _inner_maps(image: PolicyImage):
    """The generation's maps, created at its own sizes and filled."""
    blocks = len(image.blocks) // abi.SW_POL_BLOCK_WORDS
    yield "sw_pol_keys", _filled_array("sw_pol_keys", "__u32", image.keys.tobytes(), len(image.keys))
    yield "sw_pol_vecs", _filled_array("sw_pol_vecs", BLOCK, image.blocks.tobytes(), blocks)
    for field, trie in image.tries.items():
        m = Map.create(MAP_TYPE_LPM_TRIE, f"sw_pol_{field}", "struct sw_lpm_key", "__u32",
                       max(1, len(trie)), flags=MAP_F_NO_PREALLOC)
        _fill(m, trie.keys, trie.classes.tobytes())
        yield f"sw_pol_{field}", m


def _filled_array(name: str, value_type: str, values: bytes, count: int) -> Map:
    m = Map.create(MAP_TYPE_ARRAY, name, "__u32", value_type, max(1, count), flags=MAP_F_INNER_MAP)
    _fill(m, array("I", range(count)).tobytes(), values)
    return m


def _fill(m: Map, keys: bytes, values: bytes) -> None:
    try:
        m.update_batch(keys, values)
    except BaseException:
        m.close()
        raise


def _zero(hits: Map, count: int) -> None:
    """Rule ids may name other rules now: nothing may keep another rule's counts."""
    cell = ffi.sizeof("struct sw_rule_counter") * hits.ncpus
    hits.update_batch(array("I", range(count)).tobytes(), bytes(cell * count))


def rule_counters(maps: dict[str, Map]) -> dict[int, RuleCounter]:
    """Counters of the active ruleset by rule id, summed over CPUs. Id 0 counts the
    packets no rule decided (default_action and ND protection)."""
    slot = maps[STATE].lookup(0).gen & 1
    out = {}
    for rule in range(maps[META].lookup(slot).nrules + 1):
        cells = maps[HITS].lookup(rule)
        out[rule] = RuleCounter(sum(c.packets for c in cells), sum(c.bytes for c in cells),
                                max(c.last_hit_ns for c in cells), sum(c.would_drop for c in cells))
    return out
