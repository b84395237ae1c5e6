"""Namespace tier: sampled events of a real flood, as `shieldwall events` shows them and
`shieldwall capture` writes them, in native and tc mode. The data plane's budget holds
under the flood: the reader gets at most `rate` events a second per CPU, and is told
how many it did not get."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from shieldwall.lab.trafgen import TrafficGenerator
from shieldwall.pcapio import read_frames

from ..helpers import attached, server_status, shieldwall

pytestmark = pytest.mark.netns

RATE = 40
POLICY = f"""\
version: 1
default_action: pass
events: {{rate: {RATE}}}
rules:
  - {{name: spoofed, match: {{src: [198.51.100.0/24]}}, action: drop}}
  - {{name: dns, match: {{proto: udp, dport: 53}}, action: pass}}
"""
FLOOD_SRC = "198.51.100.9"


@contextmanager
def _flooding(topo):
    """A flood from a blocked source until the block ends (bounded: 40 bursts)."""
    frame = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                  / IP(src=FLOOD_SRC, dst=topo.server_v4) / UDP(sport=4444, dport=53))
    done = threading.Event()

    def flood() -> None:
        with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            for _ in range(40):
                if done.is_set():
                    return
                gen.send(frame, 100_000)
    worker = threading.Thread(target=flood)
    worker.start()
    try:
        yield
    finally:
        done.set()
        worker.join()


def _run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shieldwall", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("mode", ["native", "tc"])
def test_events_of_a_flood_are_sampled_within_the_budget(lab, tmp_path, mode):
    topo = lab
    with attached(topo, POLICY, mode, tmp_path) as where:
        seconds = 3.0
        reader = _run("events", *where, "--follow", "--json", "--rule", "spoofed",
                      "--seconds", str(seconds))
        with _flooding(topo):
            out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0 and "Traceback" not in err, err
        events = [json.loads(line) for line in out.splitlines()]
        assert events, "no event reached the reader during the flood"
        # The budget: RATE a second per CPU, windows that straddle the run included.
        assert len(events) <= RATE * os.cpu_count() * (seconds + 2)
        assert {(e["action"], e["reason"], e["stage"], e["rule_name"], e["src"], e["dst"],
                 e["sport"], e["dport"], e["proto"]) for e in events} == \
            {("drop", "rule", "policy", "spoofed", FLOOD_SRC, topo.server_v4, 4444, 53, 17)}
        assert any(e["lost"] > 0 for e in events), "a flood beyond the budget reported no loss"
        frame = Ether(bytes.fromhex(events[0]["data"]))
        assert frame[IP].src == FLOOD_SRC
        counted = server_status(topo)["events"]
        assert counted["rate"] == RATE and counted["drops_sent"] >= len(events)
        assert counted["drops_refused"] > counted["drops_sent"]

        # A filter that matches nothing shows nothing, and says so without --json.
        quiet = shieldwall("events", *where, "--reason", "blocked")
        assert quiet.returncode == 0 and "no events waiting" in quiet.stdout, quiet.stderr


def test_capture_writes_the_sampled_frames_as_a_pcap(lab, tmp_path):
    topo = lab
    with attached(topo, POLICY, "native", tmp_path) as where:
        pcap = tmp_path / "drops.pcap"
        capture = _run("capture", *where, "--pcap", str(pcap), "--reason", "rule", "--seconds", "2")
        with _flooding(topo):
            out, err = capture.communicate(timeout=60)
        assert capture.returncode == 0 and "Traceback" not in err, err
        written = int(out.split()[1])
        packets = rdpcap(str(pcap))  # a reader other than our own
        assert 0 < len(packets) == written == len(read_frames(pcap))
        assert {(p[IP].src, p[UDP].dport) for p in packets} == {(FLOOD_SRC, 53)}
        assert all(p.wirelen == len(p) for p in packets)  # small frames: kept whole


def test_events_in_nft_mode_say_there_are_none(lab, tmp_path):
    with attached(lab, POLICY, "nft", tmp_path) as where:
        out = shieldwall("events", *where)
        assert out.returncode == 2 and "nft mode has no events" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
