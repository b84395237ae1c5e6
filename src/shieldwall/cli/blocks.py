"""`shieldwall blocks`: the sources rate limits have blocked on an interface, listed
and lifted (engine/blocks.py; through the daemon's control API when one runs)."""

from __future__ import annotations

import argparse
import json
from ..engine import blocks as engine
from ..policy.errors import quote


def run(args: argparse.Namespace, api=None) -> int:
    if args.blocks_cmd == "list":
        rows = api.call("GET", "/blocks") if api else engine.listing(args.iface)
        return show_list(args, rows)
    if api:
        done = api.call("POST", "/blocks/del", {"prefixes": args.prefixes, "all": args.all})
        out = engine.Lifted(done["lifted"], done["not_blocked"])
    else:
        out = engine.lift(args.iface, args.prefixes, args.all)
    return show_lifted(args, out)


def show_list(args: argparse.Namespace, rows: list[dict]) -> int:
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no blocks in force on {args.iface}")
    else:
        for r in rows:
            print(f"{r['prefix']:<44} {r['limit']:<24} {r['seconds_left']:.0f}s left")
    return 0


def show_lifted(args: argparse.Namespace, out: engine.Lifted) -> int:
    for text in out.not_blocked:
        print(f"shieldwall: {quote(text)} is not blocked on {args.iface}")
    targets = out.lifted
    if args.json:
        print(json.dumps({"lifted": targets}))
    else:
        print(f"blocks on {args.iface}: {len(targets)} lifted" +
              (f" ({', '.join(targets[:5])}{' ...' if len(targets) > 5 else ''})" if targets else ""))
    return 0 if args.all or targets else 2
