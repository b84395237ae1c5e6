"""`up --mode nft`: the policy as one nftables table on the interface (shieldwall.nft
compiles it), with the same revisions, history and rollback as the XDP modes.

The table is `netdev shieldwall_<iface>`, hooked at ingress on the interface (`inet`
at prerouting, after connection tracking, when the rules read `state`); with
`protect.syn` in cookie mode, the syn stage's inet table and sysctls for SYNPROXY come
with it (engine/host.py, as in the other modes). A marker in the interface's records
(nft.json) says the interface runs in this mode, which table is shieldwall's, and what
its counters mean, so that later commands go on in this mode.

A change is three `nft -f` transactions, each applied by the kernel whole or not at
all (_apply_ruleset): the new sets, then the rules (new chains, named by revision, and
the base chain's rules replaced: its hook stays registered), then the removal of what
only the old rules used. Packets see the old rules or the new, never a mix or none.
Dynamic sets holding rate-limit buckets and blocks, and the named counters, are kept
when the new ruleset declares them alike (a meter's name carries every parameter of
its limit), as the XDP modes keep their state maps. A refused ruleset changes nothing.

`down` deletes that table and what the syn stage set up, and nothing else: other
tables, shieldwall's in other modes or anyone's, stay.
"""

from __future__ import annotations

import errno
import json

from ..dataplane import bpffs
from ..kernel import xdp
from ..kernel.errors import BpfError
from ..modes import LOSES
from ..nft.compile import Compiled, compile_policy, table_name
from . import host, lifecycle
from .records import Records, state_root
from .transaction import Layout

FAMILY = "netdev"
FAMILIES = ("netdev", "inet")  # inet: a policy that reads connection state


class NftModeError(BpfError):
    """A change nft mode refused; nothing was changed."""


def active(iface: str) -> bool:
    """Whether the interface runs in nft mode (its records hold the marker)."""
    return Records(iface).nft_mode() is not None


def ifaces() -> list[str]:
    """The interfaces of this network namespace that run in nft mode."""
    scope = state_root() / bpffs.netns_scope()
    return sorted(d.name for d in scope.iterdir() if (d / "nft.json").is_file()) if scope.is_dir() else []


# -- nft ---------------------------------------------------------------------------------

def _listed(table: str, family: str = FAMILY) -> dict | None:
    """The table as `nft -j list table` has it; None when there is none."""
    try:
        out = host.nft(["-j", "list", "table", family, table])
    except OSError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise
    return json.loads(out)


def _delete_table(table: str, family: str) -> None:
    if _listed(table, family) is not None:
        host.nft(["delete", "table", family, table])


def _objects(listed: dict | None) -> set[tuple[str, str]]:
    """(kind, name) of the chains, sets, maps, limits and counters of a listed table."""
    found = set()
    for item in (listed or {}).get("nftables", []):
        for kind in KINDS:
            if kind in item:
                found.add((kind, item[kind]["name"]))
    return found


KINDS = ("chain", "set", "map", "limit", "counter")


def declare_script(compiled: Compiled) -> str:
    """The first transaction: the new ruleset's sets, limits and counters, filled,
    beside the old ones; no rule uses them yet. Those it declares alike (state) are
    kept as they are."""
    declared = [line for line in compiled.text.splitlines()
                if line.startswith(("\tset ", "\tmap ", "\tlimit ", "\tcounter "))]
    return f"table {compiled.family} {compiled.table} {{\n" + "\n".join(declared) + "\n}\n"


def switch_script(compiled: Compiled, exists: bool) -> str:
    """The second: the new chains beside the old ones, and the base chain's rules
    replaced by the new ruleset's. On a table that exists, the base chain is not
    declared again: its hook stays registered as it is."""
    if not exists:
        return compiled.text
    table = f"{compiled.family} {compiled.table}"
    return f"flush chain {table} ingress\n" + compiled.text.replace(f"\t\t{compiled.base}\n", "")


def cleanup_script(compiled: Compiled, listed: dict | None) -> str:
    """The third: what the new ruleset does not use goes (chains emptied first, so
    nothing refers to what is deleted after them)."""
    table = f"{compiled.family} {compiled.table}"
    old = sorted(_objects(listed) - compiled.names, key=lambda kn: (KINDS.index(kn[0]), kn[1]))
    lines = [f"flush chain {table} {name}" for kind, name in old if kind == "chain"]
    lines += [f"delete {kind} {table} {name}" for kind, name in old]
    return "\n".join(lines) + "\n" if lines else ""


def _apply_ruleset(compiled: Compiled) -> None:
    """Three transactions, each whole or not at all. The sets go in first, so that the
    rules that look them up never run before the kernel has committed them; the rules
    then switch at once; what only the old rules used goes last, when no packet can
    be on them any more. After a refusal, what the first put in is taken out again."""
    before = _listed(compiled.table, compiled.family)
    try:
        host.nft(["-f", "-"], declare_script(compiled))
        host.nft(["-f", "-"], switch_script(compiled, before is not None))
    except OSError as exc:
        _undeclare(compiled, before)
        raise NftModeError(errno.EINVAL, f"nftables refused the ruleset: {exc.strerror or exc}",
                           "nothing was changed") from None
    leftover = cleanup_script(compiled, _listed(compiled.table, compiled.family))
    if leftover:
        host.nft(["-f", "-"], leftover)


def _undeclare(compiled: Compiled, before: dict | None) -> None:
    table = f"{compiled.family} {compiled.table}"
    if before is None:
        if _listed(compiled.table, compiled.family) is not None:
            host.nft(["delete", "table", *table.split()])
        return
    added = sorted(compiled.names - _objects(before), key=lambda kn: (KINDS.index(kn[0]), kn[1]))
    lines = [f"delete {kind} {table} {name}" for kind, name in added if kind != "chain"]
    if lines:
        host.nft(["-f", "-"], "\n".join(lines) + "\n")


def _marker(compiled: Compiled, number: int) -> dict:
    return {"table": compiled.table, "family": compiled.family, "revision": number,
            "meaning": {c: [m.action, m.reason, m.rule] for c, m in compiled.meaning.items()},
            "rules": [list(r) for r in compiled.rules],
            "unexpressed": [str(u) for u in compiled.unexpressed],
            "differences": list(compiled.differences), "chain": list(compiled.chain),
            "counters": compiled.counters}


# -- up, reload, rollback, down ----------------------------------------------------------

def up(iface: str, change: "lifecycle.Proposal", force: bool = False) -> "lifecycle.AttachResult":
    with bpffs.exclusive():
        return attach(iface, change, force)


def attach(iface: str, change: "lifecycle.Proposal", force: bool = False) -> "lifecycle.AttachResult":
    """`up` for a caller that holds the lock (`up --mode auto` walking down to nft)."""
    if active(iface):
        return _apply(iface, change)
    xdp.ifindex(iface)  # an unknown interface is named as such
    if Layout.of(iface).link.exists():
        raise NftModeError(errno.EBUSY, f"shieldwall runs XDP on {iface}",
                           f"to change the mode: shieldwall down --iface {iface}, then up --mode nft")
    table = table_name(iface)
    for family in FAMILIES:
        if _listed(table, family) is None:
            continue
        if not force:
            raise NftModeError(errno.EBUSY, f"table {family} {table} exists, and shieldwall has "
                               "no record of making it", "use --force to replace it")
        _delete_table(table, family)  # as --force replaces a foreign XDP program
    return _apply(iface, change, first=True)


def reload(iface: str, change: "lifecycle.Proposal") -> "lifecycle.AttachResult":
    with bpffs.exclusive():
        return _apply(iface, change)


def rollback(iface: str, to: int | None = None) -> "lifecycle.AttachResult":
    with bpffs.exclusive():
        records = Records(iface)
        target = records.revision(to) if to is not None else lifecycle._previous(records)
        change = lifecycle.Proposal(lifecycle.load_revision(records, target), None,
                                    f"rollback to {target.number}", stored=target)
        return _apply(iface, change)


def _apply(iface: str, change: "lifecycle.Proposal", first: bool = False) -> "lifecycle.AttachResult":
    """Compiles, records and applies a revision; a refusal anywhere leaves the interface
    as it was (the ruleset in force, its revision current)."""
    config = change.config
    records = Records(iface)
    number = records.next_number()
    compiled = compile_policy(config.policy, iface, suffix=f"_r{number}")
    host.check(config, iface)
    origin = change.origin if not (first and change.origin == "reload") else "up"
    lifecycle._record(records, number, change, origin)
    if first:
        # Written before the table is: a kill from here on leaves what `down` removes.
        records.save_nft_mode(_marker(compiled, 0))
    was = None if first else records.nft_mode()
    try:
        host.sync(iface, config, add_only=True)
        _apply_ruleset(compiled)
    except BaseException:
        records.drop(number)
        if first:
            host.teardown(iface)
            records.clear_nft_mode()
        else:
            host.sync(iface, lifecycle.current_config(iface))
        raise
    records.save_nft_mode(_marker(compiled, number))
    records.set_current(number)
    if was and was.get("family", FAMILY) != compiled.family:
        # The other family's table ran until the new one was in force: a packet met both
        # for that moment, and was dropped if either dropped it.
        _delete_table(was["table"], was.get("family", FAMILY))
    host.sync(iface, config)
    hook = "ingress" if compiled.family == FAMILY else "prerouting, after connection tracking"
    why = (f"the policy as nftables table {compiled.family} {compiled.table} at {hook}; "
           f"it loses {LOSES['nft']}")
    notes = tuple(f"not expressed: {u}" for u in compiled.unexpressed)
    return lifecycle.AttachResult(iface, "nft", why, 0, records.dir, number,
                                  reloaded=not first, notes=notes)


def down(iface: str, forget: bool = False) -> "lifecycle.DownResult":
    with bpffs.exclusive():
        records = Records(iface)
        marker = records.nft_mode()
        if marker is None:
            return lifecycle.DownResult(False)
        _delete_table(marker["table"], marker.get("family", FAMILY))
        host.teardown(iface)
        records.clear_nft_mode()
        records.forget()
        if forget:
            records.remove()
        return lifecycle.DownResult(True)


# -- status ------------------------------------------------------------------------------

def counters(table: str, family: str = FAMILY) -> dict[str, tuple[int, int]]:
    """Packets and bytes per named counter of the table."""
    counts: dict[str, tuple[int, int]] = {}
    for item in (_listed(table, family) or {}).get("nftables", []):
        if "counter" in item:
            c = item["counter"]
            counts[c["name"]] = (c["packets"], c["bytes"])
    return counts


def status_of(iface: str) -> dict:
    records = Records(iface)
    marker = records.nft_mode() or {}
    table = marker.get("table", table_name(iface))
    family = marker.get("family", FAMILY)
    report: dict = {"iface": iface, "pins": None, "attached": False, "mode": "nft",
                    "mode_loses": LOSES["nft"], "nft": {"table": f"{family} {table}"},
                    "unexpressed": marker.get("unexpressed", []),
                    "differences": marker.get("differences", []),
                    "stages_expressed": marker.get("chain", [])}
    syn = host.recorded(iface).get("syn")
    if syn:
        report["nft"]["synproxy_table"] = f"inet {syn['table']}"
    try:
        listed = _listed(table, family)
    except OSError as exc:
        report["problem"] = f"cannot list the table: {exc.strerror or exc}"
        return report
    if listed is None:
        report["problem"] = (f"table {family} {table} is gone (deleted by hand?); "
                             f"run shieldwall down --iface {iface}, then up")
        return report
    report["attached"] = True
    number = records.current()
    if number is not None:
        try:
            revision = records.revision(number)
            report["revision"] = {**revision.to_json(), "when": revision.when}
        except ValueError:
            report["revision"] = {"revision": number, "problem": "its record is missing"}
    counts = counters(table, family)
    meaning = {c: tuple(m) for c, m in marker.get("meaning", {}).items()}
    totals: dict[tuple[str, str], list[int]] = {}
    per_rule: dict[str | None, list[int]] = {}
    monitored: dict[str, int] = {}
    for comment, name in marker.get("counters", {}).items():
        packets, nbytes = counts.get(name, (0, 0))
        action, reason, rule = meaning.get(comment, (None, comment, None))
        if action is not None:
            t = totals.setdefault((action, reason), [0, 0])
            t[0] += packets
            t[1] += nbytes
        elif rule is None:  # a protect filter in monitor mode: counted, not decided
            monitored[reason] = monitored.get(reason, 0) + packets
        if rule is not None or reason == "default":
            r = per_rule.setdefault(rule, [0, 0])
            r[0] += packets
            r[1] += nbytes
    report["counters"] = [{"action": a, "reason": r, "packets": p, "bytes": b}
                          for (a, r), (p, b) in sorted(totals.items())]
    report["monitored"] = monitored
    monitors = {rule for action, reason, rule in meaning.values() if reason == "monitor"}
    report["rules"] = [
        {"id": rule_id, "name": name, "packets": per_rule.get(name, [0, 0])[0],
         "bytes": per_rule.get(name, [0, 0])[1],
         "would_drop": per_rule.get(name, [0, 0])[0] if name in monitors else 0,
         "last_hit_seconds_ago": None}
        for rule_id, name in [(0, None), *[tuple(r) for r in marker.get("rules", [])]]]
    return report


def status_lines(report: dict, rules: bool = False) -> list[str]:
    """The lines `status` prints for an interface in nft mode."""
    nft = report.get("nft", {})
    state = "in force, nft mode" if report["attached"] else "NOT in force (nft mode)"
    lines = [f"{report['iface']}: {state}"]
    rev = report.get("revision")
    if rev and "when" in rev:
        lines.append(f"  revision {rev['revision']}, applied {rev['when']} ({rev['origin']}): "
                     f"{rev['source'] or 'no policy'}")
    lines += [f"  table: {nft.get('table')}"
             + (f", SYNPROXY in {nft['synproxy_table']}" if "synproxy_table" in nft else ""),
             f"  loses: {report['mode_loses']}"]
    if report.get("stages_expressed"):
        lines.append(f"  stages as nftables rules: {' -> '.join(report['stages_expressed'])}")
    lines += [f"  not expressed: {u}" for u in report.get("unexpressed", [])]
    lines += [f"  differs: {d}" for d in report.get("differences", [])]
    if report.get("problem"):
        lines.append(f"  problem: {report['problem']}")
    for c in report.get("counters", []):
        lines.append(f"  {c['action']:>8} {c['reason']:<22} {c['packets']:>12} pkts {c['bytes']:>14} bytes")
    for reason, packets in sorted(report.get("monitored", {}).items()):
        lines.append(f"  {'monitor':>8} {reason:<22} {packets:>12} pkts (counted, not dropped)")
    if rules:
        lines.append(f"  {'rule':<32} {'packets':>12} {'bytes':>14}")
        lines += [f"  {r['name'] or '(default action)':<32} {r['packets']:>12} {r['bytes']:>14}"
                  for r in report.get("rules", [])]
    return lines

