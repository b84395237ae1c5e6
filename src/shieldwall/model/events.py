"""The data plane's event sampling (bpf/lib/events.h), as a model: which verdicts become
events, with the `every` and `lost` they carry. Drops and passes are sampled apart, each
with its own 1-in-N and its own budget of `rate` events a one-second window."""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_NS = 1_000_000_000


@dataclass
class _Budget:
    window_ns: int | None = None
    used: int = 0
    skip: int = 0
    lost: int = 0


class EventSampler:
    """One CPU's sampling. offer() returns (every, lost) when the verdict becomes an
    event, None when it does not."""

    def __init__(self, rate: int, drops: int = 1, passes: int = 0) -> None:
        self.rate = rate
        self.every = {"drop": max(drops, 1), "pass": passes}
        self.budgets = {"drop": _Budget(), "pass": _Budget()}

    def offer(self, action: str, now_ns: int) -> tuple[int, int] | None:
        every = self.every.get(action, 0)
        if not self.rate or not every:
            return None
        b = self.budgets[action]
        b.skip += 1
        if b.skip < every:
            return None
        b.skip = 0
        if b.window_ns is None or now_ns - b.window_ns >= WINDOW_NS:
            b.window_ns, b.used = now_ns, 0
        if b.used >= self.rate:
            b.lost += 1
            return None
        b.used += 1
        out, b.lost = (every, b.lost), 0
        return out
