"""Live set entries: prefixes added to (and removed from) a named set of the running
policy by `shieldwall set`, with an optional TTL (docs/updates.md, "Live set entries").

The entries of an interface are kept in its records (live.json), apart from the
policy's revisions: every generation gets them, whichever revision it applies, until
they expire, are removed, or a reload drops them by request. A generation takes them
in two ways:

- laid over in place (dataplane.livehosts): single addresses of sets every lookup
  reading them can follow. `set add` writes them into the running generation at once:
  no new ruleset, no other verdict touched. Their TTL runs in the data plane.
- compiled: prefixes, and addresses of sets read where nothing can be laid over (a
  small ruleset's constants, ...). They join the set's prefixes in a new generation,
  applied through the transaction engine like a reload; an expired one leaves with the
  next shieldwall command on the interface.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import Iterable

from ..dataplane import bpffs
from ..dataplane.livehosts import HashFull, LiveIndex, Membership, host_key, is_host, lay_over, monotonic_ns
from ..kernel.errors import BpfError
from ..policy.errors import Invalid, quote
from ..policy.model import Network
from ..policy.sets import parse_prefix
from ..policy.values import parse_duration
from ..policy.values import sort_key
from .records import Records
from .transaction import Layout, alone_in_force, close_maps

# An interface's live entries, all sets together: the hash and the records stay bounded.
MAX_ENTRIES = 1_000_000
# A decision line of a feed, and the part of a bad one an error quotes.
MAX_LINE = 512
class LiveSetError(BpfError):
    pass


@dataclass(frozen=True)
class Decision:
    """One line of a feed: add a prefix to a set (until `expires`, wall clock) or
    remove it."""

    op: str
    set: str
    net: Network
    expires: float | None = None


def parse_decision(line: str, default_set: str | None, now: float) -> Decision | None:
    """`add 198.51.100.7/32 ttl=4h`, `del 2001:db8::7`, with `set=NAME` where the feed
    serves several sets; blank lines and # comments are None."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    words = text.split()
    if words[0] not in ("add", "del"):
        raise Invalid(f"{quote(words[0])}: a decision starts with add or del")
    if len(words) < 2:
        raise Invalid(f"{words[0]} needs a prefix")
    net = parse_prefix(words[1])
    options: dict[str, str] = {}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if not sep or key not in ("ttl", "set") or key in options:
            raise Invalid(f"{quote(word)}: expected ttl=DURATION or set=NAME, once each")
        options[key] = value
    if "ttl" in options and words[0] == "del":
        raise Invalid("del takes no ttl")
    name = options.get("set", default_set)
    if not name:
        raise Invalid("no set named: give set=NAME on the line or the set on the command line")
    expires = now + parse_duration(options["ttl"]) if "ttl" in options else None
    return Decision(words[0], name, net, expires)


def decisions(op: str, name: str, texts: list[str], ttl: str | None = None,
              now: float | None = None) -> list[Decision]:
    """`set add|del NAME PREFIX... [--ttl D]` as decisions (Invalid names the prefix)."""
    expires = (time.time() if now is None else now) + parse_duration(ttl) if ttl else None
    out = []
    for text in texts:
        try:
            out.append(Decision(op, name, parse_prefix(text), expires))
        except Invalid as exc:
            raise Invalid(f"prefix {exc}") from None
    return out


@dataclass
class Entries:
    """The live entries of an interface: set -> prefix -> expiry (wall clock, None:
    never). `seq` counts the changes; `applied` is the last one the running
    generation is known to hold."""

    sets: dict[str, dict[str, float | None]] = field(default_factory=dict)
    seq: int = 0
    applied: int = 0

    @classmethod
    def load(cls, records: Records) -> "Entries":
        data = records.live_entries() or {}
        return cls({s: dict(e) for s, e in data.get("sets", {}).items()},
                   int(data.get("seq", 0)), int(data.get("applied", 0)))

    def save(self, records: Records) -> None:
        records.save_live_entries({"seq": self.seq, "applied": self.applied,
                                   "sets": {s: e for s, e in self.sets.items() if e}})

    def count(self) -> int:
        return sum(len(e) for e in self.sets.values())

    def active(self, now: float) -> dict[str, int]:
        """Per set, the entries whose TTL has not passed (the data plane's view)."""
        found = {name: sum(1 for exp in e.values() if exp is None or exp > now)
                 for name, e in sorted(self.sets.items())}
        return {name: n for name, n in found.items() if n}

    def expire(self, now: float) -> set[tuple[str, str]]:
        """Removes the entries whose TTL has passed; returns them as (set, prefix)."""
        gone = set()
        for name, entries in self.sets.items():
            for prefix in [p for p, exp in entries.items() if exp is not None and exp <= now]:
                del entries[prefix]
                gone.add((name, prefix))
        return gone

    def membership(self, prefix: str, index: LiveIndex) -> Membership | None:
        """An address's sets where it is laid over (not compiled) under this index."""
        found = tuple((name, monotonic_ns(entries[prefix]))
                      for name, entries in sorted(self.sets.items())
                      if prefix in entries and prefix not in index.compiled.get(name, ()))
        return Membership(found) if found else None

    def compiled(self, index: LiveIndex | None) -> dict[str, list[Network]]:
        """Per set, the entries a generation with this index must compile in (None:
        before there is one, only those that are never laid over: prefixes)."""
        out: dict[str, list[Network]] = {}
        for name, entries in self.sets.items():
            in_place = index is None or index.in_place(name)
            nets = [n for n in map(parse_prefix, entries) if not (in_place and is_host(n))]
            if nets:
                out[name] = nets
        return out

    def hosts(self, index: LiveIndex) -> set[str]:
        """Every entry laid over in place under this index."""
        return {prefix for name, entries in self.sets.items() for prefix in entries
                if _in_place_entry(index, name, prefix)}

    def lay_over(self, maps: dict, index: LiveIndex, prefixes: Iterable[str]) -> None:
        """These entries' live sets, as they are now, into every lookup of a generation."""
        changes = {host_key(parse_prefix(p)): self.membership(p, index) for p in prefixes}
        for lookup in index.lookups.values():
            lay_over(maps, lookup, changes)


# -- a generation being made (lifecycle) --------------------------------------------------

class ForGeneration:
    """The live entries as a new generation takes them: entries of sets its policy no
    longer has are dropped (and said), compiled ones join their sets, the rest are laid
    over its maps before it is switched to."""

    def __init__(self, records: Records, policy_sets: Iterable[str], drop: bool = False) -> None:
        self.records = records
        self.entries = Entries.load(records)
        self.notes: list[str] = []
        if drop and self.entries.count():
            self.notes.append(f"dropped {self.entries.count()} live entries, as asked")
            self.entries.sets = {}
        now = time.time()
        self.entries.expire(now)
        known = set(policy_sets)
        for name in sorted(set(self.entries.sets) - known):
            n = len(self.entries.sets.pop(name))
            if n:
                self.notes.append(f"dropped {n} live entries of set {name}: the policy has no such set")

    @property
    def any(self) -> bool:
        return self.entries.count() > 0

    def compiled(self, index: LiveIndex | None) -> dict[str, list[Network]]:
        return self.entries.compiled(index)

    def lay_over(self, maps: dict, index: LiveIndex) -> None:
        self.entries.lay_over(maps, index, self.entries.hosts(index))

    def kept(self) -> None:
        """After the switch: the entries as the new generation holds them."""
        self.entries.seq += 1
        self.entries.applied = self.entries.seq
        self.entries.save(self.records)
        if self.any:
            counts = ", ".join(f"{len(e)} in {s}" for s, e in sorted(self.entries.sets.items()) if e)
            self.notes.append(f"kept {self.entries.count()} live entries ({counts}); "
                              "reload --drop-live drops them")


# -- `shieldwall set` -------------------------------------------------------------------

@dataclass
class Outcome:
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    expired: int = 0
    in_place: bool = True
    revision: int | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def change(iface: str, decisions: list[Decision]) -> Outcome:
    """Applies decisions to the live entries of the running generation: in place where
    it can, else through a new generation. Under the lock, after any recovery."""
    from . import lifecycle  # lifecycle imports this module
    started = time.monotonic()
    with bpffs.exclusive():
        lifecycle._recover(iface)
        layout = Layout.of(iface)
        records = Records(iface)
        live = alone_in_force(layout, iface)
        raw = records.live_index(live)
        if raw is None:
            raise LiveSetError(errno.ESTALE, f"generation {live} of {iface} has no live-entry index",
                               f"reload the policy once: shieldwall reload --iface {iface} --config FILE")
        index = LiveIndex.from_json(raw)
        entries = Entries.load(records)
        out = Outcome()
        expired = entries.expire(time.time())
        out.expired = len(expired)
        touched = {prefix for _, prefix in expired}
        # A change a kill cut short is redone whole; an expired compiled entry leaves
        # with a new generation.
        rebuild = entries.applied != entries.seq or any(
            not _in_place_entry(index, s, p) for s, p in expired)
        for d in decisions:
            if d.set not in index.sets:
                raise Invalid(f"no set {quote(d.set)} in the running policy"
                              + (f" (its sets: {', '.join(sorted(index.sets))})" if index.sets else ""))
            prefix = str(d.net)
            own = entries.sets.setdefault(d.set, {})
            if d.op == "add":
                if prefix in own and own[prefix] == d.expires:
                    out.unchanged += 1
                    continue
                own[prefix] = d.expires
                out.added += 1
            elif prefix in own:
                del own[prefix]
                out.removed += 1
            else:
                out.problems.append(f"{prefix} is not a live entry of set {d.set} (entries of the "
                                    "policy's files change with the files and a reload)")
                continue
            touched.add(prefix)
            if not _in_place_entry(index, d.set, prefix):
                rebuild = True
        if entries.count() > MAX_ENTRIES:
            raise Invalid(f"{entries.count()} live entries: an interface holds at most {MAX_ENTRIES}")
        if not touched and not rebuild:
            out.seconds = time.monotonic() - started
            return out
        entries.seq += 1
        entries.save(records)  # first: whatever happens next, the next command redoes it
        if not rebuild:
            try:
                _in_place(layout, live, index, entries, touched)
            except HashFull:
                rebuild = True
        if rebuild:
            out.in_place = False
            out.revision = lifecycle.apply_again(iface, f"set change ({len(touched)} entries)").revision
        else:
            entries.applied = entries.seq
            entries.save(records)
        out.seconds = time.monotonic() - started
        return out


def _in_place_entry(index: LiveIndex, name: str, prefix: str) -> bool:
    return (is_host(parse_prefix(prefix)) and index.in_place(name)
            and prefix not in index.compiled.get(name, ()))


def _in_place(layout: Layout, live: int, index: LiveIndex, entries: Entries, touched: set[str]) -> None:
    maps = layout.maps(live)
    try:
        entries.lay_over(maps, index, touched)
    finally:
        close_maps(maps)


def listing(iface: str, name: str | None = None) -> list[dict]:
    records = Records(iface)
    entries = Entries.load(records)
    now = time.time()
    out = []
    for set_name, found in sorted(entries.sets.items()):
        if name is not None and set_name != name:
            continue
        for prefix, expires in sorted(found.items(), key=lambda kv: sort_key(parse_prefix(kv[0]))):
            if expires is not None and expires <= now:
                continue
            out.append({"set": set_name, "prefix": prefix,
                        "ttl_seconds": None if expires is None else round(expires - now, 1)})
    return out
