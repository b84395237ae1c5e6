"""Sampled packet events: what the data plane decided about a packet, and its first
bytes, read from the interface's ring buffer (bpf/lib/events.h).

The data plane samples and rate-limits them itself (the policy's `events:` section), so
a flood never floods this reader: at most `rate` events a second per CPU for drops and
as many for passes. An event says how it was sampled (`every`) and how many candidates
its CPU's budget refused before it (`lost`), so counts scale back honestly.

The ring has one consumer. When the daemon runs, it is the one, and it republishes what
it reads through its EventHub (the control API's `/events`); otherwise `shieldwall
events` and `shieldwall capture` read the ring themselves.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable

from .. import abi
from ..engine.transaction import Layout

RING = "sw_events"
NAMES_MAP = "sw_pol_names"  # the policy stage's rule names (stages/policy.py)


@dataclass(frozen=True)
class Event:
    ts: float            # wall clock, seconds
    cpu: int
    action: str          # drop, pass
    reason: str
    stage: str
    rule: int | None     # the deciding rule's id
    family: int          # 4, 6; 0: not IP
    src: str | None
    dst: str | None
    proto: int
    sport: int
    dport: int
    tcp_flags: int
    frame_len: int
    data: bytes          # the frame's first bytes (at most SW_EVENT_SNAP)
    every: int           # sampled as 1 in this many of its kind (the policy's 1 in N,
                         # times the spacing of its tick's candidates)
    lost: int            # candidates its CPU refused before it (budget, or a full ring)
    vlan: int = 0
    rule_name: str | None = None

    @property
    def weight(self) -> int:
        """The packets it stands for: its 1 in N, and the candidates refused before it
        (the same traffic, uniformly)."""
        return max(1, self.every) * (1 + max(0, self.lost))

    def as_json(self) -> dict:
        out = asdict(self)
        out["data"] = self.data.hex()
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Event":
        """The event of as_json()'s form (the control API's `/events` lines); keys it
        does not know are left out, so a newer daemon's fields do not break a reader."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in known},
                      "data": bytes.fromhex(d.get("data") or "")})


def decode(raw: bytes, boot_offset: float, names: dict[int, str] | None = None) -> Event:
    """An event from its ring record; `boot_offset` turns the monotonic clock into wall
    time (wall_offset())."""
    from ..kernel.libbpf import ffi
    if len(raw) < ffi.sizeof("struct sw_event"):
        raise ValueError(f"an event record of {len(raw)} bytes")
    ev = ffi.cast("struct sw_event *", ffi.from_buffer(raw))
    family = {abi.SW_FAMILY_IPV4: 4, abi.SW_FAMILY_IPV6: 6}.get(ev.family, 0)
    rule = ev.rule or None
    return Event(
        ts=ev.ts_ns / 1e9 + boot_offset, cpu=ev.cpu, action=abi.action_name(ev.action),
        reason=abi.reason_name(ev.reason), stage=abi.module_name(ev.module), rule=rule,
        family=family, src=_address(bytes(ev.src), family), dst=_address(bytes(ev.dst), family),
        proto=ev.l4_proto, sport=ev.sport, dport=ev.dport, tcp_flags=ev.tcp_flags,
        frame_len=ev.frame_len, data=bytes(ev.data)[:min(ev.cap_len, abi.SW_EVENT_SNAP)],
        every=ev.every * max(ev.spacing, 1), lost=ev.lost, vlan=ev.vlan_id,
        rule_name=(names or {}).get(rule) if rule else None)


def _address(raw: bytes, family: int) -> str | None:
    if family == 4:
        return str(ipaddress.IPv4Address(raw[12:]))
    if family == 6:
        return str(ipaddress.IPv6Address(raw))
    return None


def wall_offset() -> float:
    """Wall clock minus the monotonic clock bpf_ktime_get_ns() reads."""
    return time.time() - time.clock_gettime(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Filter:
    """Which events a reader wants: any field left None matches everything. `rule` is a
    rule's name or its id."""

    reason: str | None = None
    rule: str | None = None
    action: str | None = None

    def __call__(self, ev: Event) -> bool:
        if self.reason is not None and ev.reason != self.reason:
            return False
        if self.action is not None and ev.action != self.action:
            return False
        if self.rule is not None and self.rule not in (ev.rule_name, str(ev.rule)):
            return False
        return True


class NoEvents(RuntimeError):
    """The interface has no event ring: shieldwall does not run there in a BPF mode."""


class EventStream:
    """The interface's ring, consumed. Rule names follow the generation in force."""

    def __init__(self, iface: str) -> None:
        from ..kernel.libbpf import RingBuffer, obj_get
        self.layout = Layout.of(iface)
        path = self.layout.state / RING
        if not path.exists():
            raise NoEvents(f"no event ring on {iface}: shieldwall is not attached there in a "
                           "BPF mode (native, generic, tc); nft mode has no events")
        self._fd = obj_get(path)
        self._got: list[bytes] = []
        self._ring = RingBuffer(self._fd, self._got.append)
        self._offset = wall_offset()
        self._names: dict[int, str] = {}
        self._names_of: int | None = None

    def poll(self, timeout: float) -> list[Event]:
        """The events that came within `timeout` seconds (all that are there, if any)."""
        self._ring.poll(max(int(timeout * 1000), 0))
        raw, self._got[:] = list(self._got), []
        if not raw:
            return []
        names = self._rule_names()
        return [decode(r, self._offset, names) for r in raw]

    def _rule_names(self) -> dict[int, str]:
        live = self.layout.live_generation()
        if live != self._names_of:
            self._names, self._names_of = _read_rule_names(self.layout, live), live
        return self._names

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
            os.close(self._fd)

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_rule_names(layout: Layout, generation: int | None) -> dict[int, str]:
    if generation is None:
        return {}
    path = layout.gen(generation) / NAMES_MAP
    if not path.exists():
        return {}
    from ..dataplane.images import read_names
    from ..kernel.libbpf import Map
    names = Map.open_pinned(path, "__u32", "struct sw_rule_name")
    try:
        return read_names(names)
    finally:
        names.close()


class Subscription:
    """One reader of a hub: the events published since it subscribed, up to `maxlen`
    waiting (a slow reader loses the oldest, and is told how many)."""

    def __init__(self, hub: "EventHub", maxlen: int) -> None:
        self._hub = hub
        self._queue: deque[Event] = deque(maxlen=maxlen)
        self._ready = threading.Condition()
        self.missed = 0

    def _put(self, events: list[Event]) -> None:
        with self._ready:
            room = self._queue.maxlen - len(self._queue)  # type: ignore[operator]
            self.missed += max(len(events) - room, 0)
            self._queue.extend(events)
            self._ready.notify_all()

    def get(self, timeout: float) -> list[Event]:
        with self._ready:
            if not self._queue:
                self._ready.wait(timeout)
            out = list(self._queue)
            self._queue.clear()
        return out

    def close(self) -> None:
        self._hub._drop(self)


class EventHub:
    """The daemon's events, handed to every subscriber (the API, automatic mitigation)
    and kept as a bounded recent window."""

    def __init__(self, recent: int = 10_000) -> None:
        self._recent: deque[Event] = deque(maxlen=recent)
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self.published = 0

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        with self._lock:
            self._recent.extend(events)
            self.published += len(events)
            subs = list(self._subs)
        for sub in subs:
            sub._put(events)

    def subscribe(self, maxlen: int = 10_000) -> Subscription:
        sub = Subscription(self, maxlen)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _drop(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def recent(self) -> list[Event]:
        with self._lock:
            return list(self._recent)


def pump(stream: EventStream, hub: EventHub, stop: threading.Event,
         on_error: Callable[[Exception], None] = lambda exc: None) -> None:
    """Moves events from the ring to the hub until `stop` (the daemon's reader thread)."""
    while not stop.is_set():
        try:
            hub.publish(stream.poll(0.2))
        except Exception as exc:  # a reader that dies silently would blind mitigation
            on_error(exc)
            stop.wait(1.0)


def write_capture(out_path: Path, events: Iterable[Event]) -> int:
    """The events' frames as a pcap (their first bytes, with their wire length): the
    frames Wireshark shows are what the data plane saw. Returns how many were written."""
    from ..pcapio import PcapWriter
    count = 0
    with open(out_path, "wb") as out:
        writer = PcapWriter(out, snaplen=abi.SW_EVENT_SNAP)
        for ev in events:
            writer.write(ev.data, ev.ts, ev.frame_len)
            count += 1
    return count


class EventReader:
    """The daemon's reader: one thread moving the interface's events into a hub. An
    interface without a ring (nft mode) has no reader, and says why."""

    def __init__(self, iface: str, hub: EventHub, log: Callable[[str], None]) -> None:
        self.iface, self.hub, self.log = iface, hub, log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: EventStream | None = None

    def start(self) -> bool:
        try:
            self._stream = EventStream(self.iface)
        except NoEvents as exc:
            self.log(f"events: {exc}")
            return False
        self._thread = threading.Thread(
            target=pump, args=(self._stream, self.hub, self._stop,
                               lambda exc: self.log(f"events: reading the ring failed: {exc}")),
            name="shieldwall-events", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._stream is not None:
            self._stream.close()
