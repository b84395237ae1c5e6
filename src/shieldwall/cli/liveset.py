"""`shieldwall set`: live entries of the running policy's sets (engine.livesets)."""

from __future__ import annotations

import argparse
import json
import os
import select
import stat
import sys
import time
from typing import IO, Iterator
from urllib.parse import urlencode

from ..engine import livesets
from ..policy.errors import Invalid, quote

# A feed is applied in batches: as many lines as are there, up to this many.
BATCH_LINES = 20_000
# How long a batch waits for more lines of a stream before it is applied.
BATCH_WAIT = 0.2
# Bad lines of a feed reported before the rest are only counted.
MAX_REPORTED = 20


def run(args: argparse.Namespace, api=None) -> int:
    if args.set_cmd == "list":
        return _list(args, api)
    if args.set_cmd == "apply":
        return _apply(args)
    name, texts = args.set, args.prefixes
    ttl = getattr(args, "ttl", None)
    if api is not None:
        body = {"set": name, "prefixes": texts, **({"ttl": ttl} if ttl else {})}
        out = livesets.Outcome(**api.call("POST", f"/sets/{args.set_cmd}", body))
        _report(args, out)
        return 2 if out.problems else 0
    out = livesets.change(args.iface, livesets.decisions(args.set_cmd, name, texts, ttl))
    _report(args, out)
    return 2 if out.problems else 0


def _report(args: argparse.Namespace, out: livesets.Outcome, lines: int | None = None) -> None:
    for problem in out.problems[:MAX_REPORTED]:
        print(f"shieldwall: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps({"added": out.added, "removed": out.removed, "unchanged": out.unchanged,
                          "expired": out.expired, "in_place": out.in_place,
                          "revision": out.revision, "seconds": round(out.seconds, 4),
                          "problems": out.problems[:MAX_REPORTED], **({"lines": lines} if lines else {})}))
        return
    how = ("in place" if out.in_place
           else f"through a new generation (revision {out.revision})")
    print(f"set on {args.iface}: {out.added} added, {out.removed} removed, {out.unchanged} unchanged"
          + (f", {out.expired} expired" if out.expired else "")
          + f"; applied {how} in {out.seconds * 1000:.0f} ms")


def _list(args: argparse.Namespace, api=None) -> int:
    name = args.set
    entries = (api.call("GET", "/sets" + (f"?{urlencode({'set': name})}" if name else ""))
               if api is not None else livesets.listing(args.iface, name))
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    if not entries:
        print(f"no live entries on {args.iface}" + (f" in set {name}" if name else ""))
    for e in entries:
        ttl = "no ttl" if e["ttl_seconds"] is None else f"ttl {e['ttl_seconds']:.0f}s"
        print(f"{e['set']:<20} {e['prefix']:<44} {ttl}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    where = args.source
    stream = sys.stdin.buffer if where == "-" else _open_regular(where)
    shown = "standard input" if where == "-" else where
    bad = total = 0
    totals = livesets.Outcome()
    started = time.monotonic()
    try:
        for batch in _batches(stream):
            decisions = []
            now = time.time()
            for number, raw in batch:
                total += 1
                try:
                    if len(raw) > livesets.MAX_LINE:
                        raise Invalid(f"longer than {livesets.MAX_LINE} bytes")
                    found = livesets.parse_decision(raw.decode("utf-8", "replace"), args.default_set, now)
                except Invalid as exc:
                    bad += 1
                    if bad <= MAX_REPORTED:
                        print(f"shieldwall: {shown} line {number}: {exc}", file=sys.stderr)
                    continue
                if found is not None:
                    decisions.append(found)
            if decisions:
                out = livesets.change(args.iface, decisions)
                for field in ("added", "removed", "unchanged", "expired"):
                    setattr(totals, field, getattr(totals, field) + getattr(out, field))
                totals.in_place &= out.in_place
                totals.revision = out.revision or totals.revision
                totals.problems += out.problems
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    if bad > MAX_REPORTED:
        print(f"shieldwall: {shown}: {bad - MAX_REPORTED} more bad lines", file=sys.stderr)
    totals.seconds = time.monotonic() - started
    _report(args, totals, total)
    return 2 if bad or totals.problems else 0


def _open_regular(path: str) -> IO[bytes]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise Invalid(f"{quote(path)}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Invalid(f"{quote(path)} is not a regular file (give - and a pipe for a stream)")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _batches(stream: IO[bytes]) -> Iterator[list[tuple[int, bytes]]]:
    """Numbered lines, in batches: what a stream has at hand (waiting BATCH_WAIT for
    more), at most BATCH_LINES. A line longer than MAX_LINE is kept cut, to be refused."""
    number = 0
    batch: list[tuple[int, bytes]] = []
    deadline = None
    while True:
        raw = stream.readline(livesets.MAX_LINE + 1)
        if not raw:
            break
        if len(raw) > livesets.MAX_LINE and not raw.endswith(b"\n"):
            while (rest := stream.readline(1 << 16)) and not rest.endswith(b"\n"):
                pass  # the rest of an overlong line
        number += 1
        batch.append((number, raw.rstrip(b"\r\n")))
        deadline = deadline or time.monotonic() + BATCH_WAIT
        if len(batch) >= BATCH_LINES or (time.monotonic() >= deadline or not _more_at_hand(stream)):
            yield batch
            batch, deadline = [], None
    if batch:
        yield batch


def _more_at_hand(stream: IO[bytes]) -> bool:
    """Whether the next line can be read without waiting (always, for a file; for a
    pipe, lines already buffered here count as not at hand: the batch is just smaller)."""
    if stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        return True
    try:
        ready, _, _ = select.select([stream], [], [], 0)
    except (ValueError, OSError):
        return True
    return bool(ready)

