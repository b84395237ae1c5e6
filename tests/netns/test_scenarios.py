"""Attack scenarios end to end: the generator's attack frames as they arrive, and
`bench --scenarios` on two scenarios, briefly, with the real client throughout."""

from __future__ import annotations

import ipaddress
import socket
import time

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from shieldwall.cli.scenariobench import DEFENSES, run_scenarios
from shieldwall.kernel.netns import enter_netns
from shieldwall.lab.attacks import attack, templates
from shieldwall.lab.scenarios import BY_NAME
from shieldwall.lab.trafgen import TrafficGenerator

from ..helpers import checksums_right

SECONDS = 2.0
RUN_KEYS = {"legit_success", "legit_p50_ms", "legit_p99_ms", "idle_p99_ms", "attack_mpps",
            "dropped", "cpu", "attack_frames", "server_stack_packets", "server_tcp"}
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33  # linux/asm-generic/socket.h; Python's socket module lacks it


def _capture(topo, count: int) -> list[bytes]:
    """Frames arriving at the server end (no XDP there: they go up the stack), read from
    a packet socket opened before the attack."""
    with enter_netns(topo.server_ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        sock.bind((topo.server_if, 0))
        a = attack("mixed")
        with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
            gen.random(templates(a, topo))
            gen.send(None, count)
        frames: list[bytes] = []
        sock.settimeout(0.5)
        deadline = time.monotonic() + 5
        while len(frames) < count and time.monotonic() < deadline:
            try:
                data, addr = sock.recvfrom(4096)
            except TimeoutError:
                break
            if addr[2] != socket.PACKET_OUTGOING:
                frames.append(data)
    return frames


def test_attack_frames_arrive_with_sources_in_their_prefixes_and_right_checksums(lab):
    a = attack("mixed")
    prefixes = [ipaddress.ip_network(p.sources) for p in a.parts]
    frames = [Ether(f) for f in _capture(lab, 3000)]
    ours = [f for f in frames if (IP in f or IPv6 in f)
            and (f[IP].dst if IP in f else f[IPv6].dst) in (lab.server_v4, lab.server_v6)]
    assert len(ours) >= 2500, f"{len(ours)} of 3000 attack frames captured"
    sources = set()
    for f in ours:
        src = ipaddress.ip_address(f[IP].src if IP in f else f[IPv6].src)
        assert any(src in net for net in prefixes), src
        sources.add(src)
        if IP not in f or not (f[IP].flags.MF or f[IP].frag):  # fragments: their own
            assert checksums_right(f), f.summary()
    # Drawn per frame: nearly every frame of the random-source parts has a new source.
    assert len(sources) > len(ours) // 2
    assert ipaddress.ip_address("203.0.113.7") in sources  # the heavy hitter


def test_udp_and_syn_scenarios_end_to_end():
    report = run_scenarios(SECONDS, scenarios=(BY_NAME["udp"], BY_NAME["syn-spoofed"]),
                           defenses=("unprotected", "shieldwall", "nftables"))
    udp, syn = report["scenarios"]
    assert set(report) == {"scenarios"}
    assert (udp["name"], udp["distinguishable"], "why" in udp) == ("udp", True, False)
    assert (syn["name"], syn["distinguishable"], "why" in syn) == ("syn-spoofed", True, False)
    assert set(udp) == set(syn) == {"name", "distinguishable", "unprotected", "shieldwall", "nftables"}
    for entry in (udp, syn):
        for defense in DEFENSES:
            run = entry.get(defense)
            if run is None:
                continue
            assert RUN_KEYS <= set(run), (entry["name"], defense)
            assert 0 <= run["legit_success"] <= 1 and run["attack_frames"] > 0
            assert set(run["cpu"]) == {"busy", "softirq"}

    # Without protection the flood reaches the server namespace's stack.
    bare = udp["unprotected"]
    assert bare["dropped"] == {}
    assert bare["server_stack_packets"] > bare["attack_frames"] // 2
    # With shieldwall's policy the rule drops it in XDP (a random source port of 0 is
    # a zero_port drop first); the stack sees little more than the client, which is
    # still served. (Frames the veth's ring had no room for never reach any filter.)
    sw = udp["shieldwall"]
    assert sw["dropped"].get("rule", 0) + sw["dropped"].get("zero_port", 0) >= 0.8 * sw["attack_frames"]
    assert sw["server_stack_packets"] < 0.02 * sw["attack_frames"]
    assert sw["legit_success"] >= 0.9
    nft = udp["nftables"]
    assert nft["dropped"]["udp-not-served"] >= 0.5 * nft["attack_frames"]
    assert nft["server_stack_packets"] < 0.02 * nft["attack_frames"]

    # The SYN flood: unprotected, every SYN reaches the server's TCP, which answers
    # with its own cookies. With shieldwall each is answered from XDP: the stack sees
    # the client's connections only, and the listen path none of the flood.
    bare = syn["unprotected"]
    assert bare["server_stack_packets"] > bare["attack_frames"] // 2
    listen = bare["server_tcp"]
    assert listen.get("SyncookiesSent", 0) + listen.get("ListenDrops", 0) > bare["attack_frames"] // 4
    sw = syn["shieldwall"]
    # Of what reached XDP, nearly all is answered (frames the rings had no room for
    # reach no filter: answering in place is slower than dropping, so more are lost).
    # (The lab's live-frames generator sends some frames cut short, their page back from
    # an answer with its length, docs/results.md: the root drops those as malformed.)
    malformed = sw["dropped"].get("bad_ipv4_length", 0) + sw["dropped"].get("bad_ipv6_length", 0)
    seen = sum(sw["dropped"].values()) - malformed
    assert sw["dropped"].get("answered:syn_cookie", 0) >= 0.95 * seen, sw["dropped"]
    assert seen >= 0.3 * sw["attack_frames"], sw["dropped"]
    assert sw["server_stack_packets"] < 0.02 * sw["attack_frames"]
    # SYNPROXY's own SYN per client connection is all the listen path sees.
    listen = sw["server_tcp"]
    assert not {"ListenOverflows", "ListenDrops"} & set(listen), listen
    assert listen.get("SyncookiesSent", 0) <= listen.get("PassiveOpens", 0), listen
    assert sw["legit_success"] >= 0.9
    # nftables' SYNPROXY answers them too, once the stack has built an sk_buff for each.
    nft = syn["nftables"]
    assert nft["dropped"].get("syn", 0) >= 0.5 * nft["attack_frames"], nft["dropped"]
    assert nft["server_stack_packets"] > nft["attack_frames"] // 2
