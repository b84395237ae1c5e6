"""Detection for automatic mitigation: from the data plane's sampled events, which
sources are heavy hitters and which destinations or protocols run far above their
learned baseline (docs/operations.md, "Automatic mitigation").

Pure Python, no kernel: it is fed `shieldwall.ops.events.Event`s and asked, once per
window, what it saw. Every structure is bounded whatever the sources are (a flood of
spoofed, never-repeating addresses included), and so is the cost of an event.

**Scaling samples back.** An event stands for `every` candidates (1 in N sampled), and
for the `lost` ones its CPU's budget refused since its previous event; those are the
same traffic, uniformly, so the event's weight is `every * (1 + lost)`. Summed per key
the weights estimate packets. The candidates a budget refused are attributed to
whichever event comes next: unbiased on average, but one event can weigh a lot, so a
source is only called hot once it has `MIN_SAMPLES` events of its own in the window.
Under a flood a budget refills every tick of the data plane's clock (0.1 s), so the
refusals an event carries are at most a tick old; `lost` on an event more than STALE
seconds after its CPU's previous one of its kind (or the first one seen) is old
traffic, long gone: such an event weighs `every` alone. (A flood that stops leaves its
last refusals on the budget until the CPU's next sample, which may be a lone packet
minutes later.)

**Heavy hitters.** A Space-Saving summary (Metwally et al.) of `SOURCES` counters per
window: a source whose weight is over total/SOURCES is certainly in it, and each
counter's `count - error` is a lower bound on the source's true weight. Decisions to
block use that lower bound, so churn of spoofed sources cannot push a small source
over a threshold.

Samples show who floods more surely than how much (the weights of a window's last
tick are only counted by the next window's first events). So, where the data plane's
counters were read during the window, the rate of a source that passes is its share of
the window's passed weight times the counters' exact rate of passed packets.

**Anomalies.** Per destination (a Space-Saving summary too) and per protocol, the
window's rate against an EWMA baseline learned while there is no anomaly; nothing is
judged before the warm-up has passed. The data plane's per-CPU counters (what `status`
reads) add the exact rate of passed and dropped packets (kind `traffic`), judged the
same way.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Hashable, Iterable

# Counters of the heavy-hitter summary per window: about 150 bytes each.
SOURCES = 4096
# Destinations followed per window, and baselines kept (destinations and protocols).
DESTINATIONS = 256
BASELINES = 1024
# Events of its own a source needs in a window before it can be called hot.
MIN_SAMPLES = 8
# Seconds after which an event's `lost` is old traffic (a budget's tick, and slack for
# the reader).
STALE = 2.0
# CPUs (and kinds) whose last event time is kept.
CPUS = 4096
# Seconds over which a baseline forgets (the EWMA's time constant).
BASELINE_SECONDS = 30.0


class SpaceSaving:
    """The heaviest keys of a weighted stream in k counters. `count(key)` never
    underestimates a key it holds; `count - error` never overestimates it. A key
    whose true weight is above total/k is always held.

    The smallest counter is found through a heap whose entries may be stale (a key's
    count only grows): a stale top is pushed back with its current count, which
    happens at most once per increment, so an event costs O(log k) amortized."""

    __slots__ = ("k", "counts", "errors", "hits", "heap", "total", "_seq")

    def __init__(self, k: int) -> None:
        self.k = k
        self.counts: dict[Hashable, float] = {}
        self.errors: dict[Hashable, float] = {}
        self.hits: dict[Hashable, int] = {}
        self.heap: list[tuple[float, int, Hashable]] = []
        self.total = 0.0
        self._seq = 0

    def add(self, key: Hashable, weight: float) -> None:
        self.total += weight
        if key in self.counts:
            self.counts[key] += weight
            self.hits[key] += 1
            return
        floor = 0.0
        if len(self.counts) >= self.k:
            while True:
                count, _, victim = self.heap[0]
                current = self.counts[victim]
                if current == count:
                    break
                self._seq += 1
                heapq.heapreplace(self.heap, (current, self._seq, victim))
            heapq.heappop(self.heap)
            del self.counts[victim], self.errors[victim], self.hits[victim]
            floor = count
        self.counts[key] = floor + weight
        self.errors[key] = floor
        self.hits[key] = 1
        self._seq += 1
        heapq.heappush(self.heap, (floor + weight, self._seq, key))

    def count(self, key: Hashable) -> float:
        return self.counts.get(key, 0.0)

    def lower(self, key: Hashable) -> float:
        return self.counts.get(key, 0.0) - self.errors.get(key, 0.0)

    def top(self, n: int) -> list[Hashable]:
        return heapq.nlargest(n, self.counts, key=lambda key: self.lower(key))

    def __len__(self) -> int:
        return len(self.counts)


@dataclass
class Baseline:
    """A key's learned rate (packets per second) and how many windows taught it."""

    pps: float = 0.0
    windows: int = 0


@dataclass(frozen=True)
class Source:
    """A source's share of one window: `pps` and `share` from its lower bound, `upper`
    from its count (what a release decision must not underestimate)."""

    prefix: str
    pps: float
    upper: float
    share: float
    samples: int


@dataclass(frozen=True)
class Anomaly:
    kind: str       # dst, proto, traffic
    key: str
    pps: float
    baseline: float


@dataclass
class Previous:
    """What the window before the current one held of sources."""

    start: float
    sources: SpaceSaving
    passed: float
    top: list


@dataclass
class Window:
    """What one window showed: its heavy sources, and anomalies in force."""

    start: float
    end: float
    events: int = 0
    pps: float = 0.0
    sources: dict[str, Source] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)

    def rate(self, prefix: str) -> float:
        """A source's estimated rate, an upper bound (0 when the window did not hold it)."""
        found = self.sources.get(prefix)
        return found.upper if found else 0.0


class Detector:
    """Fed events, asked once per window (`close`) what it saw.

    `held` tells whether a dropped event's source is one the mitigation holds (its
    drops count as that source's traffic, so a block stays while the flood goes on);
    other drops are none of its business: something else already stops them."""

    def __init__(self, prefix4: int = 32, prefix6: int = 128, anomaly_factor: float = 4.0,
                 anomaly_min_pps: float = 1000.0, warmup: float = 60.0, start: float = 0.0,
                 sources: int = SOURCES) -> None:
        self.prefix4, self.prefix6 = prefix4, prefix6
        self.factor, self.min_pps, self.warmup = anomaly_factor, anomaly_min_pps, warmup
        self.started = start
        self.window_start = start
        self.k = sources
        self.held: set[str] = set()
        self.baselines: dict[tuple[str, str], Baseline] = {}
        self.anomalous: set[tuple[str, str]] = set()
        self.events_seen = 0
        self.traffic: dict[tuple[str, str], float] = {}
        self.last: dict[tuple[int, str], float] = {}   # (cpu, action) -> its last event
        self.previous: Previous | None = None
        self._totals: tuple[float, dict[str, int]] | None = None
        self._fresh()

    def _fresh(self) -> None:
        self.sources = SpaceSaving(self.k)
        self.dsts = SpaceSaving(DESTINATIONS)
        self.protos: dict[int, float] = {}
        self.events = 0
        self.passed = 0.0

    def key(self, src: str) -> str | None:
        """The prefix a source is counted (and blocked) under. Events carry addresses
        in their canonical text, so a single address needs no parsing."""
        if ":" in src:
            if self.prefix6 == 128:
                return src + "/128"
        elif self.prefix4 == 32:
            return src + "/32"
        try:
            addr = ipaddress.ip_address(src)
        except ValueError:
            return None
        plen = self.prefix4 if addr.version == 4 else self.prefix6
        if plen == addr.max_prefixlen:
            return f"{addr}/{plen}"
        return str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))

    def feed(self, events: Iterable) -> None:
        for event in events:
            self.events_seen += 1
            if event.src is None:
                continue
            lane = (event.cpu, event.action)
            previous = self.last.get(lane)
            if len(self.last) < CPUS or lane in self.last:
                self.last[lane] = event.ts
            fresh = previous is not None and event.ts - previous <= STALE
            weight = float(event.weight if fresh else max(1, event.every))
            prefix = self.key(event.src)
            if prefix is None:
                continue
            if event.action != "pass" and prefix not in self.held:
                continue
            self.events += 1
            if event.action == "pass":
                self.passed += weight
            self.sources.add(prefix, weight)
            if event.dst is not None:
                self.dsts.add(event.dst, weight)
            self.protos[event.proto] = self.protos.get(event.proto, 0.0) + weight

    def counters(self, now: float, totals: dict[str, int]) -> None:
        """The data plane's packet counts so far, by action (pass, drop): their rates
        since the previous call stand until the next one."""
        if self._totals is not None:
            then, before = self._totals
            seconds = now - then
            if seconds > 0:
                for action, count in totals.items():
                    if action in before and count >= before[action]:
                        self.traffic[("traffic", action)] = (count - before[action]) / seconds
        self._totals = (now, dict(totals))

    def close(self, now: float, top: int = 64) -> Window:
        """The window that ends now: its heaviest sources (and every held one it saw)
        over it and the window before, anomalies over it alone; the baselines learn
        from it; a new window starts."""
        seconds = max(now - self.window_start, 1e-3)
        # Sources are judged over two windows: the refusals a window's last samples
        # stand for are carried by the next window's first events.
        prev = self.previous
        span = max(now - (prev.start if prev else self.window_start), 1e-3)
        total = self.sources.total + (prev.sources.total if prev else 0.0)
        passed = self.passed + (prev.passed if prev else 0.0)
        window = Window(self.window_start, now, self.events, self.sources.total / seconds)
        names = set(self.sources.top(top)) | (self.held & set(self.sources.counts))
        if prev:
            names |= set(prev.top) | (self.held & set(prev.sources.counts))
        passing = self._pass_rate(now, seconds)
        for prefix in names:
            lower = self.sources.lower(prefix) + (prev.sources.lower(prefix) if prev else 0.0)
            upper = self.sources.count(prefix) + (prev.sources.count(prefix) if prev else 0.0)
            hits = self.sources.hits.get(prefix, 0) + (prev.sources.hits.get(prefix, 0) if prev else 0)
            pps, most = lower / span, upper / span
            if passing is not None and passed and prefix not in self.held:
                pps, most = lower / passed * passing, upper / passed * passing
            window.sources[prefix] = Source(prefix, pps, most, lower / total if total else 0.0, hits)
        self.previous = Previous(self.window_start, self.sources, self.passed,
                                 self.sources.top(top))
        rates = {("dst", str(d)): self.dsts.lower(d) / seconds for d in self.dsts.counts}
        rates.update({("proto", str(p)): w / seconds for p, w in self.protos.items()})
        rates.update(self.traffic)
        window.anomalies = self._judge(rates, seconds, now)
        self.window_start = now
        self._fresh()
        return window

    def _pass_rate(self, now: float, seconds: float) -> float | None:
        """The counters' rate of passed packets, when read during this window or the
        one before: exact where the samples' weights are not yet complete (the
        refusals since a CPU's last event are carried by its next one)."""
        if self._totals is None or self._totals[0] < now - 2 * seconds:
            return None
        return self.traffic.get(("traffic", "pass"))

    def _judge(self, rates: dict[tuple[str, str], float], seconds: float, now: float) -> list[Anomaly]:
        alpha = 1.0 - math.exp(-seconds / BASELINE_SECONDS)
        warm = now - self.started >= self.warmup
        self._make_room(rates)
        found = []
        # A key not seen this window learns a rate of 0.
        for key in set(self.baselines) | set(rates):
            pps = rates.get(key, 0.0)
            base = self.baselines.setdefault(key, Baseline())
            if warm and pps >= self.min_pps and pps > self.factor * base.pps:
                self.anomalous.add(key)
                found.append(Anomaly(key[0], key[1], pps, base.pps))
                # An attack barely teaches the baseline; a lasting change of traffic
                # becomes normal within minutes.
                base.pps += alpha / 10 * (pps - base.pps)
                continue
            self.anomalous.discard(key)
            base.pps += alpha * (pps - base.pps) if base.windows else pps
            base.windows += 1
        return found

    def _make_room(self, rates: dict[tuple[str, str], float]) -> None:
        """At most BASELINES keys: those that faded away go first, then the quietest."""
        for key in [k for k, b in self.baselines.items() if k not in rates and b.pps < 0.01]:
            del self.baselines[key]
            self.anomalous.discard(key)
        over = len(self.baselines) + sum(1 for k in rates if k not in self.baselines) - BASELINES
        if over > 0:
            for key in sorted(self.baselines, key=lambda k: self.baselines[k].pps)[:over]:
                del self.baselines[key]
                self.anomalous.discard(key)
