"""Every change to an attached pipeline as one transaction: plan, prepare, commit,
cleanup, with a journal that lets the next command finish or undo a change a kill cut
short (docs/updates.md).

The pins of an interface (bpffs.pin_dir):

    link       the bpf_link: the one switch, the only thing a packet follows
    link-egress-<stage>  TC egress links some stages need beside it (engine/egress.py)
    state/     state maps (verdict counters, each stage's state): every generation's
    gen-<n>/   one generation: its root and stage programs and their config maps, as
               loaded for revision n

A generation is built whole beside the running one; the commit swaps the link's program
from the old root to the new one in one step, which the kernel refuses (EPERM) unless
the old root still runs: a compare-and-swap. A packet sees the old generation or the
new one, never a mix. What is in force is what the link runs, so a journal entry
written before anything else is enough for the next command to tell, after a kill,
whether the change happened (then finish it) or not (then drop what was prepared).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..dataplane import bpffs
from ..dataplane.pipeline import ROOT_PIN, Pipeline, after_swap, carry, pinned_maps
from ..kernel import libbpf
from ..kernel.errors import BpfError
from ..stages import stages
from . import egress
from .records import Records

LINK_PIN = "link"
STATE_DIR = "state"
GEN_PREFIX = "gen-"

# A packet already inside the old programs when the link swaps finishes within
# microseconds (XDP runs to completion in one softirq); counters read after this are final.
DRAIN_SECONDS = 0.05


class ChangeError(BpfError):
    pass


@dataclass(frozen=True)
class Layout:
    directory: Path

    @classmethod
    def of(cls, iface: str) -> "Layout":
        return cls(bpffs.pin_dir(iface))

    @property
    def link(self) -> Path:
        return self.directory / LINK_PIN

    @property
    def state(self) -> Path:
        return self.directory / STATE_DIR

    def gen(self, number: int) -> Path:
        return self.directory / f"{GEN_PREFIX}{number}"

    def generations(self) -> dict[int, Path]:
        found = {}
        for entry in self.directory.iterdir() if self.directory.is_dir() else ():
            if entry.name.startswith(GEN_PREFIX) and entry.name[len(GEN_PREFIX):].isdigit():
                found[int(entry.name[len(GEN_PREFIX):])] = entry
        return dict(sorted(found.items()))

    def live_prog_id(self) -> int | None:
        """The program the pinned link runs; None without a link."""
        if not self.link.exists():
            return None
        fd = libbpf.obj_get(self.link)
        try:
            return libbpf.link_info(fd).prog_id
        finally:
            os.close(fd)

    def hook(self) -> str | None:
        """The hook the pinned link holds the pipeline at: xdp or tc; None without one."""
        if not self.link.exists():
            return None
        fd = libbpf.obj_get(self.link)
        try:
            kind = libbpf.link_info(fd).type
        finally:
            os.close(fd)
        return "tc" if kind == libbpf.LINK_TYPE_TCX else "xdp"

    def live_generation(self) -> int | None:
        """The generation whose root the link runs."""
        live = self.live_prog_id()
        if not live:
            return None
        for number, path in self.generations().items():
            if root_id(path) == live:
                return number
        return None

    def maps(self, number: int) -> dict:
        """A generation's maps with the state maps every generation shares."""
        return {**pinned_maps(self.state), **pinned_maps(self.gen(number))}

    def chain(self, number: int) -> list[str]:
        return [name for name in stages() if (self.gen(number) / f"prog_{name}").exists()]


def root_id(generation: Path) -> int | None:
    return prog_id(generation / ROOT_PIN)


def prog_id(path: Path) -> int | None:
    if not path.exists():
        return None
    fd = libbpf.obj_get(path)
    try:
        return libbpf.prog_info(fd).id
    finally:
        os.close(fd)


def close_maps(maps: dict) -> None:
    for m in maps.values():
        m.close()


# -- the steps ---------------------------------------------------------------------------

def begin(records: Records, op: str, before: int | None, after: int | None) -> None:
    """The journal entry comes first: whatever exists of the change afterwards, the next
    command knows what it belongs to."""
    records.write_journal({"op": op, "from": before, "to": after, "pid": os.getpid(),
                           "started": time.time()})


def prepare(layout: Layout, number: int, pipeline: Pipeline, own: tuple[str, ...] = ()) -> None:
    """Pins a loaded pipeline as generation `number`, beside whatever runs."""
    bpffs.remove_tree(layout.gen(number))  # left by a change that never committed
    pipeline.pin(layout.gen(number), layout.state, own)
    # Before the commit: the new chain never runs without the egress programs it needs.
    egress.attach(layout.directory, [layout.gen(number)])


def commit(layout: Layout, before: int, pipeline: Pipeline) -> None:
    """The switch: the link moves from generation `before`'s root to the new one, or
    nothing happens (ChangeError)."""
    swap(layout, before, pipeline.root_program.fd)


def swap(layout: Layout, before: int, root_fd: int) -> None:
    """The link moves from generation `before`'s root to root_fd, or nothing happens."""
    old_fd = libbpf.obj_get(layout.gen(before) / ROOT_PIN)
    link_fd = libbpf.obj_get(layout.link)
    try:
        libbpf.link_update(link_fd, root_fd, expected_fd=old_fd)
    except BpfError as exc:
        if exc.errno == errno.EPERM:
            raise ChangeError(errno.EPERM, "the interface no longer runs the generation this "
                              "change was planned from", "run the command again") from None
        raise
    finally:
        os.close(link_fd)
        os.close(old_fd)


def finish(layout: Layout, records: Records, before: int | None, after: int,
           keep: int | None = None) -> None:
    """After the switch: the old generation's counters move to the new one, its pins go,
    the new revision is the current one. Safe to run again after a kill (recovery).
    `keep`: a generation that still runs (the arm a canary is tried against): its
    counters stay and so do its pins."""
    if before is not None and before != keep and layout.gen(before).is_dir():
        time.sleep(DRAIN_SECONDS)
        old, new = layout.maps(before), layout.maps(after)
        try:
            after_swap(new, layout.chain(after), carry(old))
        finally:
            close_maps(old)
            close_maps(new)
    for number, path in layout.generations().items():
        if number not in (after, keep):
            bpffs.remove_tree(path)
    egress.sync(layout.directory, [layout.gen(n) for n in (after, keep) if n is not None])
    if keep is None:
        records.clear_canary()
    records.set_current(after)
    records.clear_journal()


def abandon(layout: Layout, records: Records, after: int | None) -> None:
    """Drops what a change prepared but never switched to."""
    if after is not None:
        bpffs.remove_tree(layout.gen(after))
        if records.current() != after:
            records.drop(after)
    live = layout.live_generation()
    running = [layout.gen(n) for n in (live, control_of(layout, live)) if n is not None]
    egress.sync(layout.directory, running)
    records.clear_journal()


# -- recovery ----------------------------------------------------------------------------

def recover(iface: str) -> str | None:
    """Finishes or undoes a change a kill cut short; what it did, in a sentence, or None
    when there was nothing to do. Call with the lock held."""
    records = Records(iface)
    entry = records.journal()
    layout = Layout.of(iface)
    if entry is None:
        _drop_strays(layout)
        return None
    op, before, after = entry.get("op"), entry.get("from"), entry.get("to")
    if op == "down":
        _finish_down(layout, records)
        return f"completed an interrupted `down` on {iface}: shieldwall is detached"
    live = layout.live_generation()
    if op == "canary":  # a canary's start: the generation it is tried against stays
        if live == after:
            finish(layout, records, before, after, keep=before)
            return (f"completed an interrupted canary start on {iface}: revision {after} runs "
                    f"beside revision {before}")
        abandon(layout, records, after)
        records.clear_canary()
        return f"rolled back an interrupted canary start on {iface}: revision {before} stays in force"
    if op == "canary-abort":
        if live != after:
            records.clear_journal()  # nothing was switched: the canary still runs
            return f"an interrupted canary abort on {iface} had switched nothing: the canary still runs"
        finish(layout, records, None, after)  # the arm's counters stay its own
        return f"completed an interrupted canary abort on {iface}: revision {after} is in force"
    if after is not None and live == after:
        finish(layout, records, before, after)
        return (f"completed an interrupted {op} on {iface}: revision {after} is in force "
                "(it had already been switched to)")
    abandon(layout, records, after)
    stays = f"revision {before} stays in force" if before is not None and live == before \
        else "nothing is attached"
    return f"rolled back an interrupted {op} on {iface} (to revision {after}): {stays}"


def _drop_strays(layout: Layout) -> None:
    """Generations nothing runs and no journal names (a kill before the journal was
    written cannot leave any, but pins are cheap to check)."""
    live = layout.live_generation()
    if live is None:
        return
    for number, path in layout.generations().items():
        if number != live and number != control_of(layout, live):
            bpffs.remove_tree(path)


def alone_in_force(layout: Layout, iface: str) -> int:
    """The generation in force, when no canary runs beside it (ChangeError otherwise):
    what a change that starts from one whole policy needs."""
    live = layout.live_generation()
    if live is None:
        raise ChangeError(errno.ENOENT, f"shieldwall is not running on {iface}",
                          f"attach it first: shieldwall up --iface {iface} --config FILE")
    if control_of(layout, live) is not None:
        raise ChangeError(errno.EBUSY, f"a canary runs on {iface}",
                          f"end it first: shieldwall canary promote|abort --iface {iface}")
    return live


def control_of(layout: Layout, live: int | None) -> int | None:
    """The generation a running canary (generation `live`) is tried against, if any."""
    records = Records(layout.directory.name)
    found = records.canary()
    if found and live is not None and found.get("canary") == live:
        return int(found["control"])
    return None


def _finish_down(layout: Layout, records: Records) -> None:
    for pin in [*egress.links(layout.directory).values(), layout.link]:
        if pin.exists():
            libbpf.detach_pinned(pin)
    bpffs.remove_tree(layout.directory)
    bpffs.remove_empty_parents(layout.directory)
    records.forget()


def iter_ifaces() -> Iterator[str]:
    scope = bpffs.pin_dir("x").parent
    for entry in sorted(scope.iterdir()) if scope.is_dir() else ():
        yield entry.name
