"""`shieldwall blocks`: the sources rate limits have blocked on an interface, listed
and lifted (stages/limit.py). The data plane sets and expires blocks by itself; lifting
one is a single delete from the pinned table, which the next packet sees."""

from __future__ import annotations

import argparse
import json
import zlib

from ..dataplane import bpffs
from ..dataplane.images import read_names
from ..engine.transaction import Layout
from ..kernel.libbpf import Map
from ..policy.errors import Invalid, quote
from ..policy.model import Network
from ..policy.sets import parse_prefix
from ..stages.limit import BITS, BLOCKS, NAMES, LimitStage, block_key, list_blocks, rebuild_block_bits


def run(args: argparse.Namespace) -> int:
    bpffs.require_root()
    bpffs.ensure_bpffs()
    layout = Layout.of(args.iface)
    path = layout.state / BLOCKS
    if not path.exists():
        raise ValueError(f"no blocks on {args.iface}: shieldwall is not attached there, or no "
                         "policy it ran has used a limit")
    k, v = LimitStage.state_maps[BLOCKS]
    blocks = Map.open_pinned(path, k, v)
    try:
        found = list_blocks(blocks)
        if args.blocks_cmd == "list":
            return _list(args, found, _limit_names(layout))
        return _lift(args, blocks, found)
    finally:
        blocks.close()


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


def _list(args: argparse.Namespace, found: list, names: dict[int, str]) -> int:
    rows = [{"prefix": str(b.prefix), "limit": names.get(b.limit_id, f"id {b.limit_id}"),
             "seconds_left": round(b.remaining_s, 1)} for b in found]
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no blocks in force on {args.iface}")
    else:
        for r in rows:
            print(f"{r['prefix']:<44} {r['limit']:<24} {r['seconds_left']:.0f}s left")
    return 0


def _lift(args: argparse.Namespace, blocks: Map, found: list) -> int:
    if args.all:
        targets = [b.prefix for b in found]
    else:
        if not args.prefixes:
            raise ValueError("name the prefixes or addresses to unblock, or give --all")
        wanted = []
        for text in args.prefixes:
            try:
                wanted.append(parse_prefix(text))
            except Invalid as exc:
                raise Invalid(f"prefix {exc}") from None
        # An address lifts the block that covers it, whatever the block's length.
        targets = [b.prefix for b in found if any(_overlap(w, b.prefix) for w in wanted)]
        missing = [str(w) for w in wanted if not any(_overlap(w, t) for t in targets)]
        for text in missing:
            print(f"shieldwall: {quote(text)} is not blocked on {args.iface}")
    for net in targets:
        blocks.delete(block_key(net))
    _rebuild_bits(blocks, Layout.of(args.iface))
    if args.json:
        print(json.dumps({"lifted": [str(n) for n in targets]}))
    else:
        print(f"blocks on {args.iface}: {len(targets)} lifted" +
              (f" ({', '.join(map(str, targets[:5]))}{' ...' if len(targets) > 5 else ''})" if targets else ""))
    return 0 if args.all or targets else 2

