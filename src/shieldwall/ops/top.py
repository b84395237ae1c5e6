"""`shieldwall top`: what the interface is doing, refreshed every second.

Everything shown comes from two places: `status` reports read a second apart (rates
are the counters' deltas over the time between the reads) and the sampled drop events
(top dropped sources). The pieces are pure functions over those, so they are tested
without a kernel: `frame()` builds what one refresh shows, `plain()` prints it as text
(`--once`), `render()` lays it out for the terminal.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from .events import Event
from .reasons import stage_of

# A flood shows first as these reasons rising (docs/reasons.md).
FLOOD_REASONS = {
    "syn_cookie": "SYN flood (answered with cookies)",
    "syn_challenge": "SYN flood (challenged)",
    "bad_cookie": "TCP segments that answer no cookie",
    "syn_unanswerable": "SYNs the stage cannot answer",
    "rate_limited": "sources over their rate limit",
    "blocked": "blocked sources still sending",
    "reflection": "UDP reflection/amplification",
    "reflector_limited": "a reflector over its limit",
    "reflection_fragment": "fragments of unsolicited UDP",
    "icmp_limited": "ICMP flood over its limit",
    "icmp_unrelated": "ICMP errors about no flow of this host",
    "bad_tcp_flags": "TCP packets with impossible flags",
    "land": "land attack (source = destination)",
    "bogon_source": "spoofed bogon sources",
    "fragment_overlap": "overlapping fragments",
    "zero_port": "packets to or from port 0",
    "blocklisted": "sources on the deny list",
}
DROP_SHARE_ALERT = 0.5       # of all packets, when ...
MIN_PPS_ALERT = 100.0        # ... there is this much traffic at all
FLOOD_PPS_ALERT = 50.0       # a flood reason at this rate or more
FILL_ALERT = 0.8             # a map this full
ROWS = 8


@dataclass(frozen=True)
class Rate:
    action: str
    reason: str
    stage: str
    pps: float
    bps: float        # bits per second


@dataclass(frozen=True)
class RuleRate:
    rule: str
    pps: float
    bps: float
    packets: int
    last_hit_seconds_ago: float | None


@dataclass(frozen=True)
class Source:
    src: str
    packets: int          # estimated: each sample stands for `every` packets
    events: int
    reason: str           # its most common drop reason
    share: float          # of the sampled drops in the window


@dataclass
class Frame:
    iface: str
    mode: str | None
    attached: bool
    seconds: float
    rates: list[Rate]
    total_pps: float
    drop_pps: float
    total_bps: float
    drop_bps: float
    rules: list[RuleRate]
    sources: list[Source]
    sources_note: str | None
    sources_via: str | None
    limits: list[dict]
    blocks: int | None
    block_list: list[str]
    fill: list[tuple[str, int, int]]
    indicators: list[str]
    revision: str
    last_change: str | None
    problem: str | None = None
    lines: list[str] = field(default_factory=list)


# -- rates --------------------------------------------------------------------------------

def _delta(now: int, before: int) -> int:
    """Counters only grow; one that went back was reset (down and up again): count what
    it holds now."""
    return now - before if now >= before else now


def rates(before: dict, after: dict, seconds: float) -> list[Rate]:
    """Packets and bits per second by (action, reason), fastest first."""
    if seconds <= 0:
        return []
    old = {(c["action"], c["reason"]): c for c in before.get("counters", ())}
    out = []
    for c in after.get("counters", ()):
        o = old.get((c["action"], c["reason"]), {"packets": 0, "bytes": 0})
        p, b = _delta(c["packets"], o["packets"]), _delta(c["bytes"], o["bytes"])
        if p or b:
            out.append(Rate(c["action"], c["reason"], stage_of(c["reason"]),
                            p / seconds, 8 * b / seconds))
    return sorted(out, key=lambda r: (-r.pps, r.action, r.reason))


def rule_rates(before: dict, after: dict, seconds: float) -> list[RuleRate]:
    """Each rule's rate (by name, so a reload that renumbers rules does not mix them up),
    busiest first; rules that saw nothing in the interval go last, by total hits."""
    old = {r.get("name") or "(default)": r for r in before.get("rules", ())}
    out = []
    for r in after.get("rules", ()):
        name = r.get("name") or "(default)"
        o = old.get(name, {"packets": 0, "bytes": 0})
        p, b = _delta(r["packets"], o["packets"]), _delta(r["bytes"], o["bytes"])
        out.append(RuleRate(name, p / seconds if seconds > 0 else 0.0,
                            8 * b / seconds if seconds > 0 else 0.0, r["packets"],
                            r.get("last_hit_seconds_ago")))
    return sorted(out, key=lambda r: (-r.pps, -r.packets, r.rule))


# -- sampled drop events --------------------------------------------------------------------

def top_sources(events: Iterable[Any], now: float, window: float = 10.0,
                n: int = ROWS) -> list[Source]:
    """The sources of the most dropped packets in the last `window` seconds, from
    sampled drop events (ops.events.Event). An event stands for `every` packets, and for
    the `lost` candidates its CPU refused before it too: their sources are unknown, so
    they are taken to be spread as the events that were sent."""
    packets: dict[str, int] = {}
    count: dict[str, int] = {}
    reasons: dict[str, dict[str, int]] = {}
    for e in events:
        if e.action != "drop" or e.src is None or now - e.ts > window:
            continue
        weight = e.weight
        packets[e.src] = packets.get(e.src, 0) + weight
        count[e.src] = count.get(e.src, 0) + 1
        by = reasons.setdefault(e.src, {})
        by[e.reason] = by.get(e.reason, 0) + weight
    total = sum(packets.values())
    ranked = sorted(packets, key=lambda s: (-packets[s], s))[:n]
    return [Source(s, packets[s], count[s], max(reasons[s], key=lambda k: (reasons[s][k], k)),
                   packets[s] / total) for s in ranked]


class EventWindow:
    """The last minute of events, whatever feeds them (the ring, or the daemon's hub)."""

    def __init__(self, seconds: float = 60.0, maxlen: int = 100_000) -> None:
        self.seconds = seconds
        self.events: deque = deque(maxlen=maxlen)

    def add(self, events: Iterable[Any]) -> None:
        self.events.extend(events)

    def recent(self, now: float) -> list[Any]:
        while self.events and now - self.events[0].ts > self.seconds:
            self.events.popleft()
        return list(self.events)


# -- attack indicators ------------------------------------------------------------------------

def indicators(before: dict, after: dict, rate_rows: list[Rate], total_pps: float,
               drop_pps: float) -> list[str]:
    found = []
    if total_pps >= MIN_PPS_ALERT and drop_pps / total_pps >= DROP_SHARE_ALERT:
        found.append(f"{drop_pps / total_pps:.0%} of packets dropped ({_n(drop_pps)} pps)")
    for r in rate_rows:
        if r.reason in FLOOD_REASONS and r.pps >= FLOOD_PPS_ALERT:
            found.append(f"{FLOOD_REASONS[r.reason]}: {r.reason} at {_n(r.pps)} pps")
    b0, b1 = _blocks(before), _blocks(after)
    if b1 is not None and b1 > (b0 or 0):
        found.append(f"{b1 - (b0 or 0)} new block(s): {b1} source prefixes blocked")
    for name, entries, cap in _fill(after):
        if cap and entries / cap >= FILL_ALERT:
            found.append(f"map {name} {entries / cap:.0%} full ({entries:,} of {cap:,})")
    return found


def _blocks(report: dict) -> int | None:
    return report.get("stages", {}).get("limit", {}).get("blocks")


def _fill(report: dict) -> list[tuple[str, int, int]]:
    return sorted(((name, m["entries"], m["max_entries"]) for name, m in report.get("maps", {}).items()),
                  key=lambda f: (-(f[1] / f[2] if f[2] else 0), f[0]))


# -- one refresh ----------------------------------------------------------------------------

def frame(before: dict, after: dict, seconds: float, events: Iterable[Any] = (),
          now: float | None = None, events_note: str | None = None,
          block_list: list[str] | None = None, events_via: str | None = None) -> Frame:
    now = time.time() if now is None else now
    rows = rates(before, after, seconds)
    total_pps = sum(r.pps for r in rows)
    drop_pps = sum(r.pps for r in rows if r.action == "drop")
    rev = after.get("revision") or {}
    revision = (f"revision {rev.get('revision')}, applied {rev['when']} ({rev.get('origin')}): "
                f"{rev.get('source') or 'no policy'}") if "when" in rev else \
        (f"revision {rev.get('revision')}" if rev else "no revision")
    return Frame(
        iface=after["iface"], mode=after.get("mode"), attached=bool(after.get("attached")),
        seconds=seconds, rates=rows, total_pps=total_pps, drop_pps=drop_pps,
        total_bps=sum(r.bps for r in rows), drop_bps=sum(r.bps for r in rows if r.action == "drop"),
        rules=rule_rates(before, after, seconds),
        sources=top_sources(events, now), sources_note=events_note, sources_via=events_via,
        limits=[{"name": k, **v} for k, v in after.get("stages", {}).get("limit", {}).get("limits", {}).items()],
        blocks=_blocks(after), block_list=block_list or [], fill=_fill(after),
        indicators=indicators(before, after, rows, total_pps, drop_pps),
        revision=revision, last_change=last_change(after, now), problem=after.get("problem"))


def last_change(report: dict, now: float) -> str | None:
    """The latest change of any kind (updates.json), with how long it took."""
    latest = None
    for op, u in report.get("updates", {}).items():
        last = u.get("last")
        if last and (latest is None or last["at"] > latest[1]["at"]):
            latest = (op, last)
    if latest is None:
        return None
    op, last = latest
    outcome = "ok" if last.get("ok") else f"FAILED: {last.get('error')}"
    rev = f" -> revision {last['revision']}" if last.get("revision") else ""
    return f"{op}{rev}, {_ago(now - last['at'])}, took {last['seconds'] * 1000:.0f} ms, {outcome}"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _n(x: float) -> str:
    """1234567 -> 1.23M: rates as an operator reads them."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.2f}{unit}"
    return f"{x:.0f}" if x == int(x) or abs(x) >= 10 else f"{x:.1f}"


# -- text ---------------------------------------------------------------------------------

def plain(f: Frame) -> str:
    """One frame as plain text (`top --once`, pipes)."""
    out = [f"shieldwall top: {f.iface}, " + (f"{f.mode} mode" if f.attached else "NOT attached")
           + f", over {f.seconds:.1f} s",
           f"  {f.revision}",
           f"  last change: {f.last_change or 'none recorded'}",
           f"  total {_n(f.total_pps)} pps {_n(f.total_bps)}bps; dropped {_n(f.drop_pps)} pps "
           f"{_n(f.drop_bps)}bps"]
    if f.problem:
        out.append(f"  problem: {f.problem}")
    out.append("attack indicators:")
    out += [f"  ! {i}" for i in f.indicators] or ["  none"]
    out.append("verdicts (pps, bps):")
    out += [f"  {r.action:>8} {r.reason:<22} {r.stage:<10} {_n(r.pps):>9} pps {_n(r.bps):>9}bps"
            for r in f.rates[:ROWS * 2]] or ["  no packets in the interval"]
    out.append("top rules:")
    out += [f"  {r.rule:<32} {_n(r.pps):>9} pps {r.packets:>12} total  "
            + ("never hit" if r.last_hit_seconds_ago is None else f"last hit {r.last_hit_seconds_ago} s ago")
            for r in f.rules[:ROWS]] or ["  no rules (the policy stage is not in the chain)"]
    out.append(f"top dropped sources (sampled{', from ' + f.sources_via if f.sources_via else ''}):")
    if f.sources:
        out += [f"  {s.src:<40} {'~' + str(s.packets):>11} pkts {s.share:>6.1%}  {s.reason}" for s in f.sources]
    else:
        out.append(f"  {f.sources_note or 'no drop events in the last 10 s'}")
    out.append("limits and blocks:")
    out += [f"  limit {lim['name']}: {lim['passed']:,} passed, {lim['limited']:,} rate-limited, "
            f"{lim['blocks']:,} blocks set" for lim in f.limits]
    out.append(f"  blocks in force: {f.blocks if f.blocks is not None else 'none (no limit blocks)'}")
    out += [f"    {b}" for b in f.block_list[:ROWS]]
    out.append("map fill:")
    out += [f"  {name:<24} {entries:>9,} / {cap:<9,} {entries / cap if cap else 0:>6.1%}"
            for name, entries, cap in f.fill[:ROWS]] or ["  (no fillable maps)"]
    return "\n".join(out)


def render(f: Frame) -> Any:
    """The frame for rich's Live: a header, indicators, and tables side by side."""
    from rich.console import Group
    from rich.layout import Layout
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    head = Text()
    head.append(f"shieldwall top  {f.iface}  ", style="bold")
    head.append(f"{f.mode} mode" if f.attached else "NOT attached",
                style="green" if f.attached else "bold red")
    head.append(f"   total {_n(f.total_pps)} pps {_n(f.total_bps)}bps   ")
    head.append(f"dropped {_n(f.drop_pps)} pps {_n(f.drop_bps)}bps",
                style="bold red" if f.drop_pps else "")
    head.append(f"\n{f.revision}\nlast change: {f.last_change or 'none recorded'}"
                + (f"\nproblem: {f.problem}" if f.problem else "") + "   (q quits)", style="dim")
    alerts = Text("\n".join(f"! {i}" for i in f.indicators) or "no attack indicators",
                  style="bold red" if f.indicators else "green")

    verdicts = Table(title="verdicts", expand=True)
    for col, justify in (("action", "left"), ("reason", "left"), ("stage", "left"),
                         ("pps", "right"), ("bps", "right")):
        verdicts.add_column(col, justify=justify)
    for r in f.rates[:ROWS * 2]:
        verdicts.add_row(r.action, r.reason, r.stage, _n(r.pps), _n(r.bps),
                         style="red" if r.action == "drop" else None)
    rules = Table(title="top rules", expand=True)
    for col, justify in (("rule", "left"), ("pps", "right"), ("total", "right"), ("last hit", "right")):
        rules.add_column(col, justify=justify)
    for r in f.rules[:ROWS]:
        rules.add_row(r.rule, _n(r.pps), f"{r.packets:,}",
                      "never" if r.last_hit_seconds_ago is None else f"{r.last_hit_seconds_ago} s")
    sources = Table(title="top dropped sources (sampled, 10 s"
                    + (f", from {f.sources_via})" if f.sources_via else ")"), expand=True)
    for col, justify in (("source", "left"), ("~packets", "right"), ("share", "right"), ("reason", "left")):
        sources.add_column(col, justify=justify)
    for s in f.sources:
        sources.add_row(s.src, f"{s.packets:,}", f"{s.share:.1%}", s.reason)
    if not f.sources:
        sources.caption = f.sources_note or "no drop events in the last 10 s"
    state = Table(title="limits, blocks, map fill", expand=True)
    state.add_column("what")
    state.add_column("value", justify="right")
    for lim in f.limits:
        state.add_row(f"limit {lim['name']}", f"{lim['passed']:,} passed / {lim['limited']:,} limited")
    state.add_row("blocks in force", "-" if f.blocks is None else f"{f.blocks:,}")
    for b in f.block_list[:4]:
        state.add_row("", b)
    for name, entries, cap in f.fill[:ROWS]:
        state.add_row(name, f"{entries:,}/{cap:,} ({entries / cap if cap else 0:.0%})")

    layout = Layout()
    # The header grows with the indicators: an alert never hides below the fold.
    size = 2 + 3 + bool(f.problem) + min(max(1, len(f.indicators)), 8)
    layout.split_column(Layout(Panel(Group(head, alerts)), name="head", size=size), Layout(name="body"))
    layout["body"].split_row(Layout(name="left"), Layout(name="right"))
    layout["left"].split_column(Layout(verdicts), Layout(rules))
    layout["right"].split_column(Layout(sources), Layout(state))
    return layout


# -- running it ---------------------------------------------------------------------------

class EventFeed:
    """Sampled drop events into a window, from a background thread: the daemon's
    `/events` stream when a daemon serves the interface (the ring has one consumer, and
    then it is the daemon), else the interface's ring itself. `note` says why there are
    none when none can come; `via` where they come from."""

    def __init__(self, iface: str, netns: str | None = None) -> None:
        import threading
        self.window = EventWindow()
        self.note: str | None = None
        self.via: str | None = None
        self._closing = threading.Event()
        self._thread: Any = None
        self._wake: Any = None     # unblocks the reader
        self._release: Any = None  # frees the source, once the reader is gone
        try:
            poll = self._from_daemon(iface, netns) or self._from_ring(iface)
        except Exception as exc:  # noqa: BLE001 - no events is a note, never a failure of top
            self.note = f"no drop events: {(str(exc).splitlines() or [type(exc).__name__])[0]}"
            return
        if poll is None:
            return
        self._thread = threading.Thread(target=self._run, args=(poll,), name="top-events", daemon=True)
        self._thread.start()

    def _from_daemon(self, iface: str, netns: str | None) -> Any:
        from .client import _Connection, find
        client = find(iface, netns)
        if client is None:
            return None
        conn = _Connection(client.path, None)
        conn.request("GET", "/events?action=drop")
        answer = conn.getresponse()
        if answer.status != 200:
            conn.close()
            raise OSError(f"the daemon's /events answered HTTP {answer.status}")
        self.via, self._release = "the daemon", conn.close

        def wake() -> None:
            import socket
            if conn.sock is not None:
                conn.sock.shutdown(socket.SHUT_RDWR)  # a blocked read returns
        self._wake = wake

        def poll() -> list[Any]:
            line = answer.readline()
            if not line:
                raise OSError("the daemon ended the stream")
            return [Event.from_json(json.loads(line))] if line.strip() else []
        return poll

    def _from_ring(self, iface: str) -> Any:
        from .events import EventStream
        stream = EventStream(iface)
        # The ring is freed only after its reader has stopped (a poll returns in 0.2 s).
        self.via, self._release = "the ring", stream.close
        return lambda: [e for e in stream.poll(0.2) if e.action == "drop"]

    def _run(self, poll: Any) -> None:
        while not self._closing.is_set():
            try:
                self.window.add(poll())
            except Exception as exc:  # noqa: BLE001
                if not self._closing.is_set():
                    self.note = f"drop events stopped: {exc}"
                return

    def recent(self, now: float) -> list[Any]:
        return self.window.recent(now)

    def close(self) -> None:
        self._closing.set()
        try:
            if self._wake is not None:
                self._wake()
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=2)
            if self._thread.is_alive():
                return  # still inside the source: freeing it under the reader is worse
        if self._release is not None:
            try:
                self._release()
            except OSError:
                pass


def pick(reports: list[dict], iface: str | None) -> dict:
    """The one interface to show: the one asked for, or the only one shieldwall runs on."""
    if iface is None and len(reports) > 1:
        raise ValueError("shieldwall runs on " + ", ".join(r["iface"] for r in reports)
                         + ": choose one with --iface")
    if not reports:
        raise ValueError("shieldwall is not attached to any interface" if iface is None
                         else f"shieldwall is not attached to {iface}")
    return reports[0]


def block_list(iface: str, n: int = ROWS) -> list[str]:
    """The blocks in force with the longest left, as lines (the limit stage's state map)."""
    from ..dataplane.pipeline import pinned_maps
    from ..engine.transaction import Layout, close_maps
    from ..stages.limit import BLOCKS, LimitStage, list_blocks
    try:
        maps = pinned_maps(Layout.of(iface).state, {BLOCKS: LimitStage.state_maps[BLOCKS]})
    except OSError:
        return []
    try:
        if BLOCKS not in maps:
            return []
        try:
            found = sorted(list_blocks(maps[BLOCKS]), key=lambda b: -b.remaining_s)[:n]
        except OSError:
            return []
        return [f"{b.prefix} for {b.remaining_s:.0f} s more" for b in found]
    finally:
        close_maps(maps)


def sample(iface: str | None) -> tuple[float, dict]:
    from ..engine import lifecycle
    reports = lifecycle.status(iface)
    return time.monotonic(), pick(reports, iface)


def once(iface: str | None, interval: float = 1.0, feed: EventFeed | None = None) -> str:
    """One frame over `interval` seconds, as text."""
    t0, before = sample(iface)
    time.sleep(interval)
    t1, after = sample(iface)
    now = time.time()
    events = feed.recent(now) if feed else []
    return plain(frame(before, after, t1 - t0, events, now, feed.note if feed else None,
                       block_list(after["iface"]), feed.via if feed else None))


def live(iface: str | None, interval: float = 1.0, feed: EventFeed | None = None) -> None:
    """Full screen until q, Ctrl-C or SIGTERM; the terminal is restored whatever ends it."""
    import os
    import select
    import signal
    import sys
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    console = Console()
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if fd is not None:
            tty.setcbreak(fd)
        t0, before = sample(iface)
        with Live(console=console, screen=True, auto_refresh=False) as view:
            while True:
                deadline = time.monotonic() + interval
                while (left := deadline - time.monotonic()) > 0:
                    if fd is None:
                        time.sleep(left)
                        continue
                    ready, _, _ = select.select([fd], [], [], left)
                    # The descriptor, not sys.stdin: a buffered read would hide the next key from select.
                    if ready and os.read(fd, 1) in (b"q", b"Q"):
                        return
                try:
                    t1, after = sample(iface)
                except OSError:
                    continue  # read while a change swapped generations: the next tick reads whole
                now = time.time()
                view.update(render(frame(before, after, t1 - t0, feed.recent(now) if feed else [],
                                         now, feed.note if feed else None,
                                         block_list(after["iface"]), feed.via if feed else None)),
                            refresh=True)
                t0, before = t1, after
    except KeyboardInterrupt:
        return
    finally:
        signal.signal(signal.SIGTERM, previous)
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _stop(*_: Any) -> None:
    raise KeyboardInterrupt
