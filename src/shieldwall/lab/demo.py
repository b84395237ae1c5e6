"""`shieldwall demo` (make demo): the lab, a real service, an attack, shieldwall at work.

Runs on built-in defaults, bounded in time and packets, and always cleans up.
"""

from __future__ import annotations

import threading
import time
from ipaddress import ip_network
from pathlib import Path
from tempfile import TemporaryDirectory

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from ..config import load_config
from ..doctor import LiveFacts, examine
from ..engine import lifecycle, livesets
from . import topology
from .attacks import attack, run_attack
from .probes import tcp_connect, tcp_counters
from .servers import start_tcp_server
from ..kernel.netns import enter_netns
from .traffic import IPV4_SRC_OFFSET, SPOOFED_V4, syn_flood_v4
from .trafgen import TrafficGenerator

PORT = 80
FLOOD_PACKETS = 1_000_000
HEAVY_PACKETS = 200_000
SYN_FLOOD_SECONDS = 2.0

# The demo's policy: a spoofed range and a live blocklist in the fastpath, SYNs to the
# web server answered with SYN cookies from XDP, the attacker's address and any port but
# the web server's refused by rules, UDP held to a rate per source (over it, the source
# is blocked for a while), everything else passed.
POLICY = f"""\
version: 1
default_action: pass
sets:
  blocklist: {{type: prefix, entries: []}}   # filled live: shieldwall set add
fastpath:
  deny: [{SPOOFED_V4}, "@blocklist"]
protect:
  syn: {{ports: [{PORT}], mode: cookie}}
limits:
  udp-per-source: {{per: source, pps: 1000, burst: 200, block: 10s}}
rules:
  - name: drop-attacker
    match: {{src: [192.0.2.66, "2001:db8:0:1::66"]}}
    action: drop
  - name: web
    match: {{proto: tcp, dport: {PORT}}}
    action: pass
  - name: udp
    match: {{proto: udp}}
    action: {{limit: udp-per-source}}
  - name: only-web-over-tcp
    match: {{proto: tcp}}
    action: drop
"""


def _say(text: str) -> None:
    print(text, flush=True)


def _check(what: str, got: bool, want: bool) -> bool:
    mark = "ok " if got == want else "FAIL"
    _say(f"  [{mark}] {what}: {'reached' if got else 'blocked'}")
    return got == want


def _syn_flood(topo: topology.LabTopology) -> bool:
    """A spoofed SYN flood with a real stack's options at the web port: each SYN is
    answered from XDP with a cookie; the client's handshakes go through the cookie path
    while it lasts, and nothing of the flood reaches the server's listen queue."""
    a = attack("syn-spoofed")
    _say(f"SYN flood: {a.what}, {SYN_FLOOD_SECONDS:g} s at full rate")
    before = tcp_counters(topo.server_ns)
    sent: list = []
    flood = threading.Thread(target=lambda: sent.append(run_attack(a, topo, SYN_FLOOD_SECONDS)))
    flood.start()
    time.sleep(0.3)
    # A SYN-ACK lost on the two loaded CPUs is sent again: the client's own TCP
    # retransmits its SYN after a second.
    tries = [tcp_connect(topo, PORT, timeout=3.0) for _ in range(5)]
    flood.join()
    after = tcp_counters(topo.server_ns)
    if sent:
        _say(f"  sent {sent[0].sent:,} frames ({sent[0].mpps:.2f} Mpps)")
    with enter_netns(topo.server_ns):
        report = lifecycle.status(topo.server_if)[0]
    answered = sum(c["packets"] for c in report["counters"] if c["reason"] == "syn_cookie")
    # SYNPROXY opens each proxied connection with a SYN of its own to the server, which
    # answers it with a cookie (tcp_syncookies=2): one per client connection, none per
    # flood SYN.
    reached = {k: after[k] - before[k] for k in ("SyncookiesSent", "ListenOverflows", "ListenDrops")}
    _say(f"  {answered:,} SYNs answered with a cookie from XDP (tx syn_cookie); the server's "
         "listen queue saw " + ", ".join(f"{k} {n}" for k, n in reached.items())
         + f" (the client's {sum(tries)} connections)")
    ok = _check(f"client -> server during it ({sum(tries)} of {len(tries)} connects)",
                all(tries), True)
    return ok and reached["SyncookiesSent"] <= len(tries) and not (
        reached["ListenOverflows"] or reached["ListenDrops"])


def _sampled(topo: topology.LabTopology) -> bool:
    """A few of the flood's sampled events, as `shieldwall events` shows them."""
    from ..cli.events import line
    from ..ops.events import EventStream
    with enter_netns(topo.server_ns), EventStream(topo.server_if) as stream:
        events = [e for e in stream.poll(0.5) if e.reason == "blocklisted"]
        counted = lifecycle.status(topo.server_if)[0]["events"]
    _say(f"sampled events (shieldwall events): {counted['drops_sent']:,} sent, "
         f"{counted['drops_refused']:,} refused by the data plane's budget; the first of the flood:")
    for ev in events[:3]:
        _say(f"  {line(ev)}")
    spoofed = ip_network(SPOOFED_V4)
    named = bool(events) and all(ip_network(e.src).subnet_of(spoofed) for e in events)
    _say(f"  [{'ok ' if named else 'FAIL'}] the events name the flood's sources")
    return named


def run_demo() -> int:
    with TemporaryDirectory() as tmp:
        policy = Path(tmp) / "demo.yaml"
        policy.write_text(POLICY)
        return _run(lifecycle.proposal(load_config(policy), policy, "up"))


def _run(change: lifecycle.Proposal) -> int:
    ok = True
    with topology.lab() as topo:
        _say(f"lab: {topo.outside_ns} (client {topo.client_v4}, attacker {topo.attacker_v4}) "
             f"<-> {topo.server_ns} (server {topo.server_v4}, {topo.server_v6})")
        with start_tcp_server(topo, PORT):
            _say("before shieldwall:")
            ok &= _check("client -> server", tcp_connect(topo, PORT), True)
            ok &= _check("attacker -> server", tcp_connect(topo, PORT, src=topo.attacker_v4), True)

            with enter_netns(topo.server_ns):
                doctor = examine(topo.server_if, LiveFacts(steal_seconds=0))
                _say(f"shieldwall doctor: {doctor.summary}")
                result = lifecycle.up(topo.server_if, change, mode="auto")
            if result.mode != doctor.best_mode:
                _say(f"  [FAIL] up --mode auto took {result.mode}, not the doctor's {doctor.best_mode}")
                ok = False
            _say(f"shieldwall up on {topo.server_if}: {result.mode} mode\n  why: {result.why}\n"
                 "  policy:\n" + "".join(f"    {line}\n" for line in POLICY.splitlines()).rstrip())
            try:
                ok &= _check("client -> server", tcp_connect(topo, PORT), True)
                ok &= _check("client -> server over IPv6",
                             tcp_connect(topo, PORT, dst=topo.server_v6), True)
                ok &= _check("attacker -> server",
                             tcp_connect(topo, PORT, src=topo.attacker_v4), False)
                with start_tcp_server(topo, PORT + 1):
                    ok &= _check("client -> another port",
                                 tcp_connect(topo, PORT + 1, timeout=0.5), False)

                _say(f"flood: {FLOOD_PACKETS:,} spoofed SYNs from {SPOOFED_V4} at kernel speed")
                template = syn_flood_v4(topo.server_mac, topo.outside_mac, topo.server_v4)
                with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
                    sent = gen.send(template, FLOOD_PACKETS, spread_sources=250,
                                    src_offset=IPV4_SRC_OFFSET)
                _say(f"  sent {sent.sent:,} frames in {sent.seconds:.2f} s ({sent.mpps:.2f} Mpps)")
                ok &= _check("client -> server during the attack", tcp_connect(topo, PORT), True)
                ok &= _sampled(topo)

                ok &= _syn_flood(topo)

                heavy = "203.0.113.7"
                _say(f"heavy hitter: {HEAVY_PACKETS:,} UDP frames from {heavy} alone")
                frame = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                              / IP(src=heavy, dst=topo.server_v4) / UDP(sport=4000, dport=53))
                with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
                    gen.send(frame, HEAVY_PACKETS)
                with enter_netns(topo.server_ns):
                    limit = lifecycle.status(topo.server_if)[0].get("stages", {}).get("limit", {})
                counts = limit.get("limits", {}).get("udp-per-source", {})
                _say(f"  {counts.get('passed', 0):,} passed (its burst), {counts.get('limited', 0):,} "
                     f"rate-limited, then blocked: {limit.get('blocks', 0)} block in force "
                     "(shieldwall blocks list)")
                ok &= _check("client -> server during it", tcp_connect(topo, PORT), True)

                ttl = 2
                _say(f"live entry: shieldwall set add blocklist {topo.client_v4} --ttl {ttl}s")
                with enter_netns(topo.server_ns):
                    done = livesets.change(topo.server_if, [livesets.Decision(
                        "add", "blocklist", ip_network(topo.client_v4), time.time() + ttl)])
                _say(f"  in force {'in place' if done.in_place else 'by a new generation'} "
                     f"in {done.seconds * 1000:.0f} ms")
                ok &= _check("client -> server", tcp_connect(topo, PORT, timeout=0.5), False)
                time.sleep(ttl + 0.2)
                ok &= _check(f"client -> server once the {ttl} s TTL ran out",
                             tcp_connect(topo, PORT), True)

                with enter_netns(topo.server_ns):
                    report = lifecycle.status(topo.server_if)[0]
                _say("what shieldwall decided (shieldwall status):")
                for c in report["counters"]:
                    _say(f"  {c['action']:>6} {c['reason']:<14} {c['packets']:>10,} packets")
                _say("per rule (shieldwall status --rules):")
                for rule in report["rules"]:
                    _say(f"  {rule['name'] or '(default action)':<18} {rule['packets']:>10,} packets")
            finally:
                with enter_netns(topo.server_ns):
                    lifecycle.down(topo.server_if, forget=True)
                _say("shieldwall down")
    _say("lab removed" + ("" if ok else "; SOME CHECKS FAILED"))
    return 0 if ok else 1
