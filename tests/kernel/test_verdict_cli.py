"""`shieldwall verdict --json` on a capture that mixes what real captures hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.utils import PcapNgWriter

from shieldwall.pcapio import write_pcap

from .packets import ARP, TCP, UDP, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, eth, v4, v6

pytestmark = pytest.mark.kernel

POLICY = """\
version: 1
default_action: pass
fastpath:
  allow: [203.0.113.7]
  deny: [198.51.100.0/24, "2001:db8:bad::/48"]
"""

# (frame, action, reason, module)
CAPTURE = [
    (eth() / v4(src="192.0.2.9") / TCP(dport=443), "pass", "default", "policy"),
    (eth() / v4() / TCP(dport=22, flags="S"), "drop", "blocklisted", "fastpath"),
    (eth() / v4(src="203.0.113.7") / UDP(), "pass", "allowlisted", "fastpath"),
    (eth() / v6(src="2001:db8:bad::1") / UDP(dport=53), "drop", "blocklisted", "fastpath"),
    (eth() / v6(src="2001:db8:1::1") / IPv6ExtHdrHopByHop() / TCP(), "pass", "default", "policy"),
    (eth(("q", 7)) / v4(src="198.51.100.3") / UDP(), "drop", "blocklisted", "fastpath"),
    (eth(("ad", 100), ("q", 7)) / v6(src="2001:db8:1::5") / UDP(), "pass", "default", "policy"),
    (eth() / v4(src="192.0.2.9", frag=50) / (b"x" * 100), "pass", "default", "policy"),
    (eth() / v6(src="2001:db8:bad::9") / IPv6ExtHdrFragment(offset=30) / (b"y" * 80),
     "drop", "blocklisted", "fastpath"),
    (eth() / ARP(), "pass", "non_ip", "root"),
    (bytes(eth() / v4() / TCP())[:25], "drop", "truncated_ipv4", "root"),
    (bytes(eth() / v6() / TCP())[:40], "drop", "truncated_ipv6", "root"),
    (bytes(eth() / v6() / TCP())[:60], "drop", "bad_ipv6_length", "root"),
    (b"\x02" * 9, "drop", "truncated_eth", "root"),  # a runt
    (eth() / v4(src="192.0.2.9") / UDP() / (b"j" * 8950), "pass", "default", "policy"),  # jumbo
    (eth() / v4(src="192.0.2.9", ihl=4) / TCP(), "drop", "bad_ipv4_header", "root"),
]


KEYS = {"index", "action", "reason", "rule", "module"}


def run_verdict(pcap: Path, policy: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "shieldwall", "verdict", "--config", str(policy),
                          "--pcap", str(pcap), "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture()
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def test_one_correct_line_per_packet_of_a_pcap(tmp_path: Path, policy: Path):
    pcap = tmp_path / "mix.pcap"
    write_pcap(pcap, [bytes(frame) for frame, *_ in CAPTURE])
    lines = run_verdict(pcap, policy)
    assert [line["index"] for line in lines] == list(range(len(CAPTURE)))
    for line, (frame, action, reason, module) in zip(lines, CAPTURE):
        assert (line["action"], line["reason"], line["module"]) == (action, reason, module), line
        assert line["rule"] is None
        # Exactly the documented keys; a frame no driver would hand to XDP says why.
        runt = len(bytes(frame)) < 14
        assert set(line) == KEYS | ({"note"} if runt else set()), line


def test_pcapng_gives_the_same_verdicts(tmp_path: Path, policy: Path):
    pcap, pcapng = tmp_path / "mix.pcap", tmp_path / "mix.pcapng"
    frames = [bytes(frame) for frame, *_ in CAPTURE if len(bytes(frame)) >= 14]
    write_pcap(pcap, frames)
    with PcapNgWriter(str(pcapng)) as writer:
        for f in frames:
            writer.write(f)
    assert run_verdict(pcap, policy) == run_verdict(pcapng, policy)


RULES = """\
version: 1
default_action: drop
sets:
  bad: {type: prefix, entries: ["2001:db8:bad::/48", 198.51.100.0/24]}
rules:
  - name: allow-admin
    match: {src: [203.0.113.7], proto: tcp, dport: 22}
    action: pass
  - name: drop-bad
    match: {src: "@bad"}
    action: drop
  - name: watch-dns
    match: {proto: udp, sport: 53}
    action: count
  - name: web
    match: {proto: tcp, dport: [80, 443]}
    action: pass
"""


def test_verdict_names_the_deciding_rule(tmp_path: Path):
    policy = tmp_path / "rules.yaml"
    policy.write_text(RULES)
    capture = [
        (eth() / v4(src="203.0.113.7") / TCP(dport=22), "pass", "rule", "allow-admin"),
        (eth() / v4(src="198.51.100.9") / TCP(dport=22), "drop", "rule", "drop-bad"),
        (eth() / v6(src="2001:db8:bad::3") / UDP(sport=53), "drop", "rule", "drop-bad"),
        (eth(("q", 5)) / v4(src="192.0.2.50") / TCP(dport=443), "pass", "rule", "web"),
        (eth() / v4(src="192.0.2.50") / UDP(sport=53), "drop", "default", None),
        (eth() / ARP(), "pass", "non_ip", None),
    ]
    pcap = tmp_path / "rules.pcap"
    write_pcap(pcap, [bytes(frame) for frame, *_ in capture])
    lines = run_verdict(pcap, policy)
    assert [(l["action"], l["reason"], l["rule"]) for l in lines] == \
        [(action, reason, rule) for _, action, reason, rule in capture]
    assert {l["module"] for l in lines[:5]} == {"policy"}
