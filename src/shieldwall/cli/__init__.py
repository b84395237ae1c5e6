"""The shieldwall command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..modes import MODES
from ..kernel.errors import BpfError, VerifierError
from ..kernel.names import BadName, check_ifname, check_netns_name
from ..kernel.netns import NamespaceError
from ..lab.netns import LabError
from ..pcapio import PcapError
from ..policy.errors import PolicyError


def _netns(args: argparse.Namespace):
    if getattr(args, "netns", None):
        from ..kernel.netns import enter_netns
        return enter_netns(args.netns)
    return nullcontext()


class UsageError(ValueError):
    """A command line that asks for something it should not get by accident."""


def _config(args: argparse.Namespace):
    from ..config import default_config, load_config
    if getattr(args, "config_required", False) and not args.config:
        raise UsageError("--config FILE is required")
    if getattr(args, "allow_empty", None) is False and not args.config:
        # A forgotten --config must not quietly replace a policy with pass-all.
        raise UsageError(f"{args.cmd} needs --config POLICY.yaml; to attach shieldwall with "
                         "no policy at all (every packet passes), give --allow-empty")
    return load_config(Path(args.config)) if args.config else default_config()


def _proposal(args: argparse.Namespace, origin: str):
    from ..engine.lifecycle import proposal
    return proposal(_config(args), Path(args.config) if args.config else None, origin,
                    drop_live=getattr(args, "drop_live", False))


def _api(args: argparse.Namespace):
    """The daemon serving args.iface, if one answers (ops/client.py); None: directly."""
    from ..ops.client import find
    return find(getattr(args, "iface", None), getattr(args, "netns", None))


def _policy_body(path: str) -> dict:
    """A policy for the daemon: root names the file (the daemon reads it, and the files
    it names, as this command would); anyone else sends its text."""
    if os.geteuid() == 0:
        return {"config": str(Path(path).resolve())}
    from ..policy.files import read_bounded
    from ..policy.load import MAX_POLICY_BYTES
    return {"policy": read_bounded(Path(path), MAX_POLICY_BYTES).decode("utf-8")}


def _as_result(data: dict) -> Any:
    from types import SimpleNamespace
    return SimpleNamespace(**{**data, "notes": tuple(data.get("notes") or ()),
                              "failed": tuple(data.get("failed") or ())})


def _recovered(note: str | None) -> None:
    if note:
        print(f"first: {note}")


def cmd_up(args: argparse.Namespace) -> int:
    from ..engine import lifecycle
    with _netns(args):
        change = (lifecycle.stored(args.iface, args.revision) if args.revision
                  else _proposal(args, "up"))
        result = lifecycle.up(args.iface, change, mode=args.mode, force=args.force)
    _recovered(result.recovered)
    if result.reloaded:
        print(f"shieldwall was already attached to {result.iface} ({result.mode} mode): "
              f"its policy was reloaded (revision {result.revision}); to change the mode, "
              "run down and then up")
    else:
        what = f"program id {result.prog_id}, " if result.mode != "nft" else ""
        print(f"shieldwall attached to {result.iface} in {result.mode} mode "
              f"({what}revision {result.revision})")
        if len(result.steps) > 1:
            for step in result.steps:
                print(f"  tried {step}")
    print(f"  why: {result.why}")
    print(f"  {'records' if result.mode == 'nft' else 'pins'}: {result.pins}")
    _notes(result)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from ..engine import lifecycle
    if args.dry_run:
        from ..engine.plan import changes
        config = _config(args)
        with _netns(args):
            current = lifecycle.current_config(args.iface)
        for line in changes(current, config):
            print(line)
        return 0
    api = _api(args) if args.config else None
    if api is not None:
        result = _as_result(api.call("POST", "/reload", {**_policy_body(args.config),
                                                         "drop_live": args.drop_live}))
    else:
        if args.config:
            from ..engine.segments import proposal
            change = proposal(Path(args.config), drop_live=args.drop_live)
        else:
            change = _proposal(args, "reload")
        with _netns(args):
            result = lifecycle.reload(args.iface, change)
    _recovered(result.recovered)
    print(f"shieldwall reloaded on {result.iface} ({result.mode} mode, program id "
          f"{result.prog_id}): revision {result.revision} in force")
    _notes(result)
    for problem in result.failed:
        print(f"shieldwall: {problem}", file=sys.stderr)
    return 2 if result.failed else 0


def _notes(result: Any) -> None:
    for note in result.notes:
        print(f"  {note}")


def cmd_rollback(args: argparse.Namespace) -> int:
    from ..engine import lifecycle
    with _netns(args):
        result = lifecycle.rollback(args.iface, args.to)
    _recovered(result.recovered)
    print(f"shieldwall on {result.iface}: rolled back; revision {result.revision} in force")
    _notes(result)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from ..engine import lifecycle
    with _netns(args):
        revisions = lifecycle.history(args.iface)
    if args.json:
        print(json.dumps(revisions, indent=2))
        return 0
    if not revisions:
        print(f"no revision of {args.iface} is kept")
    for r in revisions:
        mark = "*" if r["current"] else " "
        digest = (r["sha256"] or "-")[:12]
        print(f"{mark} {r['revision']:>4}  {r['when']}  {digest:<12}  {r['origin']:<16}  "
              f"{r['source'] or '(no policy)'}")
        print(f"        {r['summary']}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from ..engine import lifecycle
    with _netns(args):
        result = lifecycle.down(args.iface)
    _recovered(result.recovered)
    print(f"shieldwall detached from {args.iface}" if result.removed
          else f"shieldwall was not attached to {args.iface}")
    return cmd_gc(args) if args.purge else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from ..engine.gc import collect
    result = collect()
    for path, why in result.removed:
        print(f"removed {path}: {why}")
    for path, why in result.kept:
        print(f"kept {path}: {why}")
    if not result.removed:
        print("no stale pins")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from ..ops import daemon
    from ..ops.serve import parse_listen
    if args.metrics:
        try:
            parse_listen(args.metrics)
        except ValueError as exc:
            raise UsageError(str(exc).replace("--listen", "--metrics")) from None
    api, group = None, None
    if args.api_group is not None and args.api is None:
        raise UsageError("--api-group goes with --api")
    if args.api is not None:
        from ..ops.api import parse_group
        from ..ops.client import socket_path
        try:
            group = parse_group(args.api_group) if args.api_group is not None else None
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        api = Path(args.api) if args.api else socket_path(args.iface, args.netns)
    _config(args)  # a bad policy is refused before anything is touched
    with _netns(args):
        return daemon.run(args.iface, Path(args.config).resolve(), mode=args.mode,
                          metrics=args.metrics, api=api, api_group=group,
                          api_default=not args.api)


def cmd_metrics(args: argparse.Namespace) -> int:
    from ..ops.metrics import status_reports
    from ..ops.serve import exposition, parse_listen, serve
    if args.listen:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    with _netns(args):
        reports = status_reports(args.iface)
        if not args.listen:
            print(exposition(reports), end="")
            return 0
        print(f"serving shieldwall's metrics at http://{args.listen}/metrics"
              + (f" in network namespace {args.netns}" if args.netns else ""), flush=True)
        serve(reports, args.listen)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ..engine import lifecycle
    api = _api(args)
    watch = None
    if api is not None:
        answer = api.call("GET", "/status")
        reports, watch = answer["status"], answer.get("daemon", {}).get("watch")
    else:
        with _netns(args):
            reports = lifecycle.status(args.iface)
    if args.json:
        print(json.dumps(reports, indent=2))
        return 0
    if not reports:
        print("shieldwall is not attached to any interface")
    for r in reports:
        if r.get("mode") == "nft":
            print("\n".join(_nft_view().status_lines(r, args.rules)))
            continue
        print(f"{r['iface']}: " + (f"attached, {r['mode']} mode, program id {r.get('prog_id')}"
                                   if r["attached"] else f"NOT attached ({r.get('problem', 'stale pins')})"))
        if r.get("mode_loses") and r.get("mode") != "native":
            print(f"  {r['mode']} mode loses {r['mode_loses']}")
        if "revision" in r:
            rev = r["revision"]
            print(f"  revision {rev['revision']}" + (
                f", applied {rev['when']} ({rev['origin']}): {rev['source'] or 'no policy'}"
                f"{' sha256 ' + rev['sha256'][:12] if rev.get('sha256') else ''}"
                if "when" in rev else f": {rev.get('problem')}"))
        for stage, prog in r.get("egress", {}).items():
            print(f"  tc egress: {stage}'s program id {prog} (a tcx link)")
        if "live_entries" in r:
            counts = ", ".join(f"{n} in {name}" for name, n in r["live_entries"].items())
            print(f"  live set entries: {counts} (shieldwall set list)")
        if "canary" in r:
            c = r["canary"]
            print(f"  CANARY: revision {r['revision']['revision']} runs for {c['arm']}, revision "
                  f"{c['against']} for the rest (shieldwall canary status|promote|abort)")
        if "interrupted" in r:
            i = r["interrupted"]
            print(f"  INTERRUPTED: a {i['op']} from revision {i['from']} to {i['to']} did not "
                  f"finish; revision {i['in_force']} is in force; {i['next']}")
        if r["attached"] and r.get("problem"):
            print(f"  problem: {r['problem']}")
        if watch and watch.get("refused"):
            print(f"  daemon: {watch['file']} was refused, revision {watch['revision']} stays "
                  f"in force: {watch['refused'].splitlines()[0]}")
        if "chain" in r:
            chain = " -> ".join(c["stage"] for c in r["chain"]) or "(empty)"
            print(f"  chain: root -> {chain}; a missing stage means {r['on_missing_stage']}")
            for c in r["counters"]:
                print(f"  {c['action']:>8} {c['reason']:<22} {c['packets']:>12} pkts {c['bytes']:>14} bytes")
            for name, stage_report in r.get("stages", {}).items():
                for line in _stage(name).status_lines(stage_report):
                    print(f"  {line}")
            if "events" in r:
                print(f"  {_events_line(r['events'])}")
        problem = r.get("stages", {}).get("policy", {}).get("problem")
        if args.rules and problem:
            print(f"  rules: {problem}")
        elif args.rules and r["attached"] and "chain" in r and "policy" not in r.get("stages", {}):
            print("  rules: none to show, the policy stage is not in the chain")
        if args.rules and r.get("rules"):
            print(f"  {'rule':<32} {'packets':>12} {'bytes':>14} {'would drop':>10}  last hit")
            for rule in r["rules"]:
                ago = "never" if rule["last_hit_seconds_ago"] is None else f"{rule['last_hit_seconds_ago']} s ago"
                print(f"  {rule['name'] or '(default action)':<32} {rule['packets']:>12} "
                      f"{rule['bytes']:>14} {rule['would_drop']:>10}  {ago}")
    return 0 if all(r["attached"] for r in reports) or not args.iface else 1


def _events_line(e: dict) -> str:
    if not e["rate"]:
        return "events: off"
    kinds = f"1 in {e['drops']} drops" + (f", 1 in {e['passes']} passes" if e["passes"] else "")
    sent = f"{e['drops_sent']} drop events sent, {e['drops_refused']} refused"
    if e["passes"]:
        sent += f"; {e['passes_sent']} pass events sent, {e['passes_refused']} refused"
    full = e["drops_ring_full"] + e["passes_ring_full"]
    return (f"events: {kinds}, at most {e['rate']}/s per CPU each; {sent}"
            + (f" ({full} for a full ring: no reader)" if full else "") + " (shieldwall events)")


def _nft_view():
    from ..engine import nftmode
    return nftmode


def _stage(name: str):
    from ..stages import stage
    return stage(name)


def cmd_check(args: argparse.Namespace) -> int:
    from ..policy.analysis import analyze
    config = _config(args)
    report = analyze(config.policy)
    print(f"{args.config}: valid")
    for lines in report.summary.stages.values():
        for line in lines:
            print(f"  {line}")
    for name, s in report.summary.sets.items():
        print(f"  set {name}: {s.ipv4} IPv4 and {s.ipv6} IPv6 prefixes")
    print(f"  chain: root -> {' -> '.join(config.pipeline.chain) or '(empty)'}")
    for line in config.map_summary():
        print(f"  {line}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    from .verdicts import verdicts
    config = _config(args)
    for line in verdicts(Path(args.pcap), config):
        note = f"  [{line['note']}]" if "note" in line else ""
        print(json.dumps(line) if args.json else
              f"{line['index']:>6} {line['action']:<8} {line['reason']:<22} {line['module']:<9} "
              f"{line['rule'] or '-'}{note}")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from ..lab import topology
    # The user's lab has the fixed default names; labs of tests and commands never do.
    topo = topology.DEFAULT_TOPOLOGY
    if args.lab_cmd == "attack":
        from ..lab import attacks
        attacks.check_run(args.rate, args.seconds)
        attack = attacks.attack(args.name)
        topo = topology.lab_up(topo)
        print(attacks.describe(attacks.run_attack(attack, topo, args.seconds, args.rate),
                               attack, topo))
    elif args.lab_cmd == "up":
        print(json.dumps(topology.lab_up(topo).to_dict(), indent=2))
    elif args.lab_cmd == "down":
        topology.lab_down(topo)
        print("lab removed")
    else:
        print(json.dumps(topology.lab_status(topo), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..lab.demo import run_demo
    return run_demo()


def cmd_bench(args: argparse.Namespace) -> int:
    if not args.scenarios and (args.seconds or args.rate):
        raise UsageError("--seconds and --rate are options of bench --scenarios")
    if args.scenarios:
        from .scenariobench import run_scenarios, summary
        report = run_scenarios(seconds=args.seconds or 5.0, rate=args.rate)
        print(json.dumps(report, indent=2) if args.json else summary(report))
        return 0
    if args.live:
        from .livebench import run_live
        report = run_live()
    elif args.limits:
        from .limitbench import run_limits
        report = run_limits(rounds=args.rounds)
    elif args.icmp:
        from .icmpbench import run_icmp
        report = run_icmp(rounds=args.rounds)
    elif args.reflection:
        from .reflectionbench import run_reflection
        report = run_reflection(rounds=args.rounds)
    elif args.syn:
        from .synbench import run_syn
        report = run_syn(rounds=args.rounds)
    elif args.modes:
        from .modebench import run_modes
        config = _config(args) if args.config else None
        report = run_modes(config, Path(args.pcap) if args.pcap else None,
                           adversarial=args.adversarial, packets=args.packets,
                           rounds=min(args.rounds, 3))
    elif args.events:
        from .eventbench import run_events_bench
        report = run_events_bench(packets=args.packets, rounds=args.rounds)
    elif args.scaling:
        from .scaling import run_scaling
        report = run_scaling(packets=args.packets, rounds=args.rounds)
    else:
        from .bench import run_bench
        config = _config(args) if args.config else None
        report = run_bench(config, Path(args.pcap) if args.pcap else None,
                           adversarial=args.adversarial, packets=args.packets, rounds=args.rounds)
    print(json.dumps(report, indent=2) if args.json else report["summary"])
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    cmd, api = args.canary_cmd, _api(args)
    if api is not None:
        body = ({**_policy_body(args.config), "share": args.share, "src": args.src}
                if cmd == "start" else {})
        answer = api.call("GET", "/canary") if cmd == "status" else api.call("POST", f"/canary/{cmd}", body)
        result = answer if cmd == "status" else _as_result(answer)
    else:
        with _netns(args):
            result = _canary_direct(args)
    if cmd == "status":
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            _print_canary(result)
        return 0
    _recovered(result.recovered)
    if cmd == "start":
        print(f"canary on {args.iface}: {result.why}")
        _notes(result)
    elif cmd == "promote":
        print(f"canary on {args.iface} promoted: revision {result.revision} in force for all traffic")
    else:
        print(f"canary on {args.iface} aborted: revision {result.revision} in force for all traffic")
    return 0


def _canary_direct(args: argparse.Namespace) -> Any:
    from types import SimpleNamespace

    from ..engine import canary
    if args.canary_cmd == "start":
        arm, label = canary.arm_of(args.share, args.src)
        args.allow_empty = False
        return canary.start(args.iface, _proposal(args, "canary"), arm, label)
    if args.canary_cmd == "promote":
        return canary.promote(args.iface)
    if args.canary_cmd == "abort":
        back, recovered = canary.abort(args.iface)
        return SimpleNamespace(revision=back, recovered=recovered)
    return canary.status(args.iface)


def _print_canary(report: dict) -> None:
    arms = report["arms"]
    names = list(arms)
    print(f"canary on {report['iface']}: {report['arm']}")
    print(f"{'':<28}" + "".join(f"{n + ' (rev ' + str(arms[n]['revision']) + ')':>22}" for n in names))
    share = [f"{a['share'] * 100:.1f}%" if a["share"] is not None else "-" for a in arms.values()]
    print(f"{'packets':<28}" + "".join(f"{a['packets']:>22,}" for a in arms.values()))
    print(f"{'share':<28}" + "".join(f"{s:>22}" for s in share))
    for title, key in (("verdicts", "verdicts"), ("rule hits", "rules")):
        rows = sorted({k for a in arms.values() for k, n in a[key].items() if n})
        if rows:
            print(title)
        for row in rows:
            print(f"  {row:<26}" + "".join(f"{a[key].get(row, 0):>22,}" for a in arms.values()))


def cmd_set(args: argparse.Namespace) -> int:
    from .liveset import run
    api = _api(args) if args.set_cmd != "apply" else None
    if api is not None:
        return run(args, api)
    with _netns(args):
        return run(args)


def cmd_blocks(args: argparse.Namespace) -> int:
    from .blocks import run
    api = _api(args)
    if api is not None:
        return run(args, api)
    with _netns(args):
        return run(args)


def cmd_events(args: argparse.Namespace) -> int:
    from .events import run_events
    with _netns(args):
        return run_events(args)


def cmd_capture(args: argparse.Namespace) -> int:
    from .events import run_capture
    with _netns(args):
        return run_capture(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run
    return run(args)


def _name(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type that refuses what is not a name (check_ifname, check_netns_name)."""
    def parse(text: str) -> str:
        try:
            return check(text)
        except BadName as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _positive(kind: type, what: str) -> Callable[[str], Any]:
    """An argparse type for a number above 0 (and finite)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive number of {what}, got {text!r}")
        return value
    return parse


def _attack_name(text: str) -> str:
    from ..lab.attacks import attack  # the lab's modules load only when an attack is asked for
    try:
        return attack(text).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shieldwall", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str,
                iface: bool | None = None, config: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(fn=fn)
        if iface is not None:
            p.add_argument("--iface", required=iface, type=_name(check_ifname),
                           help="network interface")
            p.add_argument("--netns", type=_name(check_netns_name),
                           help="named network namespace the interface lives in")
        if config:
            p.add_argument("--config", help="policy file (YAML); built-in defaults without it")
        return p

    def policy_change(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-empty", action="store_true",
                       help="without --config: attach no policy at all (every packet passes)")

    p = command("up", cmd_up, "attach shieldwall to an interface", iface=True, config=True)
    policy_change(p)
    p.add_argument("--mode", choices=["auto", *MODES], default="auto",
                   help="where to run: auto (the best this host can, falling back in order), "
                        + ", ".join(MODES) + " (docs/modes.md)")
    p.add_argument("--force", action="store_true", help="replace a foreign XDP program")
    p.add_argument("--revision", metavar="N|last",
                   help="apply a kept revision instead of a file (last: the one last in force)")
    p = command("reload", cmd_reload, "apply a new policy to an attached interface", iface=True,
                config=True)
    policy_change(p)
    p.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    p.add_argument("--drop-live", action="store_true",
                   help="drop the live set entries (shieldwall set) instead of keeping them")
    p = command("set", cmd_set, "live entries of the running policy's sets: add, del, list, apply")
    actions = p.add_subparsers(dest="set_cmd", required=True)

    def iface_action(actions: Any, name: str, help: str) -> argparse.ArgumentParser:
        a = actions.add_parser(name, help=help)
        a.add_argument("--iface", required=True, type=_name(check_ifname), help="network interface")
        a.add_argument("--netns", type=_name(check_netns_name),
                       help="named network namespace the interface lives in")
        a.add_argument("--json", action="store_true")
        return a

    for name, help in (("add", "add prefixes to a set"), ("del", "take live entries off a set")):
        a = iface_action(actions, name, help)
        a.add_argument("set", metavar="NAME", help="a set of the running policy")
        a.add_argument("prefixes", nargs="+", metavar="PREFIX")
        if name == "add":
            a.add_argument("--ttl", metavar="DURATION", help="the entries expire after 90s, 15m, 4h, 7d")
    a = iface_action(actions, "list", "the live entries, with the time they have left")
    a.add_argument("set", nargs="?", metavar="NAME")
    a = iface_action(actions, "apply", "a feed of decisions, one a line: add PREFIX [ttl=4h] [set=NAME], del PREFIX")
    a.add_argument("source", metavar="FILE", help="a file of decisions, - for standard input")
    a.add_argument("--set", dest="default_set", metavar="NAME", help="the set of lines that name none")
    p = command("blocks", cmd_blocks, "sources blocked by rate limits: list, del")
    actions = p.add_subparsers(dest="blocks_cmd", required=True)
    for name, help in (("list", "the blocks in force, with the time they have left"),
                       ("del", "lift blocks: the ones covering these prefixes or addresses")):
        a = iface_action(actions, name, help)
        if name == "del":
            a.add_argument("prefixes", nargs="*", metavar="PREFIX")
            a.add_argument("--all", action="store_true", help="every block in force")
    p = command("events", cmd_events, "sampled packet events: what was dropped, why, and its headers",
                iface=True)
    p.add_argument("--follow", "-f", action="store_true", help="show events as they come")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--reason", metavar="R", help="only this reason (docs/reasons.md)")
    p.add_argument("--rule", metavar="NAME", help="only this rule (its name or id)")
    p.add_argument("--action", choices=("drop", "pass"), help="only drops, or only sampled passes")
    p.add_argument("--seconds", type=_positive(float, "seconds"), metavar="S", help="stop after S seconds")
    p.add_argument("--count", type=_positive(int, "events"), metavar="N", help="stop after N events")
    p = command("capture", cmd_capture, "sampled dropped frames (their first bytes) into a pcap",
                iface=True)
    p.add_argument("--pcap", required=True, metavar="FILE", help="the capture file to write")
    p.add_argument("--reason", metavar="R", help="only this reason")
    p.add_argument("--rule", metavar="NAME", help="only this rule (its name or id)")
    p.add_argument("--action", choices=("drop", "pass"), default="drop",
                   help="dropped frames (default), or sampled passed ones")
    p.add_argument("--seconds", type=_positive(float, "seconds"), default=10.0, metavar="S",
                   help="how long to capture (default 10)")
    p.add_argument("--count", type=_positive(int, "frames"), metavar="N", help="stop after N frames")
    p = command("canary", cmd_canary, "try a new policy on a share of the traffic: start, status, promote, abort")
    actions = p.add_subparsers(dest="canary_cmd", required=True)
    for name, help in (("start", "run NEW.yaml for a share of flows or for a source prefix"),
                       ("status", "both arms side by side"),
                       ("promote", "the canary's policy for all traffic"),
                       ("abort", "back to the policy in force, for all traffic")):
        a = actions.add_parser(name, help=help)
        a.add_argument("--iface", required=True, type=_name(check_ifname), help="network interface")
        a.add_argument("--netns", type=_name(check_netns_name),
                       help="named network namespace the interface lives in")
        if name == "start":
            a.add_argument("--config", required=True, help="the canary's policy file")
            a.add_argument("--share", metavar="PERCENT", help="this share of flows, by a hash stable per flow")
            a.add_argument("--src", metavar="PREFIX", help="packets from sources in this prefix")
        if name == "status":
            a.add_argument("--json", action="store_true")
    p = command("rollback", cmd_rollback, "apply an earlier revision again", iface=True)
    p.add_argument("--to", type=int, metavar="REV", help="the revision (default: the one before)")
    p = command("history", cmd_history, "the revisions applied to an interface", iface=True)
    p.add_argument("--json", action="store_true")
    p = command("down", cmd_down, "detach shieldwall from an interface", iface=True)
    p.add_argument("--purge", action="store_true",
                   help="then remove the pins of interfaces and namespaces that are gone (gc)")
    command("gc", cmd_gc, "remove the pins of interfaces and namespaces that no longer exist")
    p = command("status", cmd_status, "what is attached, and its counters", iface=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--rules", action="store_true", help="per-rule counters of the policy")
    p = command("daemon", cmd_daemon, "run in the foreground (for systemd): adopt or attach, "
                "apply changes of the policy file, sweep expiries, serve metrics and the "
                "control API; protection outlives the process",
                iface=True, config=True)
    p.add_argument("--mode", choices=["auto", *MODES], default="auto",
                   help="the mode when nothing runs yet (what runs is adopted as it is)")
    p.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics here")
    p.add_argument("--api", nargs="?", const="", metavar="PATH",
                   help="serve the control API on this unix socket (without PATH: "
                        "/run/shieldwall/api/<scope>/<iface>.sock); the CLI then goes through it")
    p.add_argument("--api-group", metavar="GROUP",
                   help="let this group use the control API (socket 0660; root only without it)")
    p.set_defaults(config_required=True)
    p = command("metrics", cmd_metrics, "the counters status reads, as Prometheus metrics: "
                "printed once, or served with --listen", iface=False)
    p.add_argument("--listen", metavar="ADDR:PORT",
                   help="serve /metrics here until stopped (in --netns's namespace, if given)")
    p = command("doctor", cmd_doctor, "what this host, kernel and interface let shieldwall do, "
                "and the best mode", iface=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--record", metavar="FILE", help="also save the facts read as a profile")
    p.add_argument("--facts", metavar="FILE", help="judge a recorded profile instead of this host")
    p = command("check", cmd_check, "validate a policy and summarize it", config=True)
    p.set_defaults(config_required=True)
    p = command("verdict", cmd_verdict, "run a capture through the real pipeline offline", config=True)
    p.add_argument("--pcap", required=True)
    p.add_argument("--json", action="store_true")
    p = command("lab", cmd_lab, "the namespace lab")
    actions = p.add_subparsers(dest="lab_cmd", required=True)
    actions.add_parser("up", help="build the lab (or keep a healthy one) and show it")
    actions.add_parser("down", help="remove the lab")
    actions.add_parser("status", help="what exists of the lab")
    a = actions.add_parser("attack", help="flood the lab's server end at kernel speed, for a bounded time")
    a.add_argument("name", metavar="NAME", type=_attack_name,
                   help="syn, syn-spoofed, syn-cookie-replay, ack, udp, heavy, slow, icmp, "
                        "icmp-flood, fragments, mixed, dns-amplification, ntp-amplification "
                        "or memcached-amplification")
    a.add_argument("--rate", type=_positive(int, "packets per second"), metavar="PPS",
                   help="frames a second (default: as fast as the generator goes)")
    a.add_argument("--seconds", type=_positive(float, "seconds"), default=10.0, metavar="S",
                   help="how long the attack runs (default 10, at most 600)")
    command("demo", cmd_demo, "build the lab, attack it, show shieldwall at work, clean up")
    p = command("bench", cmd_bench, "measure the pipeline against bare XDP_DROP", config=True)
    p.add_argument("--pcap")
    p.add_argument("--packets", type=int, default=2_000_000, help="frames per veth run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per measurement; the best is kept")
    p.add_argument("--adversarial", action="store_true",
                   help="every frame rewritten: traffic no cache absorbs")
    p.add_argument("--scaling", action="store_true",
                   help="cost as rules grow 10 -> 10k and sets 1 -> 1M prefixes")
    p.add_argument("--live", action="store_true",
                   help="live set entries on a 1M-address set: set add latency, feed rate, per-packet cost")
    p.add_argument("--limits", action="store_true",
                   help="rate limits: per-packet cost, known sources under a random flood, accuracy")
    p.add_argument("--icmp", action="store_true",
                   help="the icmp stage: per-packet cost on an echo flood and a forged-error flood")
    p.add_argument("--reflection", action="store_true",
                   help="the reflection stage: per-packet cost on a reflected DNS flood")
    p.add_argument("--syn", action="store_true",
                   help="SYN-ACKs from XDP (cookie and auth mode) next to bare XDP_DROP; "
                        "a million forged ACKs against the cookie check")
    p.add_argument("--modes", action="store_true",
                   help="the policy attached in each mode (native, generic, tc, nft) under the "
                        "same flood: each mode's Mpps next to bare XDP_DROP")
    p.add_argument("--events", action="store_true",
                   help="what sampled events cost: the default flood with events off, on, "
                        "with passes sampled, and with the largest budget, next to bare XDP_DROP")
    p.add_argument("--scenarios", action="store_true",
                   help="every attack scenario without protection, with shieldwall and with peers, "
                        "while a real client uses the server")
    p.add_argument("--seconds", type=_positive(float, "seconds"), metavar="S",
                   help="--scenarios: how long each attack runs (default 5)")
    p.add_argument("--rate", type=_positive(int, "packets per second"), metavar="PPS",
                   help="--scenarios: the attacks' frames a second (default: as fast as the "
                        "generator goes, which depends on what the receiver costs)")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            # Here, not at exit: output still buffered meets a closed pipe
            # (`shieldwall status | head -1`) where it can be handled; the interpreter's
            # last flush would print a traceback-like complaint and exit 120.
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader has all it wanted. What is left in the buffer goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(argv: list[str] | None) -> int:
    from ..ops.client import ApiFailure
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ApiFailure as exc:
        print(f"shieldwall: {exc}", file=sys.stderr)
        return exc.exit
    except VerifierError as exc:
        print(f"shieldwall: {exc.what}: {exc.strerror.splitlines()[0]}", file=sys.stderr)
        print("verifier log (end):\n" + exc.detail, file=sys.stderr)
        return 3
    except BrokenPipeError:
        raise
    except (BpfError, OSError, ValueError, RuntimeError, PcapError, PolicyError, LabError,
            NamespaceError) as exc:
        print(f"shieldwall: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so in one line, never with a traceback
        if os.environ.get("SHIELDWALL_DEBUG"):
            raise
        print(f"shieldwall: internal error ({type(exc).__name__}: {exc}); "
              "run again with SHIELDWALL_DEBUG=1 for the details", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
