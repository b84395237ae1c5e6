"""Namespace tier: the reflection stage with real traffic. The protected host resolves
names against a real dnsmasq in the outside namespace while a DNS amplification flood
(spoofed resolvers, big replies, fragments) hits it at the generator's full rate: its
resolutions succeed, the flood is dropped with reason `reflection` and never reaches
its UDP stack. Spoofed replies with a wrong DNS id are dropped, `allow` lets a named
resolver in, and the per-reflector limit passes about its rate."""

from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from shieldwall.kernel import netns as kernel_netns
from shieldwall.lab.attacks import attack, run_attack
from shieldwall.lab.client import HostQueries, ntp_time, resolve
from shieldwall.lab.servers import (LAB_NAMES, NTP_V4, RESOLVER_V4, start_ntp_server,
                                    start_resolver)
from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import counter, server_status, shieldwall, silence_outside

pytestmark = pytest.mark.netns

HOST_PORT = 40053
FLOOD_SECONDS = 3.0


def up(topo, tmp_path, body: str = "{}", where: str = "native") -> None:
    policy = tmp_path / "reflection.yaml"
    policy.write_text("version: 1\ndefault_action: pass\n"
                      f"protect:\n  bogons: 'off'\n  reflection: {body}\n")
    done = shieldwall("up", "--mode", where, "--netns", topo.server_ns, "--iface",
                      topo.server_if, "--config", str(policy))
    assert done.returncode == 0, done.stderr


def udp_stack(netns: str) -> dict[str, int]:
    """What the namespace's UDP stack counted (IPv4 and IPv6 together)."""
    with kernel_netns.enter_netns(netns):
        with open("/proc/thread-self/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        with open("/proc/thread-self/net/snmp6") as f:
            v6 = dict(line.split() for line in f if line.startswith("Udp6"))
    v4 = dict(zip(rows[0][1:], map(int, rows[1][1:])))
    return {k: v4[k] + int(v6[f"Udp6{k}"]) for k in ("InDatagrams", "NoPorts", "InErrors")}


def dns_reply(topo, src: str, dport: int, qid: int) -> bytes:
    return bytes(Ether(src=topo.outside_mac, dst=topo.server_mac) / IP(src=src, dst=topo.server_v4)
                 / UDP(sport=53, dport=dport) / DNS(id=qid, qr=1, qd=DNSQR(qname="www.lab.example")))


def send(topo, frame: bytes, count: int):
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        return gen.send(frame, count)


def stage(report: dict) -> dict:
    return report["stages"]["reflection"]


@pytest.mark.parametrize("where", ["native", "tc"])
def test_the_hosts_resolutions_survive_a_dns_amplification_flood(lab, tmp_path, where):
    topo = lab
    with start_resolver(topo), start_ntp_server(topo):
        up(topo, tmp_path, where=where)
        name = next(iter(LAB_NAMES))
        with kernel_netns.enter_netns(topo.server_ns):
            assert resolve(RESOLVER_V4, name) == LAB_NAMES[name]
            assert ntp_time(NTP_V4) is not None
        base, stack = server_status(topo), udp_stack(topo.server_ns)
        with HostQueries(topo, FLOOD_SECONDS + 1, RESOLVER_V4, NTP_V4, list(LAB_NAMES),
                         kinds=("dns",)) as host:
            flood = run_attack(attack("dns-amplification"), topo, FLOOD_SECONDS)
            result = host.result()
        report, after = server_status(topo), udp_stack(topo.server_ns)
    assert result.requests > 50 and result.success >= 0.99, result
    dropped = sum(counter(report, "drop", r) - counter(base, "drop", r)
                  for r in ("reflection", "reflection_fragment"))
    # A busy veth drops some frames before XDP sees them: most, not all, are counted.
    assert dropped > 0.5 * flood.sent, (dropped, flood)
    assert stage(report)["matched"] - stage(base)["matched"] >= result.ok
    # None of the flood reached the UDP stack: without the stage every reflected datagram
    # would count as NoPorts (nobody listens on the ports it draws) or InErrors.
    grew = {k: after[k] - stack[k] for k in after}
    assert grew["NoPorts"] + grew["InErrors"] < 20, grew
    assert grew["InDatagrams"] <= result.requests + 20, (grew, result)


def test_wrong_ids_are_dropped_and_an_allowed_resolver_passes(lab, tmp_path):
    topo = lab
    up(topo, tmp_path, "{ttl: 60}")
    with kernel_netns.enter_netns(topo.server_ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.bind((topo.server_v4, HOST_PORT))
        query = bytes(DNS(id=0x4242, qd=DNSQR(qname="www.lab.example")))
        # Nobody answers at the client's address; the query is recorded all the same.
        # (Sent before the outside goes quiet: its ARP reply must come back.)
        sock.sendto(query, (topo.client_v4, 53))
        time.sleep(0.2)
        silence_outside(topo)
        base = server_status(topo)
        send(topo, dns_reply(topo, topo.client_v4, HOST_PORT, 0x4243), 1000)
        mid = server_status(topo)
        assert counter(mid, "drop", "reflection") - counter(base, "drop", "reflection") == 1000
        send(topo, dns_reply(topo, topo.client_v4, HOST_PORT, 0x4242), 10)
        report = server_status(topo)
        assert counter(report, "drop", "reflection") == counter(mid, "drop", "reflection")
        assert stage(report)["matched"] - stage(mid)["matched"] == 10
        sock.settimeout(1)
        assert DNS(sock.recv(2048)).id == 0x4242
    # A named resolver's unsolicited replies pass; another's do not.
    policy = tmp_path / "allow.yaml"
    policy.write_text("version: 1\ndefault_action: pass\nprotect:\n  bogons: 'off'\n"
                      "  reflection: {allow: [198.51.100.53]}\n")
    done = shieldwall("reload", "--netns", topo.server_ns, "--iface", topo.server_if,
                      "--config", str(policy))
    assert done.returncode == 0, done.stderr
    base = server_status(topo)
    send(topo, dns_reply(topo, "198.51.100.53", 40000, 7), 500)
    send(topo, dns_reply(topo, "198.51.100.54", 40000, 7), 500)
    report = server_status(topo)
    assert stage(report)["allowed"] - stage(base)["allowed"] == 500
    assert counter(report, "drop", "reflection") - counter(base, "drop", "reflection") == 500


def test_the_per_reflector_limit_passes_about_its_rate(lab, tmp_path):
    topo = lab
    pps, burst = 2000, 200
    up(topo, tmp_path, f"{{limit: {{pps: {pps}, burst: {burst}}}}}")
    silence_outside(topo)
    base = server_status(topo)
    start = time.monotonic()
    sent = send(topo, dns_reply(topo, "203.0.113.9", 40000, 9), 3_000_000)
    seconds = time.monotonic() - start
    report = server_status(topo)
    passed = stage(report)["passed_limit"] - stage(base)["passed_limit"]
    limited = counter(report, "drop", "reflector_limited") - counter(base, "drop", "reflector_limited")
    assert passed + limited <= sent.sent
    low, high = pps * sent.seconds + burst, pps * seconds + burst
    assert 0.9 * low <= passed <= 1.1 * high, (passed, sent, seconds)
    assert limited > 0.4 * sent.sent, (limited, sent)


def test_the_dns_amplification_scenario_end_to_end():
    from shieldwall.cli.scenariobench import DEFENSES, run_scenarios, summary
    from shieldwall.lab.scenarios import BY_NAME

    report = run_scenarios(2.0, scenarios=(BY_NAME["dns-amplification"],))
    (entry,) = report["scenarios"]
    assert entry["distinguishable"] and set(DEFENSES) <= set(entry)
    for defense in DEFENSES:
        assert entry[defense]["host_queries"] > 20, defense
    bare, sw = entry["unprotected"], entry["shieldwall"]
    # (A busy veth drops part of any flood before it: of 1,200-byte frames, up to half.)
    assert bare["server_stack_packets"] > bare["attack_frames"] // 4
    dropped = sum(sw["dropped"].get(r, 0) for r in ("reflection", "reflection_fragment", "zero_port"))
    assert dropped >= 0.8 * sw["attack_frames"], sw
    assert sw["server_stack_packets"] < 0.02 * sw["attack_frames"], sw
    assert sw["host_success"] >= 0.99 and sw["legit_success"] >= 0.9, sw
    # The peers' per-reflector limit: each spoofed reflector stays under it.
    for peer in ("nftables", "iptables"):
        assert entry[peer]["server_stack_packets"] > entry[peer]["attack_frames"] // 4, entry[peer]
    assert "the host's own DNS and NTP queries" in summary(report)


def test_both_egress_programs_run_beside_each_other_and_go_with_down(lab, tmp_path):
    """conntrack's and the reflection stage's TC egress programs, each on its link:
    the host's own query is recorded by both; `status` names both and its text the
    stage's counters; `down` leaves neither."""
    from shieldwall.kernel import libbpf, xdp

    topo = lab
    policy = tmp_path / "both.yaml"
    policy.write_text("version: 1\ndefault_action: drop\nprotect:\n  bogons: 'off'\n  reflection: {}\n"
                      "rules:\n  - {name: replies, match: {state: established}, action: pass}\n")
    done = shieldwall("up", "--mode", "native", "--netns", topo.server_ns, "--iface",
                      topo.server_if, "--config", str(policy))
    assert done.returncode == 0, done.stderr
    with kernel_netns.enter_netns(topo.server_ns):
        found = libbpf.tcx_egress_programs(xdp.ifindex(topo.server_if))
    report = server_status(topo)
    assert set(report["egress"]) == {"conntrack", "reflection"}
    assert sorted(report["egress"].values()) == sorted(found)
    with start_resolver(topo):
        with kernel_netns.enter_netns(topo.server_ns):
            # The reply passes both: the stage's match, then the rules' `established`.
            assert resolve(RESOLVER_V4, "www.lab.example") == LAB_NAMES["www.lab.example"]
    report = server_status(topo)
    assert stage(report)["queries"] >= 1 and stage(report)["matched"] >= 1
    text = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if).stdout
    assert "reflection: " in text and "replies matched" in text, text
    assert shieldwall("down", "--netns", topo.server_ns, "--iface", topo.server_if).returncode == 0
    with kernel_netns.enter_netns(topo.server_ns):
        assert libbpf.tcx_egress_programs(xdp.ifindex(topo.server_if)) == []
