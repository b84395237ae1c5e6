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
BLOCK = f"__u64[{abi.SW_POL_BLOCK_WORDS}]"  # struct sw_pol_block


@dataclass(frozen=True)
class RuleCounter:
    packets: int
    bytes: int
    last_hit_ns: int  # bpf_ktime_get_ns() clock (CLOCK_MONOTONIC); 0 if never hit
    would_drop: int


def install(maps: dict[str, Map], image: PolicyImage | None) -> None:
    """Makes `image` the active ruleset (None: no policy, the stage hands packets on)."""
    state = maps[STATE]
    gen = state.lookup(0).gen + 1
    slot = gen & 1
    before = maps[META].lookup(slot ^ 1).nrules
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
    _zero(maps[HITS], max(before, meta.get("nrules", 0)) + 1)


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
    """Counters start over with each ruleset: rule ids may now name other rules."""
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
