"""`shieldwall bench --scaling`: how the per-packet cost grows with the ruleset (10 to
10,000 rules) and with an address set (1 to 1,000,000 prefixes).

Each point runs a packet through the whole pipeline (root, fastpath, policy) with
BPF_PROG_TEST_RUN. For rules, the packet is one that only the last rule decides, the
worst case of first-match order: once with its decision in the per-CPU cache (the steady
state of a flood), once with nine `count` rules in front so nothing can be cached and
every packet walks the bit vectors (the worst case an attacker can force).
"""

from __future__ import annotations

import time
from pathlib import Path
from tempfile import TemporaryDirectory

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from .. import abi
from ..dataplane.pipeline import Pipeline, PipelineConfig, one_cpu
from ..kernel.testrun import prog_test_run
from ..policy import Capacity, load_policy, parse_policy
from ..policy.compile import compile_policy

RULE_COUNTS = (10, 100, 1_000, 10_000)
SET_SIZES = (1, 1_000, 100_000, 1_000_000)
REPEAT = 200_000
MAC_SRC, MAC_DST = "02:00:00:00:00:02", "02:00:00:00:00:01"
CAPACITY = Capacity(rules=abi.SW_POL_MAX_RULES)


def _rules_policy(count: int, uncacheable: bool):
    counting = [{"name": f"c{i}", "action": "count", "match": {"proto": "tcp"}}
                for i in range(9 if uncacheable else 0)]
    rules = [{"name": f"r{i}", "action": "drop",
              "match": {"src": f"198.51.100.{i % 256}", "proto": "tcp", "dport": i % 65536}}
             for i in range(count)]
    return parse_policy({"version": 1, "default_action": "pass", "rules": counting + rules},
                        "scaling.yaml", ".", CAPACITY)


def _set_policy(size: int, directory: Path):
    # Addresses 2001:db8::a:b, one per line, as a blocklist file would hold them.
    (directory / "set.txt").write_text("".join(f"2001:db8::{i >> 16:x}:{i & 0xffff:x}\n"
                                               for i in range(size)))
    (directory / "policy.yaml").write_text(
        "version: 1\ndefault_action: pass\nsets:\n  big: {type: prefix, files: [set.txt]}\n"
        "rules:\n  - {name: big, action: drop, match: {src: '@big'}}\n")
    return load_policy(directory / "policy.yaml")


def _ns(pipeline: Pipeline, frame: bytes) -> float:
    prog_test_run(pipeline.root_program.fd, frame)  # the miss that fills the cache
    return prog_test_run(pipeline.root_program.fd, frame, REPEAT).duration_ns


def _apply(pipeline: Pipeline, policy) -> float:
    start = time.monotonic()
    pipeline.apply(PipelineConfig(policy_image=compile_policy(policy)))
    return time.monotonic() - start


def run_scaling() -> dict:
    rules, sets = {}, {}
    with one_cpu() as cpu, Pipeline.load(PipelineConfig()) as pipeline:
        for count in RULE_COUNTS:
            last = count - 1
            frame = bytes(Ether(src=MAC_SRC, dst=MAC_DST)
                          / IP(src=f"198.51.100.{last % 256}", dst="192.0.2.1")
                          / TCP(dport=last % 65536))
            point = {}
            for kind, uncacheable in (("cached", False), ("walked", True)):
                policy = _rules_policy(count, uncacheable)
                point["install_seconds"] = round(_apply(pipeline, policy), 2)
                if pipeline.run(frame, cpu).rule_id != len(policy.rules):
                    raise RuntimeError(f"{count} rules: the last rule did not decide")
                point[f"{kind}_ns"] = round(_ns(pipeline, frame), 1)
            rules[count] = point
        for size in SET_SIZES:
            with TemporaryDirectory() as tmp:
                start = time.monotonic()
                policy = _set_policy(size, Path(tmp))
                load = time.monotonic() - start
            install = _apply(pipeline, policy)
            last = size - 1
            frame = bytes(Ether(src=MAC_SRC, dst=MAC_DST)
                          / IPv6(src=f"2001:db8::{last >> 16:x}:{last & 0xffff:x}", dst="2001:db8::1")
                          / TCP(dport=80))
            if pipeline.run(frame, cpu).action != "drop":
                raise RuntimeError(f"{size}-prefix set: its last address was not dropped")
            sets[size] = {"ns": round(_ns(pipeline, frame), 1), "load_seconds": round(load, 2),
                          "install_seconds": round(install, 2)}
        pipeline.apply(PipelineConfig())
        no_policy = _ns(pipeline, frame)
    first, last = RULE_COUNTS[0], RULE_COUNTS[-1]
    report = {
        "rules": rules,
        "sets": sets,
        "no_policy_ns": round(no_policy, 1),
        "rules_ratio": round(rules[last]["cached_ns"] / rules[first]["cached_ns"], 3),
        "rules_ratio_walked": round(rules[last]["walked_ns"] / rules[first]["walked_ns"], 3),
        "sets_ratio": round(sets[SET_SIZES[-1]]["ns"] / sets[SET_SIZES[0]]["ns"], 3),
    }
    lines = [f"{'rules':>8} {'cached ns':>10} {'walked ns':>10} {'install s':>10}"]
    lines += [f"{n:>8} {p['cached_ns']:>10} {p['walked_ns']:>10} {p['install_seconds']:>10}"
              for n, p in rules.items()]
    lines.append(f"{last:,} rules cost x{report['rules_ratio']} of {first} (cached), "
                 f"x{report['rules_ratio_walked']} (walked)")
    lines.append(f"{'prefixes':>8} {'ns':>10} {'load s':>10} {'install s':>10}")
    lines += [f"{n:>8} {p['ns']:>10} {p['load_seconds']:>10} {p['install_seconds']:>10}"
              for n, p in sets.items()]
    lines.append(f"no policy: {report['no_policy_ns']} ns")
    report["summary"] = "\n".join(lines)
    return report
