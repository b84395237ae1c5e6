"""The sources rate limits have blocked on an interface (stages/limit.py): listed,
lifted and swept. The data plane sets and expires blocks by itself; lifting one is a
single delete from the pinned table, which the next packet sees. `shieldwall blocks`
and the daemon (its control API, its expiry sweep) both come here."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..dataplane import bpffs
from ..dataplane.images import read_names
from ..kernel.libbpf import Map
from ..policy.errors import Invalid
from ..policy.model import Network
from ..policy.sets import parse_prefix
from ..stages.limit import (BITS, BLOCKS, NAMES, LimitStage, block_key, block_network,
                            list_blocks, rebuild_block_bits)
from .transaction import Layout


@contextmanager
def _table(iface: str, missing_ok: bool = False) -> Iterator[tuple[Layout, Map | None]]:
    bpffs.require_root()
    bpffs.ensure_bpffs()
    layout = Layout.of(iface)
    path = layout.state / BLOCKS
    if not path.exists():
        if missing_ok:
            yield layout, None
            return
        raise ValueError(f"no blocks on {iface}: shieldwall is not attached there, or no "
                         "policy it ran has used a limit")
    k, v = LimitStage.state_maps[BLOCKS]
    blocks = Map.open_pinned(path, k, v)
    try:
        yield layout, blocks
    finally:
        blocks.close()


def listing(iface: str) -> list[dict]:
    """The blocks in force: prefix, the limit that set it, the seconds it has left."""
    with _table(iface) as (layout, blocks):
        names = _limit_names(layout)
        return [{"prefix": str(b.prefix), "limit": names.get(b.limit_id, f"id {b.limit_id}"),
                 "seconds_left": round(b.remaining_s, 1)} for b in list_blocks(blocks)]


@dataclass
class Lifted:
    lifted: list[str] = field(default_factory=list)
    not_blocked: list[str] = field(default_factory=list)  # asked for, covered by no block


def lift(iface: str, prefixes: list[str], everything: bool = False) -> Lifted:
    """Lifts the blocks covering these prefixes or addresses (an address lifts the block
    that covers it, whatever the block's length), or every block."""
    if not everything and not prefixes:
        raise ValueError("name the prefixes or addresses to unblock, or give --all")
    wanted = []
    for text in prefixes:
        try:
            wanted.append(parse_prefix(text))
        except Invalid as exc:
            raise Invalid(f"prefix {exc}") from None
    with _table(iface) as (layout, blocks):
        found = list_blocks(blocks)
        if everything:
            targets = [b.prefix for b in found]
            missing: list[str] = []
        else:
            targets = [b.prefix for b in found if any(_overlap(w, b.prefix) for w in wanted)]
            missing = [str(w) for w in wanted if not any(_overlap(w, t) for t in targets)]
        for net in targets:
            blocks.delete(block_key(net))
        _rebuild_bits(blocks, layout)
    return Lifted([str(n) for n in targets], missing)


def sweep(iface: str) -> list[str]:
    """Deletes the blocks whose time has passed (the data plane ignores them, but they
    hold a slot of the table until then); the prefixes swept. A block the data plane
    renews between the read and the delete goes too: its source is blocked again once
    it goes over its limit again."""
    with _table(iface, missing_ok=True) as (layout, blocks):
        if blocks is None:
            return []
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        gone = [block_network(key) for key, value in blocks.lookup_batch()
                if int(value.expires_ns) <= now]
        for net in gone:
            blocks.delete(block_key(net))
        if gone:
            _rebuild_bits(blocks, layout)
        return [str(net) for net in gone]


def _limit_names(layout: Layout) -> dict[int, str]:
    """Limit ids to names, from the generation in force (a block set by a limit that
    is gone since shows its id)."""
    live = layout.live_generation()
    path = layout.gen(live) / NAMES if live is not None else None
    if path is None or not path.exists():
        return {}
    k, v = LimitStage.config_maps[NAMES]
    names = Map.open_pinned(path, k, v)
    try:
        return {zlib.crc32(n.encode()) or 1: n for n in read_names(names).values()}
    finally:
        names.close()


def _overlap(a: Network, b: Network) -> bool:
    return a.version == b.version and (a.subnet_of(b) or b.subnet_of(a))


def _rebuild_bits(blocks: Map, layout: Layout) -> None:
    """Lifted blocks' bits go, so their sources cost no lookup any more."""
    path = layout.state / BITS
    if path.exists():
        k, v = LimitStage.state_maps[BITS]
        bits = Map.open_pinned(path, k, v)
        try:
            rebuild_block_bits(blocks, bits)
        finally:
            bits.close()
