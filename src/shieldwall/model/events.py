"""The data plane's event sampling (bpf/lib/events.h), as a model: which verdicts become
events, with the `every` and `lost` they carry. Drops and passes are sampled apart, each
with its own 1-in-N and its own budget: a GCRA bucket of `rate` events a second whose
burst is what one tick of the clock (a tenth of a second) refills, and within a tick 1
in `spacing` candidates, spaced by what the previous tick saw."""

from __future__ import annotations

from dataclasses import dataclass

from .. import abi


@dataclass(frozen=True)
class Budget:
    """A rate's budget as the data plane is given it (struct sw_consts): what an event
    costs of the GCRA bucket, the burst (what one tick refills), and a tick's share."""

    cost_ns: int
    tol_ns: int
    tick_events: int

    @classmethod
    def of(cls, rate: int) -> "Budget":
        if not rate:
            return cls(0, 0, 1)
        cost = 10**9 // rate
        return cls(cost, max(abi.SW_EVENT_TICK_NS - cost, 0),
                   max(rate * abi.SW_EVENT_TICK_NS // 10**9, 1))


@dataclass
class _Budget:
    tat: int = 0
    tick: int = 0
    skip: int = 0
    seen: int = 0
    spacing: int = 0
    gap: int = 0
    lost: int = 0


class EventSampler:
    """One CPU's sampling. offer() returns (every, lost) when the verdict becomes an
    event, None when it does not; `now_ns` is the data plane's clock (it moves by ticks)."""

    def __init__(self, rate: int, drops: int = 1, passes: int = 0) -> None:
        self.rate = rate
        self.every = {"drop": max(drops, 1), "pass": passes}
        self.budgets = {"drop": _Budget(), "pass": _Budget()}
        self.budget = Budget.of(rate)

    def offer(self, action: str, now_ns: int) -> tuple[int, int] | None:
        every = self.every.get(action, 0)
        if not self.rate or not every:
            return None
        b = self.budgets[action]
        b.skip += 1
        if b.skip < every:
            return None
        b.skip = 0
        if now_ns != b.tick:  # a new tick: spaced by what the last one saw
            b.spacing = max(-(-b.seen // self.budget.tick_events), 1)
            b.seen, b.gap, b.tick = 0, 0, now_ns
        b.seen += 1
        if b.gap:
            b.gap -= 1
            return None
        b.gap = b.spacing - 1
        if b.tat > now_ns + self.budget.tol_ns:
            b.lost += 1
            return None
        b.tat = max(b.tat, now_ns) + self.budget.cost_ns
        out, b.lost = (every * max(b.spacing, 1), b.lost), 0
        return out
