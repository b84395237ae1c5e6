"""The icmp stage against its reference model (stages.icmp.IcmpModel): generated
`protect.icmp` sections and ICMP/ICMPv6 packets (echo, errors embedding real and
made-up flows, neighbor discovery, other types), through the whole pipeline.

The unrelated check asks the kernel's socket table: the tests open real TCP and UDP
sockets on this process's loopback (BPF_PROG_TEST_RUN runs an XDP program on the
loopback device of the caller's network namespace, so the stage's lookup sees them),
and give the model the same sockets. Limits are a packet a second at most, so no
bucket refills during an example: the model's verdicts are exact with time fixed."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS,
                                ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6PacketTooBig, ICMPv6TimeExceeded,
                                IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from shieldwall.config import configure
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.dataplane.addresses import from_key_bytes
from shieldwall.model.parse import parse
from shieldwall.policy import evaluate, parse_policy
from shieldwall.stages import stage
from shieldwall.stages.icmp import BUCKETS, STATS, IcmpModel, slot_index

pytestmark = pytest.mark.kernel

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large,
                                                      HealthCheck.function_scoped_fixture])
ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
HOST = {4: "127.0.0.1", 6: "::1"}
ROUTERS = {4: ["198.51.100.1", "203.0.113.9"], 6: ["2001:db8:1::1", "2001:db8:2::9"]}
RATE_KEYS = ["echo_request", "dest_unreachable", "time_exceeded", "packet_too_big", "icmp/13",
             "icmpv6/129", "echo_reply"]


class Sockets:
    """Real sockets on loopback (both families): a TCP listener with one connection
    to it, a connected UDP pair; and the lookup the stage makes, for the model."""

    def __init__(self) -> None:
        self.open: list[socket.socket] = []
        self.flows: set[tuple] = set()        # (proto, family, local, lport, remote, rport)
        self.tcp: dict[int, tuple[int, int]] = {}   # family -> (client port, server port)
        self.udp: dict[int, tuple[int, int]] = {}
        for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            host = HOST[family]
            listener = self._keep(socket.socket(af, socket.SOCK_STREAM))
            listener.bind((host, 0))
            listener.listen()
            client = self._keep(socket.create_connection((host, listener.getsockname()[1])))
            self._keep(listener.accept()[0])
            cport, sport = client.getsockname()[1], listener.getsockname()[1]
            self.tcp[family] = (cport, sport)
            self.flows |= {(6, family, cport, sport), (6, family, sport, cport)}
            a = self._keep(socket.socket(af, socket.SOCK_DGRAM))
            b = self._keep(socket.socket(af, socket.SOCK_DGRAM))
            a.bind((host, 0))
            b.bind((host, 0))
            a.connect(b.getsockname()[:2])
            b.connect(a.getsockname()[:2])
            aport, bport = a.getsockname()[1], b.getsockname()[1]
            self.udp[family] = (aport, bport)
            self.flows |= {(17, family, aport, bport), (17, family, bport, aport)}

    def _keep(self, s: socket.socket) -> socket.socket:
        self.open.append(s)
        return s

    def lookup(self, proto: int, family: int, local: bytes, lport: int, remote: bytes, rport: int) -> bool:
        ends = {str(from_key_bytes(local)), str(from_key_bytes(remote))}
        return ends == {HOST[family]} and (proto, family, lport, rport) in self.flows

    def close(self) -> None:
        for s in self.open:
            s.close()


@pytest.fixture(scope="module")
def sockets():
    s = Sockets()
    yield s
    s.close()


@pytest.fixture(scope="module")
def pipeline():
    with Pipeline.load(PipelineConfig()) as p:
        yield p


def load(pipeline, icmp: dict):
    policy = parse_policy({"version": 1, "default_action": "pass", "protect": {"icmp": icmp}},
                          "p.yaml", ".")
    pipeline.apply(configure(policy))
    if BUCKETS in pipeline.maps:  # a stage with nothing to do is left out of the chain
        slots = list(range(512))
        pipeline.maps[BUCKETS].update_batch(slots, [{"tat": 0}] * len(slots))  # full again
    return policy


def v4(src: str, upper) -> bytes:
    return bytes(Ether(**ETH) / IP(src=src, dst=HOST[4]) / upper)


def v6(src: str, upper) -> bytes:
    return bytes(Ether(**ETH) / IPv6(src=src, dst=HOST[6]) / upper)


def inner(family: int, proto: str, sport: int, dport: int, src: str | None = None,
          dst: str | None = None, cut: int = 0, ext: str = ""):
    """The start of a packet the host is said to have sent: its IP header (with IPv4
    options, or IPv6 extension headers: `ext`) and 8 bytes of its payload."""
    src, dst = src or HOST[family], dst or HOST[family]
    l4 = {"tcp": TCP(sport=sport, dport=dport, flags="A"), "udp": UDP(sport=sport, dport=dport),
          "echo": ICMP(type=8, id=sport) if family == 4 else ICMPv6EchoRequest(id=sport)}[proto]
    if family == 4:
        ip = IP(src=src, dst=dst, options=[IPOption_NOP()] * 4 if ext else [])
    else:
        ip = IPv6(src=src, dst=dst)
        for kind in ext.split("+") if ext else ():
            ip = ip / {"hop": IPv6ExtHdrHopByHop(), "frag": IPv6ExtHdrFragment(offset=0, m=1),
                       "later": IPv6ExtHdrFragment(offset=5), "route": IPv6ExtHdrRouting()}[kind]
    raw = bytes(ip / l4)
    keep = len(raw) - len(bytes(l4)) + 8
    return Raw(raw[:len(raw) - cut] if cut else raw[:keep])


def error(family: int, kind: str, embedded) -> bytes:
    router = ROUTERS[family][0]
    if family == 4:
        head = {"frag_needed": ICMP(type=3, code=4, nexthopmtu=1280), "unreach": ICMP(type=3, code=3),
                "ttl": ICMP(type=11), "param": ICMP(type=12), "redirect": ICMP(type=5)}[kind]
        return v4(router, head / embedded)
    head = {"frag_needed": ICMPv6PacketTooBig(mtu=1280), "unreach": ICMPv6DestUnreach(code=4),
            "ttl": ICMPv6TimeExceeded(), "param": ICMPv6DestUnreach(code=1),
            "redirect": ICMPv6TimeExceeded(code=1)}[kind]
    return v6(router, head / embedded)


@st.composite
def icmp_sections(draw) -> dict:
    spec: dict = {}
    if draw(st.booleans()):
        spec["unrelated"] = draw(st.sampled_from(["off", "monitor", "drop"]))
    keys = draw(st.lists(st.sampled_from(RATE_KEYS), unique=True, max_size=3))
    if keys:
        spec["rates"] = {k: draw(st.sampled_from([{"pps": 1, "burst": 1}, {"pps": 1, "burst": 3}, "off"]))
                         for k in keys}
    return spec


def frames(sockets: Sockets):
    @st.composite
    def draw_frame(draw) -> bytes:
        family = draw(st.sampled_from([4, 6]))
        src = draw(st.sampled_from(ROUTERS[family]))
        kind = draw(st.sampled_from(["echo", "echo", "error", "error", "error", "nd", "other"]))
        if kind == "echo":
            return v4(src, ICMP(type=8, id=7)) if family == 4 else v6(src, ICMPv6EchoRequest(id=7))
        if kind == "nd":
            upper = draw(st.sampled_from([ICMPv6ND_NS(tgt=HOST[6]), ICMPv6ND_NA(tgt=HOST[6]),
                                          ICMPv6ND_RS(), ICMPv6ND_RA()]))
            return v6("fe80::1", upper)
        if kind == "other":
            return (v4(src, ICMP(type=draw(st.sampled_from([0, 13, 17]))))
                    if family == 4 else v6(src, ICMPv6EchoRequest(type=draw(st.sampled_from([129, 130])))))
        proto = draw(st.sampled_from(["tcp", "udp", "echo"]))
        ports = (sockets.tcp if proto == "tcp" else sockets.udp)[family]
        sport, dport = draw(st.sampled_from([ports, ports[::-1]]))
        miss = draw(st.sampled_from(["none", "none", "none", "port", "source", "peer", "cut",
                                     "listener"]))
        if miss == "port":
            dport = draw(st.sampled_from([1, 9, 65000]))
        elif miss == "listener" and proto == "tcp":
            sport, dport = sockets.tcp[family][1], 65001  # from the listener's port
        src_in = ROUTERS[family][1] if miss == "source" else None
        dst_in = ROUTERS[family][1] if miss == "peer" else None
        cut = draw(st.integers(1, 12)) if miss == "cut" else 0
        ext = draw(st.sampled_from(["", "", "", "hop", "frag", "later", "hop+frag", "hop+route+frag"]))
        embedded = inner(family, proto, sport, dport, src_in, dst_in, cut, ext if family == 6 else ext[:1])
        return error(family, draw(st.sampled_from(["frag_needed", "unreach", "ttl", "param",
                                                   "redirect"])), embedded)
    return draw_frame()


def expected(policy, model: IcmpModel, frame: bytes):
    fields, root = parse(frame)
    assert root is None
    decision = model.decide(frame, fields) or evaluate(policy, fields)
    return decision.action, decision.reason


def test_decisions_equal_reference(pipeline, cpu, sockets):
    @settings(max_examples=80, **SETTINGS)
    @given(icmp_sections(), st.lists(frames(sockets), min_size=5, max_size=30))
    def check(spec, sequence):
        policy = load(pipeline, spec)
        model = IcmpModel(policy.sections["icmp"], sockets.lookup)
        for frame in sequence:
            got = pipeline.run(frame, cpu)
            assert (got.action, got.reason) == expected(policy, model, frame), (spec, frame.hex())
    check()


def counts(pipeline) -> dict[int, dict[str, int]]:
    out = {}
    for slot, cells in pipeline.maps[STATS].lookup_batch():
        total = {f: sum(int(getattr(c, f)) for c in cells) for f in ("passed", "limited", "unrelated")}
        out[int(slot)] = total
    return out


def test_fixtures(pipeline, cpu, sockets):
    load(pipeline, {"rates": {"echo_request": {"pps": 1, "burst": 2}}})
    before = stage("icmp").status(pipeline.maps)
    cport, sport = sockets.tcp[4]
    uport, vport = sockets.udp[6]
    table = [
        # Echo requests: the burst, then limited (the bucket is shared by every source).
        (v4("198.51.100.1", ICMP(type=8)), "pass", "default"),
        (v4("203.0.113.9", ICMP(type=8)), "pass", "default"),
        (v4("198.51.100.2", ICMP(type=8)), "drop", "icmp_limited"),
        (v6("2001:db8::5", ICMPv6EchoRequest()), "pass", "default"),
        # Errors about a real connection pass; about no socket, or a listener, they do not.
        (error(4, "frag_needed", inner(4, "tcp", cport, sport)), "pass", "default"),
        (error(4, "frag_needed", inner(4, "tcp", sport, cport)), "pass", "default"),
        (error(4, "frag_needed", inner(4, "tcp", cport, 9)), "drop", "icmp_unrelated"),
        (error(4, "frag_needed", inner(4, "tcp", sport, 65001)), "drop", "icmp_unrelated"),
        (error(6, "frag_needed", inner(6, "udp", uport, vport)), "pass", "default"),
        (error(6, "ttl", inner(6, "udp", uport, 9)), "drop", "icmp_unrelated"),
        # Another source than this host, a cut-short header, junk: unrelated.
        (error(4, "unreach", inner(4, "tcp", cport, sport, src="192.0.2.1")), "drop", "icmp_unrelated"),
        (error(4, "unreach", inner(4, "udp", 1, 2, cut=30)), "drop", "icmp_unrelated"),
        (v4("198.51.100.1", ICMP(type=3, code=4) / Raw(b"\x00" * 28)), "drop", "icmp_unrelated"),
        (v6("2001:db8::1", ICMPv6PacketTooBig() / Raw(b"\x60" + b"\x00" * 50)), "drop", "icmp_unrelated"),
        # An echo of this host's: its source is all there is to check.
        (error(4, "ttl", inner(4, "echo", 5, 0)), "pass", "default"),
        (error(6, "unreach", inner(6, "echo", 5, 0, src="2001:db8::7")), "drop", "icmp_unrelated"),
        # Neighbor discovery is never this stage's.
        (v6("fe80::1", ICMPv6ND_NS(tgt="::1")), "pass", "default"),
        (v6("fe80::1", ICMPv6ND_RA()), "pass", "default"),
    ]
    for frame, action, reason in table:
        got = pipeline.run(frame, cpu)
        assert (got.action, got.reason) == (action, reason), (parse(frame)[0], reason)
        if reason.startswith("icmp_"):
            assert got.module == "icmp"
    after = stage("icmp").status(pipeline.maps)
    echo = after["types"]["icmp/echo_request"]
    was = before["types"].get("icmp/echo_request", {"passed": 0, "limited": 0})
    assert (echo["passed"] - was["passed"], echo["limited"] - was["limited"]) == (2, 1)
    assert after["unrelated"] - before.get("unrelated", 0) == 8
    assert "icmpv6/neighbor_solicitation" not in after["types"]  # never counted: never seen


def test_an_inner_ipv6_fragment_header_is_walked(pipeline, cpu, sockets):
    load(pipeline, {})
    uport, vport = sockets.udp[6]
    raw = bytes(IPv6(src=HOST[6], dst=HOST[6]) / IPv6ExtHdrFragment(m=1, offset=0, id=5)
                / UDP(sport=uport, dport=vport))
    assert pipeline.run(error(6, "frag_needed", Raw(raw[:56])), cpu).action == "pass"
    raw = bytes(IPv6(src=HOST[6], dst=HOST[6]) / IPv6ExtHdrFragment(m=0, offset=10, id=5)
                / UDP(sport=uport, dport=vport))
    assert pipeline.run(error(6, "frag_needed", Raw(raw[:56])), cpu).reason == "icmp_unrelated"


def test_monitor_counts_and_passes(pipeline, cpu):
    load(pipeline, {"unrelated": "monitor", "rates": {"echo_request": "off"}})
    frame = error(4, "unreach", inner(4, "udp", 1, 2))
    before = counts(pipeline)[slot_index(4, 3)]["unrelated"]
    for _ in range(5):
        assert pipeline.run(v4("198.51.100.1", ICMP(type=8)), cpu).action == "pass"
        assert pipeline.run(frame, cpu).reason == "default"
    assert counts(pipeline)[slot_index(4, 3)]["unrelated"] - before == 5


def test_buckets_and_counts_survive_a_reload(pipeline, cpu):
    load(pipeline, {"rates": {"echo_request": {"pps": 1, "burst": 1}}})
    echo = v4("198.51.100.1", ICMP(type=8))
    assert pipeline.run(echo, cpu).action == "pass"
    assert pipeline.run(echo, cpu).reason == "icmp_limited"
    before = counts(pipeline)[slot_index(4, 8)]
    policy = parse_policy({"version": 1, "default_action": "pass",
                           "protect": {"icmp": {"rates": {"echo_request": {"pps": 1, "burst": 1},
                                                          "icmp/13": {"pps": 5}}}}}, "p.yaml", ".")
    pipeline.apply(configure(policy))  # state maps are kept, as a reload keeps them
    assert pipeline.run(echo, cpu).reason == "icmp_limited"
    after = counts(pipeline)[slot_index(4, 8)]
    assert (after["passed"], after["limited"]) == (before["passed"], before["limited"] + 1)
