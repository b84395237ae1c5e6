#!/usr/bin/env python3
"""What the policy stage costs per packet as its ruleset grows (docs/classifier.md).

For each rule count, a packet that only the last rule decides runs through the whole
pipeline (root, fastpath, policy) with BPF_PROG_TEST_RUN: once with its decision in the
cache, once with nine count rules in front of the rules so that no decision can be
cached and every packet walks the bitvectors. Run as root after `make build`:

    .venv/bin/python scripts/classifier-bench.py [rule counts...]
"""

from __future__ import annotations

import sys
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig, one_cpu
from shieldwall.kernel.testrun import prog_test_run
from shieldwall import abi
from shieldwall.policy import Capacity, parse_policy
from shieldwall.policy.compile import compile_policy

REPEAT = 200_000


def ruleset(count: int, uncacheable: bool):
    counting = [{"name": f"c{i}", "action": "count", "match": {"proto": "tcp"}}
                for i in range(9 if uncacheable else 0)]
    rules = [{"name": f"r{i}", "action": "drop",
              "match": {"src": f"198.51.100.{i % 256}", "proto": "tcp", "dport": i % 65536}}
             for i in range(count)]
    data = {"version": 1, "default_action": "pass", "rules": counting + rules}
    return parse_policy(data, "bench.yaml", ".", Capacity(rules=abi.SW_POL_MAX_RULES))


def ns_per_packet(pipeline: Pipeline, frame: bytes) -> float:
    prog_test_run(pipeline.root_program.fd, frame)  # the miss that fills the cache
    return prog_test_run(pipeline.root_program.fd, frame, REPEAT).duration_ns


def main(counts: list[int]) -> None:
    with one_cpu() as cpu, Pipeline.load(PipelineConfig()) as pipeline:
        print(f"{'rules':>6} {'compile+install':>16} {'cached':>8} {'walked':>8}  (ns/packet)")
        for count in counts:
            last = count - 1
            frame = bytes(Ether() / IP(src=f"198.51.100.{last % 256}", dst="192.0.2.1")
                          / TCP(dport=last % 65536))
            row = []
            for uncacheable in (False, True):
                policy = ruleset(count, uncacheable)
                start = time.monotonic()
                pipeline.apply(PipelineConfig(policy_image=compile_policy(policy)))
                setup = time.monotonic() - start
                assert pipeline.run(frame, cpu).rule_id == len(policy.rules)
                row.append(ns_per_packet(pipeline, frame))
            print(f"{count:>6} {setup:>15.2f}s {row[0]:>8.0f} {row[1]:>8.0f}")
        pipeline.apply(PipelineConfig())
        print(f"{'none':>6} {'':>16} {ns_per_packet(pipeline, frame):>8.0f}  (no policy)")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [10, 100, 1000, 10000])
