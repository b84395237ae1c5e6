"""The life of a pipeline on an interface: up, reload, rollback, down, status, history.

Every change goes through the transaction engine (engine/transaction.py): the new
generation is loaded and pinned beside the running one, one swap of the pinned
bpf_link's program puts it in force, and a journal lets the next command finish or
undo a change that a kill cut short. Each applied policy is kept as a revision
(engine/records.py), which `rollback` and `up --revision` apply again.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .. import abi, modes
from ..config import Config, configure, default_config
from ..dataplane import bpffs
from ..dataplane.pipeline import SHARED_MAPS, Arm, Pipeline, pinned_maps, read_counters, read_events
from ..kernel import libbpf, xdp
from ..kernel.errors import BpfError
from ..kernel.ethtool import driver_name
from ..policy.files import read_bounded
from ..policy.load import MAX_POLICY_BYTES, parse_policy_text
from ..policy.sets import MAX_SET_FILE_BYTES
from ..stages import stages
from . import egress, host, livesets, nftmode
from . import transaction as tx
from .records import Records, Revision
from .transaction import Layout

class AttachError(BpfError):
    pass


@dataclass(frozen=True)
class AttachResult:
    iface: str
    mode: str
    why: str
    prog_id: int
    pins: Path
    revision: int = 0
    reloaded: bool = False
    recovered: str | None = None  # what finishing an interrupted change did first
    notes: tuple[str, ...] = ()   # what became of the live set entries
    failed: tuple[str, ...] = ()  # segments whose change was refused (the others went in)
    steps: tuple[str, ...] = ()   # each mode tried on the way to the one in force, and why


@dataclass(frozen=True)
class Proposal:
    """A configuration and where it came from, to be kept as a revision."""

    config: Config
    source: Path | None = None          # the policy file; None: no policy (pass-all)
    origin: str = "reload"
    stored: Revision | None = None       # when it is an earlier revision applied again
    drop_live: bool = False              # the live set entries go (engine.livesets)
    files: dict[str, Path] | None = None  # where named files are read from, if not beside it


def proposal(config: Config, source: Path | None, origin: str = "reload",
             drop_live: bool = False) -> Proposal:
    return Proposal(config, source, origin, drop_live=drop_live)


# -- attaching ---------------------------------------------------------------------------

HOOK_OF_MODE = {"native": "xdp", "generic": "xdp", "tc": "tc"}


def mode_plan(iface: str, mode: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The modes to try, best first, each with why it is tried: the one asked for, or
    for `auto` those the doctor finds this host and interface can run; and the modes
    the doctor rules out, each with why."""
    modes.check_mode(mode)
    if mode != "auto":
        return [(mode, "asked for with --mode")], []
    from ..doctor import LiveFacts, examine  # the host is read only for auto
    from ..doctor.verdict import excluded_modes, plan_modes
    # Read in the interface's namespace, where the command runs; no steal sample: it
    # would only delay the attach.
    try:
        report = examine(iface, LiveFacts(steal_seconds=0))
    except (OSError, ValueError) as exc:
        # Protection comes first: without a verdict, every mode is tried in order.
        why = f"tried in order: the doctor could not read this host ({exc})"
        return [(m, why) for m in modes.MODES], []
    return plan_modes(report), excluded_modes(report)


def _attach(prog_fd: int, index: int, mode: str) -> int:
    """A bpf_link of the root at the mode's hook (an fd)."""
    if mode == "tc":
        return libbpf.tcx_link_create(prog_fd, index, True, "tc mode")
    return libbpf.xdp_link_create(prog_fd, index, xdp.MODE_FLAGS[mode])


def _by_hook(plan: list[tuple[str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """The plan's modes grouped by the programs they need, in the plan's order: one
    load serves native and generic both."""
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    for mode, why in plan:
        hook = HOOK_OF_MODE.get(mode, mode)
        if groups and groups[-1][0] == hook:
            groups[-1][1].append((mode, why))
        else:
            groups.append((hook, [(mode, why)]))
    return groups


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def mode_in_force(layout: Layout, index: int, state: xdp.XdpState | None = None) -> str | None:
    """The mode the pinned link runs shieldwall's root in; None when it runs nowhere."""
    hook, live = layout.hook(), layout.live_prog_id()
    if not hook or not live:
        return None
    if hook == "tc":
        return "tc" if live in libbpf.tcx_programs(index, True) else None
    state = state or xdp.query(index)
    return state.mode if live in (state.native_id, state.generic_id, state.offload_id) else None


def up(iface: str, change: Proposal, mode: str = "auto", force: bool = False) -> AttachResult:
    if mode == "nft" or nftmode.active(iface):
        return nftmode.up(iface, change, force)
    with bpffs.exclusive():
        recovered = _recover(iface)
        return replace(_up(iface, change, mode, force), recovered=recovered)


def _up(iface: str, change: Proposal, mode: str, force: bool) -> AttachResult:
    index = xdp.ifindex(iface)
    state = xdp.query(index)
    layout = Layout.of(iface)
    if mode_in_force(layout, index, state):
        return _apply(iface, change)
    if state.mode:
        if not force:
            raise AttachError(errno.EBUSY, f"{iface} already has a foreign XDP program "
                              f"(id {state.prog_id}, {state.mode} mode)",
                              "shieldwall will not displace it; use --force to replace it")
        _detach_foreign(index, state)
    plan, ruled_out = mode_plan(iface, mode)
    driver = driver_name(iface) or "unknown"
    steps: list[str] = [f"{m}: ruled out by the doctor: {why}" for m, why in ruled_out]
    failure: BaseException | None = None
    for hook, tries in _by_hook(plan):
        try:
            if hook == "nft":
                return _up_nft(iface, change, force, tries[0][1], steps)
            return _up_at(iface, change, index, layout, hook, tries, steps, driver)
        except BpfError as exc:
            failure = exc
    if failure is None:
        raise AttachError(errno.ENODEV, f"no mode can run on {iface}: " + "; ".join(steps),
                          f"shieldwall doctor --iface {iface} says what to change")
    if len(plan) > 1:
        raise AttachError(getattr(failure, "errno", errno.EINVAL),
                          f"no mode worked on {iface}: " + "; ".join(steps),
                          "shieldwall doctor --iface " + iface + " says why")
    raise failure


def _up_nft(iface: str, change: Proposal, force: bool, reason: str,
            steps: list[str]) -> AttachResult:
    """The last mode: the policy as one nftables table (engine/nftmode.py)."""
    try:
        result = nftmode.attach(iface, change, force)
    except BpfError as exc:
        steps.append(f"nft: {_first_line(exc)}")
        raise
    steps.append("nft: attached")
    return replace(result, why=f"{reason}: {result.why}", steps=tuple(steps))


def _up_at(iface: str, change: Proposal, index: int, layout: Layout, hook: str,
           tries: list[tuple[str, str]], steps: list[str], driver: str) -> AttachResult:
    """One hook's attempt: the pipeline loaded for it and attached in the first of its
    modes that works; a BpfError when none does (nothing left behind), each failure
    written to `steps`."""
    bpffs.remove_tree(layout.directory)  # stale pins of an interface that lost its program
    records = Records(iface)
    number = records.next_number()
    tx.begin(records, "up", None, number)
    link_fd = -1
    pipeline = None
    got = why = ""
    try:
        _record(records, number, change, "up" if change.origin == "reload" else change.origin)
        try:
            pipeline, live = _load(records, number, change, None, hook=hook)
        except BpfError as exc:
            steps.extend(f"{mode}: its programs do not load here: {_first_line(exc)}" for mode, _ in tries)
            raise
        _host_before(iface, change)
        tx.prepare(layout, number, pipeline)
        for mode, reason in tries:
            try:
                link_fd = _attach(pipeline.root_program.fd, index, mode)
            except BpfError as exc:
                steps.append(f"{mode}: failed on driver {driver}: {_first_line(exc)}")
                continue
            got, why = mode, f"{reason} (driver {driver})" + (
                f"; it loses {modes.LOSES[mode]}" if mode != "native" else "")
            steps.append(f"{mode}: attached")
            break
        else:
            raise BpfError(errno.EOPNOTSUPP, f"no {hook} mode attached on {iface}")
        libbpf.pin_fd(link_fd, layout.link)
        prog_id = pipeline.root_program.id
    except BaseException:
        if link_fd >= 0:
            libbpf.link_detach(link_fd)
        tx.abandon(layout, records, number)
        bpffs.remove_tree(layout.directory)
        bpffs.remove_empty_parents(layout.directory)
        host.teardown(iface)
        raise
    finally:
        if link_fd >= 0:
            os.close(link_fd)
        if pipeline is not None:
            pipeline.close()
    # Attached from here on: a failure below leaves the journal for the next command.
    tx.finish(layout, records, None, number)
    host.sync(iface, change.config)
    live.kept()
    return AttachResult(iface, got, why, prog_id, layout.directory, number,
                        notes=tuple(live.notes), steps=tuple(steps))


def _detach_foreign(index: int, state: xdp.XdpState) -> None:
    for mode, prog_id in (("native", state.native_id), ("generic", state.generic_id),
                          ("offload", state.offload_id)):
        if prog_id:
            try:
                xdp.detach(index, mode)
            except BpfError as exc:
                raise AttachError(exc.errno, f"could not remove the foreign XDP program {prog_id}",
                                  "it is probably held by a bpf_link of another tool; detach it there") from None


# -- changing what runs --------------------------------------------------------------------

def reload(iface: str, change: Proposal) -> AttachResult:
    """A new generation, state maps reused, switched to in one swap of the link; a
    policy with segments goes through segments.cycles() instead."""
    if nftmode.active(iface):
        return nftmode.reload(iface, change)
    policy = change.config.policy
    with bpffs.exclusive():
        recovered = _recover(iface)
        if policy is not None and policy.ruleset.segments and change.source is not None:
            from .segments import cycles
            return replace(cycles(iface, change), recovered=recovered)
        return replace(_apply(iface, change), recovered=recovered)


def rollback(iface: str, to: int | None = None) -> AttachResult:
    """Applies an earlier revision again, as a new revision (history stays linear)."""
    if nftmode.active(iface):
        return nftmode.rollback(iface, to)
    with bpffs.exclusive():
        recovered = _recover(iface)
        records = Records(iface)
        target = records.revision(to) if to is not None else _previous(records)
        change = Proposal(load_revision(records, target), None, f"rollback to {target.number}",
                          stored=target)
        return replace(_apply(iface, change), recovered=recovered)


def _previous(records: Records) -> Revision:
    current = records.current()
    earlier = [r for r in records.revisions() if current is None or r.number < current]
    if not earlier:
        raise ValueError("no earlier revision to roll back to")
    return earlier[-1]


def _apply(iface: str, change: Proposal) -> AttachResult:
    index = xdp.ifindex(iface)
    layout = Layout.of(iface)
    if not layout.link.exists():
        raise AttachError(errno.ENOENT, f"shieldwall is not attached to {iface}",
                          f"attach it first: shieldwall up --iface {iface} --config FILE")
    before = layout.live_generation()
    if before is None:
        raise AttachError(errno.ESTALE, f"the link pinned for {iface} runs none of shieldwall's "
                          "generations", f"run shieldwall down --iface {iface}, then up")
    if tx.control_of(layout, before) is not None and change.origin != "canary promote":
        raise AttachError(errno.EBUSY, f"a canary runs on {iface}",
                          f"end it first: shieldwall canary promote|abort --iface {iface}")
    records = Records(iface)
    number = records.next_number()
    tx.begin(records, change.origin.split()[0], before, number)
    pipeline = None
    try:
        _record(records, number, change, change.origin)
        state = pinned_maps(layout.state)
        try:
            pipeline, live = _load(records, number, change, {name: m.fd for name, m in state.items()},
                               hook=layout.hook() or "xdp")
        finally:
            tx.close_maps(state)
        _host_before(iface, change)
        tx.prepare(layout, number, pipeline)
        tx.commit(layout, before, pipeline)
        prog_id = pipeline.root_program.id
    except BaseException:
        tx.abandon(layout, records, number)
        _host_reconcile(iface)
        raise
    finally:
        if pipeline is not None:
            pipeline.close()
    # In force from here on: a failure below leaves the journal for the next command.
    tx.finish(layout, records, before, number)
    host.sync(iface, change.config)
    live.kept()
    mode = mode_in_force(layout, index) or "none"
    return AttachResult(iface, mode, f"revision {number} in force; state kept", prog_id,
                        layout.directory, number, reloaded=True, notes=tuple(live.notes))


def apply_again(iface: str, origin: str) -> AttachResult:
    """The revision in force, applied again as a new generation (its live set entries
    as they are now); the caller holds the lock."""
    records = Records(iface)
    number = records.current()
    if number is None:
        raise AttachError(errno.ENOENT, f"no revision of {iface} is in force",
                          f"attach it first: shieldwall up --iface {iface} --config FILE")
    revision = records.revision(number)
    return _apply(iface, Proposal(load_revision(records, revision), None, origin, stored=revision))


def _load(records: Records, number: int, change: Proposal, reuse: dict[str, int] | None,
          arm: Arm | None = None, other_arm: int | None = None, hook: str = "xdp",
          ) -> tuple[Pipeline, livesets.ForGeneration]:
    """The new generation's pipeline with the live set entries: compiled into their sets
    where they must be (the policy parsed again from revision `number`'s copies), laid
    over the rest. A second load only when the first shows that a set's addresses
    cannot be laid over."""
    policy = change.config.policy
    live = livesets.ForGeneration(records, policy.sets if policy else (), drop=change.drop_live)
    config, compiled = change.config, live.compiled(None)
    if compiled:
        config = load_revision(records, records.revision(number), extra=compiled)

    def load(config: Config) -> Pipeline:
        return Pipeline.load(replace(config.pipeline, canary=arm, hook=hook), reuse=reuse,
                             other_arm=other_arm)

    pipeline = load(config)
    try:
        if live.any:
            needed = live.compiled(pipeline.live)
            if needed != compiled:
                pipeline.close()
                config, compiled = load_revision(records, records.revision(number), extra=needed), needed
                pipeline = load(config)
            pipeline.live.compiled = {s: {str(n) for n in nets} for s, nets in compiled.items()}
            live.lay_over(pipeline.maps, pipeline.live)
        pipeline.live.sets = set(config.policy.sets) if config.policy else set()
        records.save_live_index(number, pipeline.live.to_json())
    except BaseException:
        pipeline.close()
        raise
    return pipeline, live


# -- revisions ---------------------------------------------------------------------------

def _record(records: Records, number: int, change: Proposal, origin: str) -> None:
    """Keeps what is about to be applied, so it can be applied again."""
    policy = change.config.policy
    if change.stored is not None:
        kept = change.stored
        sha, files, source = kept.sha256, kept.files, kept.source
    elif change.source is None or policy is None:
        sha, files, source = None, {}, None
    else:
        sha = records.store_blob(read_bounded(change.source, MAX_POLICY_BYTES))
        base = change.source.parent
        where = change.files or {}
        named = [shown for s in policy.sets.values() for shown in s.files]
        named += [seg.file for seg in policy.ruleset.segments]
        files = {shown: records.store_blob(read_bounded(where.get(shown) or base / shown,
                                                        MAX_SET_FILE_BYTES))
                 for shown in named}
        source = str(change.source.resolve())
    records.save(Revision(number, time.time(), source, sha, files, origin,
                          _summary(change.config)))


def _summary(config: Config) -> str:
    chain = " -> ".join(config.pipeline.chain) or "(empty)"
    if config.policy is None:
        return "no policy: every packet passes"
    return (f"{len(config.policy.rules)} rules, {len(config.policy.sets)} sets, "
            f"default {config.policy.default_action}, chain {chain}")


def load_revision(records: Records, revision: Revision, extra: dict | None = None) -> Config:
    """The configuration a revision holds, from its stored copies (not the files as they
    are now); `extra`: prefixes added to its sets by name."""
    if revision.sha256 is None:
        return default_config()
    text = records.blob(revision.sha256).read_bytes().decode("utf-8")
    files = {shown: records.blob(digest) for shown, digest in revision.files.items()}
    source = revision.source or "(policy)"
    policy = parse_policy_text(text, f"{source} (revision {revision.number})",
                               Path(source).parent, files=files, extra=extra)
    return Config(policy, configure(policy))


def stored(iface: str, which: str) -> Proposal:
    """A kept revision ("last": the one last in force) for `up --revision`."""
    records = Records(iface)
    revisions = records.revisions()
    if not revisions:
        raise ValueError(f"no revision of {iface} is kept")
    if which == "last":
        number = records.current() or revisions[-1].number
    elif which.isdigit():
        number = int(which)
    else:
        raise ValueError(f"--revision: {which!r} is neither a number nor 'last'")
    revision = records.revision(number)
    return Proposal(load_revision(records, revision), None, f"up from revision {number}",
                    stored=revision)


def history(iface: str) -> list[dict]:
    records = Records(iface)
    current = records.current()
    return [{**r.to_json(), "when": r.when, "current": r.number == current}
            for r in records.revisions()]


def current_config(iface: str) -> Config | None:
    records = Records(iface)
    number = records.current()
    return load_revision(records, records.revision(number)) if number else None


# -- detaching ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DownResult:
    removed: bool                 # False: it was not attached
    recovered: str | None = None


def down(iface: str, forget: bool = False) -> DownResult:
    """Detaches shieldwall from the interface and removes its pins; the revisions stay,
    unless `forget` (a lab's interface, about to go with its namespace)."""
    if nftmode.active(iface):
        return nftmode.down(iface, forget)
    with bpffs.exclusive():
        recovered = _recover(iface)
        layout = Layout.of(iface)
        if not layout.directory.exists():
            return DownResult(False, recovered)
        records = Records(iface)
        tx.begin(records, "down", records.current(), None)
        tx.recover(iface)  # the journal says down: detach, remove, forget
        host.teardown(iface)
        if forget:
            records.remove()
        return DownResult(True, recovered)


def _recover(iface: str) -> str | None:
    bpffs.ensure_bpffs()
    done = tx.recover(iface)
    if done is not None or (host.recorded(iface) and not Layout.of(iface).link.exists()):
        _host_reconcile(iface)
    return done


# -- the host beside the data plane (engine/host.py) --------------------------------------

def _host_before(iface: str, change: Proposal) -> None:
    """Before the commit: what the new chain's stages need from the namespace is there
    (the old chain's stays until the change is in force), or the change is refused."""
    host.check(change.config, iface)
    host.sync(iface, change.config, add_only=True)


def _host_reconcile(iface: str) -> None:
    """The namespace holds what the revision in force needs, after a change that failed
    or was cut short: nothing, when shieldwall is not attached."""
    layout = Layout.of(iface)
    config = current_config(iface) if layout.live_generation() is not None else None
    host.sync(iface, config)


# -- status ------------------------------------------------------------------------------

def status(iface: str | None = None) -> list[dict]:
    """What is attached where, read back from the kernel, the pins and the records."""
    bpffs.require_root()
    bpffs.ensure_bpffs()
    names = [iface] if iface else sorted({*tx.iter_ifaces(), *nftmode.ifaces()})
    return [_status_of(name) for name in names]


def _status_of(iface: str) -> dict:
    if nftmode.active(iface):
        return nftmode.status_of(iface)
    layout = Layout.of(iface)
    records = Records(iface)
    report: dict = {"iface": iface, "pins": str(layout.directory), "attached": False, "mode": None}
    entry = records.journal()
    try:
        state = xdp.query(xdp.ifindex(iface))
    except BpfError as exc:
        report["problem"] = str(exc)
        state = None
    if not layout.directory.exists():
        report["problem"] = report.get("problem") or "shieldwall is not attached here"
        if state and state.mode:
            report["foreign_program"] = {"id": state.prog_id, "mode": state.mode}
        return report
    live = layout.live_generation()
    if entry is not None:
        report["interrupted"] = {
            "op": entry.get("op"), "from": entry.get("from"), "to": entry.get("to"),
            "in_force": live,
            "next": "the next shieldwall command on this interface finishes or undoes it"}
    if state:
        in_force = mode_in_force(layout, xdp.ifindex(iface), state)
        report["attached"] = bool(in_force)
        report["mode"] = in_force
        if in_force in modes.LOSES:
            report["mode_loses"] = modes.LOSES[in_force]
        report["prog_id"] = layout.live_prog_id() if in_force == "tc" else state.prog_id
        report["driver"] = driver_name(iface)
        if not report["attached"] and layout.link.exists():
            report["problem"] = ("the pinned link no longer runs on the interface (another tool "
                                 f"detached it?); run shieldwall down --iface {iface}, then up")
    if live is None:
        report.setdefault("problem", "no pinned generation is the one the link runs")
        return report
    try:
        revision = records.revision(live)
        report["revision"] = {**revision.to_json(), "when": revision.when}
    except ValueError:
        report["revision"] = {"revision": live, "problem": "its record is missing"}
    links = egress.running(layout.directory)
    if links:
        report["egress"] = links
    active = livesets.Entries.load(records).active(time.time())
    if active:
        report["live_entries"] = active
    control = tx.control_of(layout, live)
    if control is not None:
        report["canary"] = {"arm": (records.canary() or {}).get("arm"), "against": control}
    maps = layout.maps(live)
    missing = [name for name in SHARED_MAPS if name not in maps]
    if missing:
        tx.close_maps(maps)
        report["problem"] = f"incomplete pins in {layout.gen(live)}: {', '.join(missing)} missing"
        return report
    try:
        report["chain"] = _chain(layout, live, maps)
        cfg = maps["sw_config"].lookup(0)
        report["on_missing_stage"] = abi.action_name(cfg.missed_action)
        report["events"] = read_events(cfg, maps["sw_ev_budget"])
        counts = read_counters(maps["sw_counters"])
        if control is not None:  # the canary's own counters, and the shared ones of the rest
            counts = _added(counts, _shared_counters(layout))
        report["counters"] = [
            {"action": a, "reason": r, "packets": p, "bytes": b}
            for (a, r), (p, b) in sorted(counts.items())]
        report["stages"] = {}
        for c in report["chain"]:
            found = stages().get(c["stage"])
            if found is not None:
                report["stages"][found.name] = found.status(maps)
        rules = report["stages"].get("policy", {}).get("rules")
        if rules is not None:
            report["rules"] = rules
    except (KeyError, BpfError) as exc:
        report["problem"] = f"incomplete pins in {layout.gen(live)}: {exc}"
    finally:
        tx.close_maps(maps)
    return report


def _shared_counters(layout: Layout) -> dict:
    shared = pinned_maps(layout.state)
    try:
        return read_counters(shared["sw_counters"]) if "sw_counters" in shared else {}
    finally:
        tx.close_maps(shared)


def _added(a: dict, b: dict) -> dict:
    return {k: tuple(x + y for x, y in zip(a.get(k, (0, 0)), b.get(k, (0, 0)))) for k in {*a, *b}}


def _chain(layout: Layout, number: int, maps: dict) -> list[dict]:
    ids = {tx.prog_id(layout.gen(number) / f"prog_{name}"): name for name in stages()}
    cfg = maps["sw_config"].lookup(0)
    chain = []
    for slot in range(cfg.chain_len):
        prog_id = maps["sw_stages"].lookup(slot)
        chain.append({"slot": slot, "stage": ids.get(prog_id, "missing" if prog_id is None else f"prog {prog_id}"),
                      "prog_id": prog_id})
    return chain

