"""A/B canary: a new policy for a share of the traffic, beside the one in force
(docs/updates.md, "A/B canary").

The canary is a generation like any other, loaded and pinned beside the running one,
whose root decides first which arm a packet belongs to (lib/canary.h): its own
packets go down its own chain, the others are handed, by a tail call, to the root of
the generation in force, which keeps running unchanged. The link swaps to the
canary's root in one step (the engine's compare-and-swap), so the arms start together.

Each arm has its own counters: the canary's rule counters are its generation's, as
always, and its verdict counters are a map of its own (every other generation shares
one); the generation in force counts as before, and the canary's record keeps what
its counters held at the start. `promote` applies the canary's revision as a new
generation without an arm (a reload: its rule counters follow by name); `abort` swaps
the link back to the root in force and drops the canary.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import time
from dataclasses import dataclass, replace


from ..dataplane import bpffs
from ..dataplane.pipeline import ROOT_PIN, Arm, pinned_maps, read_counters
from ..kernel import libbpf, xdp
from ..policy.errors import Invalid, quote
from ..stages.policy import rule_counters, rule_names
from . import lifecycle, updates
from . import transaction as tx
from .records import Records
from .transaction import Layout, control_of

OWN_MAPS = ("sw_counters",)


class CanaryError(lifecycle.AttachError):
    pass


def parse_share(text: str) -> int:
    """`10%`, `0.5%`: the share of 2^32 a flow hash must be under."""
    value = text.strip().removesuffix("%")
    try:
        share = float(value)
    except ValueError:
        raise Invalid(f"--share: {quote(text)} is not a percentage (10%)") from None
    if not 0 < share < 100:
        raise Invalid(f"--share: {quote(text)}: more than 0% and less than 100%")
    return round(share / 100 * (1 << 32))


def arm_of(share: str | None, src: str | None) -> tuple[Arm, str]:
    if (share is None) == (src is None):
        raise Invalid("give either --share PERCENT or --src PREFIX")
    if share is not None:
        return Arm(share=parse_share(share)), f"{share.strip()} of flows"
    try:
        net = ipaddress.ip_network(src, strict=True)
    except ValueError as exc:
        raise Invalid(f"--src: {exc}") from None
    return Arm(prefix=net), f"sources in {net}"


@updates.timed("canary_start")
def start(iface: str, change: lifecycle.Proposal, arm: Arm, label: str) -> lifecycle.AttachResult:
    with bpffs.exclusive():
        recovered = lifecycle._recover(iface)
        layout, records = Layout.of(iface), Records(iface)
        before = tx.alone_in_force(layout, iface)
        number = records.next_number()
        tx.begin(records, "canary", before, number)
        pipeline = None
        control_fd = libbpf.obj_get(layout.gen(before) / ROOT_PIN)
        try:
            lifecycle._record(records, number, change, f"canary ({label})")
            state = pinned_maps(layout.state)
            try:
                reuse = {n: m.fd for n, m in state.items() if n not in OWN_MAPS}
                pipeline, live = lifecycle._load(records, number, change, reuse, arm, control_fd,
                                                 hook=layout.hook() or "xdp")
            finally:
                tx.close_maps(state)
            lifecycle._host_before(iface, change)  # added to the control's: both run
            tx.prepare(layout, number, pipeline, own=OWN_MAPS)
            records.save_canary({"control": before, "canary": number, "arm": label,
                                 "started": time.time(), "baseline": _counts(layout, before)})
            tx.commit(layout, before, pipeline)
            prog_id = pipeline.root_program.id
        except BaseException:
            tx.abandon(layout, records, number)
            records.clear_canary()
            lifecycle._host_reconcile(iface)
            raise
        finally:
            os.close(control_fd)
            if pipeline is not None:
                pipeline.close()
        tx.finish(layout, records, before, number, keep=before)
        mode = xdp.query(xdp.ifindex(iface)).mode or "none"
        return lifecycle.AttachResult(iface, mode, f"revision {number} runs for {label}; revision "
                                      f"{before} for the rest", prog_id, layout.directory, number,
                                      reloaded=True, recovered=recovered, notes=tuple(live.notes))


def _running(layout: Layout, records: Records, iface: str,
             recovered: str | None = None) -> tuple[int, int, dict]:
    live = layout.live_generation()
    control = control_of(layout, live)
    if control is None or live is None:
        first = f" ({recovered})" if recovered else ""
        raise CanaryError(errno.ENOENT, f"no canary runs on {iface}{first}",
                          f"start one: shieldwall canary start --iface {iface} --config NEW.yaml --share 10%")
    return live, control, records.canary() or {}


@updates.timed("canary_promote")
def promote(iface: str) -> lifecycle.AttachResult:
    """The canary's revision becomes the whole, as a new generation."""
    with bpffs.exclusive():
        recovered = lifecycle._recover(iface)
        layout, records = Layout.of(iface), Records(iface)
        live, _, _ = _running(layout, records, iface, recovered)
        revision = records.revision(live)
        change = lifecycle.Proposal(lifecycle.load_revision(records, revision), None,
                                    "canary promote", stored=revision)
        return replace(lifecycle._apply(iface, change), recovered=recovered)


@updates.timed("canary_abort")
def abort(iface: str) -> tuple[int, str | None]:
    """Back to the revision the canary was tried against; returns it, and what finishing
    an interrupted change did first."""
    with bpffs.exclusive():
        recovered = lifecycle._recover(iface)
        layout, records = Layout.of(iface), Records(iface)
        live, control, _ = _running(layout, records, iface, recovered)
        tx.begin(records, "canary-abort", live, control)
        root = libbpf.obj_get(layout.gen(control) / ROOT_PIN)
        try:
            tx.swap(layout, live, root)
        except BaseException:
            records.clear_journal()
            raise
        finally:
            os.close(root)
        tx.finish(layout, records, None, control)
        lifecycle._host_reconcile(iface)  # what only the canary needed goes
        return control, recovered


@dataclass(frozen=True)
class ArmReport:
    revision: int
    packets: int
    verdicts: dict[str, int]
    rules: dict[str, int]


def status(iface: str) -> dict:
    """Both arms side by side: packets, verdicts by reason, rule hits by name, since the
    canary started."""
    bpffs.require_root()
    layout, records = Layout.of(iface), Records(iface)
    live, control, record = _running(layout, records, iface)
    # The arm in force counts since the canary started; the canary's counters are new.
    start = record.get("baseline", {})
    arms = {}
    for name, number, since in (("in force", control, start), ("canary", live, {})):
        now = _counts(layout, number)
        verdicts, rules = ({k: n - since.get(part, {}).get(k, 0) for k, n in now[part].items()}
                           for part in ("verdicts", "rules"))
        arms[name] = ArmReport(number, sum(verdicts.values()),
                               {k: n for k, n in sorted(verdicts.items()) if n}, rules)
    total = sum(a.packets for a in arms.values())
    return {"iface": iface, "arm": record.get("arm"), "started": record.get("started"),
            "arms": {k: {**a.__dict__, "share": round(a.packets / total, 4) if total else None}
                     for k, a in arms.items()}}


def _counts(layout: Layout, number: int) -> dict[str, dict[str, int]]:
    """A generation's verdict counts ("action/reason") and rule hits (by name)."""
    maps = layout.maps(number)
    try:
        verdicts = {f"{a}/{r}": v[0] for (a, r), v in read_counters(maps["sw_counters"]).items()}
        rules = {}
        if "sw_pol_names" in maps:
            names = rule_names(maps)
            rules = {names.get(i, "(default)"): c.packets for i, c in rule_counters(maps).items()}
        return {"verdicts": verdicts, "rules": rules}
    finally:
        tx.close_maps(maps)


__all__ = ["start", "promote", "abort", "status", "arm_of"]
