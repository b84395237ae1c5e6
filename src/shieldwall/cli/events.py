"""`shieldwall events` and `shieldwall capture`: the data plane's sampled events
(ops/events.py), shown as lines or JSON, or written as a pcap."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode

from ..dataplane import bpffs
from ..ops.events import Event, EventStream, Filter, write_capture

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
FLAG_LETTERS = "FSRPAUEC"  # TCP flag bits, lowest first


def line(ev: Event) -> str:
    """One event as a line a person reads."""
    when = datetime.fromtimestamp(ev.ts).strftime("%H:%M:%S.%f")[:-3]
    rule = f" rule {ev.rule_name or ev.rule}" if ev.rule else ""
    proto = PROTOCOLS.get(ev.proto, str(ev.proto)) if ev.family else "-"
    if ev.family:
        src, dst = _end(ev.src, ev.sport, ev.family, ev.proto), _end(ev.dst, ev.dport, ev.family, ev.proto)
        flow = f"{src} > {dst} {proto}"
    else:
        flow = f"non-IP frame {ev.data[12:14].hex() if len(ev.data) >= 14 else ''}"
    if ev.proto == 6 and ev.family:
        flow += " " + ("".join(c for i, c in enumerate(FLAG_LETTERS) if ev.tcp_flags >> i & 1) or ".")
    sampled = f" 1/{ev.every}" if ev.every > 1 else ""
    lost = f" (+{ev.lost} not sent)" if ev.lost else ""
    return (f"{when} cpu{ev.cpu} {ev.action} {ev.reason} [{ev.stage}{rule}] {flow} "
            f"len {ev.frame_len}{sampled}{lost}")


def _end(addr: str | None, port: int, family: int, proto: int) -> str:
    if proto not in (6, 17, 132):
        return addr or "?"
    return f"[{addr}]:{port}" if family == 6 else f"{addr}:{port}"


def _wanted(args: argparse.Namespace) -> Filter:
    return Filter(reason=args.reason, rule=args.rule, action=getattr(args, "action", None))


def _stream(args: argparse.Namespace, seconds: float | None, count: int | None,
            recent: bool = False) -> Iterator[Event]:
    """The ring's events that pass the filter, until `seconds` have passed (None: until
    interrupted) or `count` were given. When a daemon serves the interface it is the
    ring's one consumer: they come from it (`recent`: its window of recent events,
    instead of what waits in the ring)."""
    from ..ops.client import find
    api = find(args.iface, getattr(args, "netns", None))
    if api is not None:
        yield from _from_daemon(api, args, seconds, count, recent)
        return
    bpffs.require_root()
    bpffs.ensure_bpffs()
    wanted, given = _wanted(args), 0
    deadline = time.monotonic() + seconds if seconds is not None else None
    with EventStream(args.iface) as stream:
        while deadline is None or time.monotonic() < deadline:
            wait = 0.25 if deadline is None else max(min(0.25, deadline - time.monotonic()), 0)
            for ev in stream.poll(wait):
                if wanted(ev):
                    yield ev
                    given += 1
                    if count is not None and given >= count:
                        return


def _from_daemon(api, args: argparse.Namespace, seconds: float | None, count: int | None,
                 recent: bool) -> Iterator[Event]:
    query = {k: v for k, v in (("reason", args.reason), ("rule", args.rule),
                                ("action", getattr(args, "action", None)),
                                ("seconds", seconds), ("count", count)) if v is not None}
    if recent:
        query = {**{k: v for k, v in query.items() if k != "seconds"}, "recent": 1}
    for data in api.stream("/events?" + urlencode(query)):
        yield Event.from_json(data)


def run_events(args: argparse.Namespace) -> int:
    """Without --follow: what is waiting in the ring now (at most --count); with it: as
    they come, until interrupted or --seconds."""
    seconds = args.seconds if args.seconds is not None else (None if args.follow else 0.3)
    count = args.count if args.count is not None else (None if args.follow else 1000)
    shown = 0
    try:
        for ev in _stream(args, seconds, count, recent=not args.follow and args.seconds is None):
            print(json.dumps(ev.as_json()) if args.json else line(ev), flush=args.follow)
            shown += 1
    except KeyboardInterrupt:
        pass
    if not args.json and not args.follow and shown == 0:
        print("no events waiting (the data plane samples drops as they happen; --follow waits for them)")
    return 0


def run_capture(args: argparse.Namespace) -> int:
    """Sampled frames (their first bytes) into a pcap, for --seconds or --count."""
    path = Path(args.pcap)
    try:
        written = write_capture(path, _stream(args, args.seconds, args.count))
    except KeyboardInterrupt:
        written = None  # the file holds every whole record written so far
    print(f"wrote {'the' if written is None else written} sampled frames to {path}"
          + ("" if written is None else f" in {args.seconds:g} s" if args.seconds else ""))
    return 0
