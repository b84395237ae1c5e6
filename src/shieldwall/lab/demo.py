"""`shieldwall demo` (make demo): the lab, a real service, an attack, shieldwall at work.

Runs on built-in defaults, bounded in time and packets, and always cleans up.
"""

from __future__ import annotations

import ipaddress

from ..dataplane.pipeline import PipelineConfig
from ..engine import lifecycle
from . import topology
from .netns import enter_netns
from .traffic import IPV4_SRC_OFFSET, SPOOFED_V4, syn_flood_v4
from .trafgen import TrafficGenerator

PORT = 8080
FLOOD_PACKETS = 1_000_000


def _say(text: str) -> None:
    print(text, flush=True)


def _check(what: str, got: bool, want: bool) -> bool:
    mark = "ok " if got == want else "FAIL"
    _say(f"  [{mark}] {what}: {'reached' if got else 'blocked'}")
    return got == want


def run_demo() -> int:
    config = PipelineConfig(fastpath_deny=(ipaddress.ip_network(SPOOFED_V4),
                                           ipaddress.ip_network("192.0.2.66/32")))
    ok = True
    with topology.lab() as topo:
        _say(f"lab: {topo.outside_ns} (client {topo.client_v4}, attacker {topo.attacker_v4}) "
             f"<-> {topo.server_ns} (server {topo.server_v4}, {topo.server_v6})")
        with topology.start_tcp_server(topo, PORT):
            _say("before shieldwall:")
            ok &= _check("client -> server", topology.tcp_connect(topo, PORT), True)
            ok &= _check("attacker -> server", topology.tcp_connect(topo, PORT, src=topo.attacker_v4), True)

            with enter_netns(topo.server_ns):
                result = lifecycle.up(topo.server_if, config, mode="native")
            _say(f"shieldwall up on {topo.server_if}: {result.mode} mode, blocking "
                 f"{SPOOFED_V4} and {topo.attacker_v4}\n  why: {result.why}")
            try:
                ok &= _check("client -> server", topology.tcp_connect(topo, PORT), True)
                ok &= _check("client -> server over IPv6",
                             topology.tcp_connect(topo, PORT, dst=topo.server_v6), True)
                ok &= _check("attacker -> server",
                             topology.tcp_connect(topo, PORT, src=topo.attacker_v4), False)

                _say(f"flood: {FLOOD_PACKETS:,} spoofed SYNs from {SPOOFED_V4} at kernel speed")
                template = syn_flood_v4(topo.server_mac, topo.outside_mac, topo.server_v4)
                with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
                    sent = gen.send(template, FLOOD_PACKETS, spread_sources=250,
                                    src_offset=IPV4_SRC_OFFSET)
                _say(f"  sent {sent.sent:,} frames in {sent.seconds:.2f} s ({sent.mpps:.2f} Mpps)")
                ok &= _check("client -> server during the attack", topology.tcp_connect(topo, PORT), True)

                with enter_netns(topo.server_ns):
                    report = lifecycle.status(topo.server_if)[0]
                _say("what shieldwall decided (shieldwall status):")
                for c in report["counters"]:
                    _say(f"  {c['action']:>6} {c['reason']:<14} {c['packets']:>10,} packets")
            finally:
                with enter_netns(topo.server_ns):
                    lifecycle.down(topo.server_if)
                _say("shieldwall down")
    _say("lab removed" + ("" if ok else "; SOME CHECKS FAILED"))
    return 0 if ok else 1
