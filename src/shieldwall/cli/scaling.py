"""`shieldwall bench --scaling`: how the per-packet cost grows with the ruleset (10 to
10,000 rules of the built-in realistic default-drop policy, lab/policies.py) and with an
address set (1 to 1,000,000 prefixes).

Each point is measured three ways, in one run, next to bare XDP_DROP; the rule counts
are loaded together and measured in the same interleaved rounds as bare, so their
ratios compare side-by-side runs:
- repeated: one packet that no rule decides, over and over (every table it touches
  stays in cache: the best case);
- adversarial: the generator's random traffic (every frame rewritten), programs only
  and in live-frames mode;
- adversarial on the veth path: Mpps reaching the filter.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from .. import abi
from ..config import configure
from ..dataplane.pipeline import Pipeline, PipelineConfig
from ..kernel.libbpf import BpfObject
from ..kernel.netns import enter_netns
from ..kernel.testrun import prog_test_run, prog_test_run_live
from ..lab import topology
from ..lab.policies import realistic
from ..lab.traffic import adversarial_templates
from ..lab.trafgen import TrafficGenerator
from ..paths import object_path
from ..policy import load_policy
from .bench import PROGRAM_PACKETS, ROUNDS, _Measure

RULE_COUNTS = (10, 100, 1_000, 10_000)
SET_SIZES = (1, 1_000, 100_000, 1_000_000)
REPEAT = 1_000_000


def _set_policy(size: int, directory: Path):
    # Addresses 2001:db8::a:b, one per line, as an allowlist file would hold them; the
    # random flood comes from elsewhere and is dropped by default, as it would be.
    (directory / "set.txt").write_text("".join(f"2001:db8::{i >> 16:x}:{i & 0xffff:x}\n"
                                               for i in range(size)))
    (directory / "policy.yaml").write_text(
        "version: 1\ndefault_action: drop\nsets:\n  big: {type: prefix, files: [set.txt]}\n"
        "rules:\n  - {name: big, action: pass, match: {src: '@big'}}\n")
    return load_policy(directory / "policy.yaml")


def _repeated(fd: int, frame: bytes) -> float:
    return min(prog_test_run(fd, frame, REPEAT).duration_ns for _ in range(ROUNDS))


def _repeated_all(fds: dict, frame: bytes, rounds: int) -> dict[str, dict[str, float]]:
    """One packet repeated, programs only and in live frames, every program in each
    round in turn; each program's best round."""
    out = {name: {"repeated_ns": float("inf"), "repeated_live_ns": float("inf")} for name in fds}
    for _ in range(rounds):
        for name, fd in fds.items():
            found = out[name]
            found["repeated_ns"] = min(found["repeated_ns"], prog_test_run(fd, frame, REPEAT).duration_ns)
            found["repeated_live_ns"] = min(found["repeated_live_ns"], prog_test_run_live(
                fd, frame, REPEAT, batch_size=64).duration_ns)
    return out


def run_scaling(packets: int = 2_000_000, rounds: int = ROUNDS) -> dict:
    with topology.lab() as topo:
        v4 = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                   / IP(src="203.0.113.250", dst=topo.server_v4) / TCP(sport=40000, dport=9, flags="S"))
        v6 = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                   / IPv6(src="2001:db8:ffff::1", dst=topo.server_v6) / TCP(dport=9, flags="S"))
        with enter_netns(topo.server_ns), BpfObject(object_path("bare_drop")) as bare, \
                TrafficGenerator(None, None) as chained, \
                TrafficGenerator(topo.outside_ns, topo.outside_if) as gen, ExitStack() as loaded:
            bare.load()
            for g in (chained, gen):
                g.random(adversarial_templates(topo.server_mac, topo.outside_mac,
                                               topo.server_v4, topo.server_v6))
            measure = _Measure(topo, chained, gen, rounds, PROGRAM_PACKETS, packets)
            bare_fd = bare.program("sw_bare_drop").fd
            # Every rule count is loaded at once and measured in the same rounds as bare.
            programs: dict = {"bare": (bare_fd, None)}
            points: dict = {"bare": {}}
            for count in RULE_COUNTS:
                start = time.monotonic()
                pipeline = loaded.enter_context(Pipeline.load(configure(
                    realistic(count, topo.server_v4, topo.server_v6))))
                points[count] = {"install_seconds": round(time.monotonic() - start, 2)}
                programs[count] = (pipeline.root_program.fd, pipeline)
            repeated = _repeated_all({name: fd for name, (fd, _) in programs.items()}, v4, rounds)
            for name, found in repeated.items():
                points[name].update({k: round(v, 1) for k, v in found.items()})
            for name, found in measure.many(programs).items():
                points[name].update(_rounded(found))
            bare_point = points.pop("bare")
            rules = points
            sets = {}
            for size in SET_SIZES:
                with TemporaryDirectory() as tmp:
                    start = time.monotonic()
                    policy = _set_policy(size, Path(tmp))
                    load = time.monotonic() - start
                start = time.monotonic()
                with Pipeline.load(configure(policy)) as pipeline:
                    install = time.monotonic() - start
                    fd = pipeline.root_program.fd
                    last = size - 1
                    hit = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                                / IPv6(src=f"2001:db8::{last >> 16:x}:{last & 0xffff:x}",
                                       dst=topo.server_v6) / TCP(dport=80))
                    if prog_test_run(fd, hit).retval != abi.SW_ACT_PASS:
                        raise RuntimeError(f"{size}-prefix set: its last address was not passed")
                    found = measure.many({"set": (fd, pipeline), "bare": (bare_fd, None)})
                    sets[size] = {"load_seconds": round(load, 2), "install_seconds": round(install, 2),
                                  "repeated_ns": round(_repeated(fd, hit), 1), **_rounded(found["set"]),
                                  "bare_adversarial_mpps": round(found["bare"]["mpps"], 3)}
            with Pipeline.load(PipelineConfig()) as pipeline:
                empty = round(_repeated(pipeline.root_program.fd, v6), 1)
    return _report(rules, sets, bare_point, empty)


def _rounded(found: dict) -> dict:
    return {"adversarial_ns": round(found["ns_per_packet"], 1),
            "adversarial_program_ns": round(found["program_ns_per_packet"], 1),
            "adversarial_mpps": round(found["mpps"], 3),
            **({"passed_fraction": found["passed_fraction"]} if "passed_fraction" in found else {})}


def _report(rules: dict, sets: dict, bare: dict, empty: float) -> dict:
    first, last = RULE_COUNTS[0], RULE_COUNTS[-1]
    ratio = lambda key: round(rules[last][key] / rules[first][key], 3)
    report = {
        "rules": rules,
        "sets": sets,
        "bare": bare,
        "no_policy_repeated_ns": empty,
        "rules_ratio_repeated": ratio("repeated_ns"),
        "repeated_live_of_bare": {n: round(p["repeated_live_ns"] / bare["repeated_live_ns"], 3)
                                  for n, p in rules.items()},
        "rules_ratio_adversarial": ratio("adversarial_ns"),
        "rules_ratio_adversarial_program": ratio("adversarial_program_ns"),
        "mpps_of_10_rules": round(rules[last]["adversarial_mpps"] / rules[first]["adversarial_mpps"], 3),
        "mpps_of_bare": round(rules[last]["adversarial_mpps"] / bare["adversarial_mpps"], 3),
    }
    head = (f"{'':>12} {'repeated':>9} {'rep. live':>9} {'adv. live':>10} {'adv. prog':>10} "
            f"{'adv. veth':>10} {'passed':>7} {'install':>8}")
    row = lambda name, p: (f"{name:>12} {p['repeated_ns']:>6} ns "
                           f"{p.get('repeated_live_ns', '-'):>6} ns {p['adversarial_ns']:>7} ns "
                           f"{p['adversarial_program_ns']:>7} ns {p['adversarial_mpps']:>5} Mpps "
                           f"{p.get('passed_fraction', 0):>7.1%} {p.get('install_seconds', 0):>6} s")
    lines = [head, row("bare", bare)]
    lines += [row(f"{n:,} rules", p) for n, p in rules.items()]
    lines.append("repeated packet, live frames, vs bare: " + ", ".join(
        f"{n:,} rules x{r}" for n, r in report["repeated_live_of_bare"].items()))
    lines.append(f"{last:,} rules cost x{report['rules_ratio_adversarial']} of {first} per packet "
                 f"(adversarial, live; x{report['rules_ratio_adversarial_program']} programs only); "
                 f"on veth {report['mpps_of_10_rules']:.0%} of the {first}-rule rate and "
                 f"{report['mpps_of_bare']:.0%} of bare")
    lines += [row(f"{n:,} pfx", p) + f" (read {p['load_seconds']} s)" for n, p in sets.items()]
    lines.append(f"root alone: {empty} ns repeated")
    report["summary"] = "\n".join(lines)
    return report
