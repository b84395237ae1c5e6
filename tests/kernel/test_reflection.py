"""The reflection stage on the real programs: the TC egress program records the host's
own queries (run through BPF_PROG_TEST_RUN on its skb), then the XDP pipeline decides on
replies, spoofed replies and fragments; every verdict must be the reference model's
(ReflectionModel), on generated conversations."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from shieldwall import abi
from shieldwall.config import configure
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.kernel.testrun import prog_test_run
from shieldwall.model.parse import parse
from shieldwall.policy.model import Pipeline as Chain
from shieldwall.policy.reference import chain
from shieldwall.policy import evaluate, parse_policy_text
from shieldwall.stages.reflection import QUERIES, STAT_FIELDS, ReflectionModel

pytestmark = pytest.mark.kernel

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
HOST = {4: "192.0.2.1", 6: "2001:db8::1"}
RESOLVERS = {4: ["198.51.100.53", "203.0.113.53"], 6: ["2001:db8:1::53", "2001:db8:2::53"]}
REFLECTOR_PORTS = [53, 123, 11211, 1900]
LOCAL_PORTS = [40000, 40001, 123]
TC_ACT_UNSPEC = 0xFFFFFFFF


def policy_of(body: str = "{}"):
    text = f"version: 1\ndefault_action: pass\nprotect:\n  reflection: {body}\n"
    return parse_policy_text(text, "reflection.yaml", ".")


@pytest.fixture(scope="module")
def pipeline():
    with Pipeline.load(PipelineConfig()) as p:
        yield p


def fresh(pipeline: Pipeline, policy) -> int:
    """The pipeline for the policy with empty tables; the egress program's fd."""
    pipeline.apply(configure(policy))
    for name in ("sw_refl_queries", "sw_refl_frag_replies", "sw_refl_frag_other", "sw_refl_buckets"):
        table = pipeline.maps[name]
        for key in list(table.keys()):
            table.delete(key)
    pipeline.maps["sw_refl_newcomers"].update(0, 0)
    return pipeline.egress_programs()["reflection"].fd


def ip(family: int, src: str, dst: str, **kw):
    return IP(src=src, dst=dst, **kw) if family == 4 else IPv6(src=src, dst=dst)


def frame(family: int, src: str, dst: str, upper, vlan: int | None = None) -> bytes:
    f = Ether(**ETH)
    if vlan is not None:
        f = f / Dot1Q(vlan=vlan)
    return bytes(f / ip(family, src, dst) / upper)


def payload(rport: int, qid: int, size: int = 0):
    """A DNS message with its id for port 53, else bytes of the protocol's size."""
    if rport == 53:
        return DNS(id=qid, qd=DNSQR(qname="www.example.org")) / Raw(b"\0" * size)
    return Raw(b"\x1b" + b"\0" * (47 + size))


def query(family, lport, rport, qid=0, resolver=None):
    resolver = resolver or RESOLVERS[family][0]
    return frame(family, HOST[family], resolver, UDP(sport=lport, dport=rport) / payload(rport, qid))


def reply(family, lport, rport, qid=0, resolver=None, size=0):
    resolver = resolver or RESOLVERS[family][0]
    return frame(family, resolver, HOST[family], UDP(sport=rport, dport=lport) / payload(rport, qid, size))


def fragments(family: int, src: str, dst: str, upper, ident: int) -> list[bytes]:
    """A datagram's fragments, each a frame (IPv6: the fragment header right after the
    fixed one)."""
    if family == 4:
        return [bytes(Ether(**ETH) / f) for f in fragment(IP(src=src, dst=dst, id=ident) / upper, 1200)]
    body = bytes(upper)
    out, at = [], 0
    while at < len(body):
        part = body[at:at + 1200]
        more = at + len(part) < len(body)
        out.append(bytes(Ether(**ETH) / IPv6(src=src, dst=dst) /
                         IPv6ExtHdrFragment(nh=17, id=ident, offset=at // 8, m=int(more)) / Raw(part)))
        at += len(part)
    return out


def run(pipeline, cpu, model: ReflectionModel, policy, f: bytes) -> str:
    """The kernel's verdict, checked against the model's."""
    want = model.inbound(f)
    got = pipeline.run(f, cpu)
    if want is None:
        want = evaluate_rest(policy, f)
    assert (got.action, got.reason) == (want.action, want.reason), f.hex()
    return got.action


def evaluate_rest(policy, f: bytes):
    """What the stages other than this one decide (the model handed the packet on)."""
    rest = tuple(s for s in chain(policy) if s != "reflection")
    return evaluate(replace(policy, pipeline=Chain(stages=rest)), parse(f)[0])


def test_replies_to_the_hosts_own_queries_pass_and_nothing_else(pipeline, cpu):
    policy = policy_of()
    egress = fresh(pipeline, policy)
    out = [query(4, 40000, 53, qid=7), query(4, 40000, 53, qid=8), query(6, 40001, 123),
           query(4, 40002, 11211), frame(4, HOST[4], RESOLVERS[4][0], UDP(sport=40003, dport=53) / payload(53, 9), vlan=10)]
    for f in out:
        assert prog_test_run(egress, f).retval == TC_ACT_UNSPEC  # it only watches
    inbound = {
        reply(4, 40000, 53, qid=7): ("pass", "default"),
        reply(4, 40000, 53, qid=8, size=3000): ("pass", "default"),  # two pending ids
        reply(6, 40001, 123): ("pass", "default"),
        reply(4, 40002, 11211, size=1000): ("pass", "default"),
        reply(4, 40003, 53, qid=9): ("pass", "default"),
        # A wrong DNS id, another resolver, another local port, never asked.
        reply(4, 40000, 53, qid=6): ("drop", "reflection"),
        reply(4, 40000, 53, qid=7, resolver=RESOLVERS[4][1]): ("drop", "reflection"),
        reply(4, 40009, 53, qid=7): ("drop", "reflection"),
        reply(6, 40001, 1900): ("drop", "reflection"),
        reply(4, 40000, 19): ("drop", "reflection"),
        # IPv6 between the IPv4-mapped addresses of an IPv4 query: no reply to it.
        frame(6, "::ffff:" + RESOLVERS[4][0], "::ffff:" + HOST[4],
              UDP(sport=53, dport=40000) / payload(53, 7)): ("drop", "reflection"),
        # UDP from other ports is not this stage's business.
        frame(4, RESOLVERS[4][1], HOST[4], UDP(sport=5000, dport=53) / payload(53, 1)): ("pass", "default"),
    }
    for f, want in inbound.items():
        got = pipeline.run(f, cpu)
        assert (got.action, got.reason) == want, f.hex()
    # Inbound packets never create queries.
    assert len(list(pipeline.maps[QUERIES].keys())) == 5


def test_a_query_waits_its_ttl_and_no_longer(pipeline, cpu):
    policy = policy_of("{ttl: 1}")
    egress = fresh(pipeline, policy)
    prog_test_run(egress, query(4, 40000, 123))
    assert pipeline.run(reply(4, 40000, 123), cpu).action == "pass"
    time.sleep(1.2)
    assert pipeline.run(reply(4, 40000, 123), cpu).reason == "reflection"


def test_allowed_sources_and_added_ports(pipeline, cpu):
    policy = policy_of("{allow: [203.0.113.0/24], ports: [27015]}")
    fresh(pipeline, policy)
    assert pipeline.run(reply(4, 40000, 53, qid=1, resolver="203.0.113.9"), cpu).action == "pass"
    assert pipeline.run(reply(4, 40000, 27015), cpu).reason == "reflection"
    only = policy_of("{only: [27015]}")
    fresh(pipeline, only)
    assert pipeline.run(reply(4, 40000, 53, qid=1), cpu).action == "pass"
    assert pipeline.run(reply(4, 40000, 27015), cpu).reason == "reflection"


@pytest.mark.parametrize("family", [4, 6])
def test_fragments_of_a_reply_pass_and_a_floods_do_not(pipeline, cpu, family):
    policy = policy_of()
    egress = fresh(pipeline, policy)
    model = ReflectionModel(policy.sections["reflection"])
    q = query(family, 40000, 53, qid=77)
    prog_test_run(egress, q)
    model.outgoing(q)
    resolver, host = RESOLVERS[family][0], HOST[family]
    big = UDP(sport=53, dport=40000) / payload(53, 77, 3000)
    frags = fragments(family, resolver, host, big, 0x1234)
    assert len(frags) == 3
    assert [run(pipeline, cpu, model, policy, f) for f in frags] == ["pass"] * 3
    # The same datagram with another id (a flood's fragments): first and rest dropped.
    spoofed = fragments(family, resolver, host, UDP(sport=53, dport=40000) / payload(53, 78, 3000), 0x1235)
    got = [pipeline.run(f, cpu).reason for f in spoofed]
    assert got == ["reflection", "reflection_fragment", "reflection_fragment"]
    # Fragmented UDP of another service passes whole.
    other = fragments(family, resolver, host, UDP(sport=5000, dport=5001) / Raw(b"x" * 3000), 0x1236)
    assert [run(pipeline, cpu, model, policy, f) for f in other] == ["pass"] * 3
    # A later fragment whose first never came.
    assert pipeline.run(fragments(family, resolver, host, big, 0x4321)[1], cpu).reason \
        == "reflection_fragment"
    off = policy_of("{fragments: off}")
    fresh(pipeline, off)
    assert pipeline.run(spoofed[1], cpu).action == "pass"


def test_the_per_reflector_limit_passes_its_burst_and_bounds_newcomers(pipeline, cpu):
    policy = policy_of("{limit: {pps: 1, burst: 5}}")
    fresh(pipeline, policy)
    f = reply(4, 40000, 123)
    got = [pipeline.run(f, cpu).reason for _ in range(8)]
    assert got == ["default"] * 5 + ["reflector_limited"] * 3
    # A flood of never-repeating sources shares the newcomers' bucket: the 5 it had
    # went to the first source, so none of them gets a bucket.
    fresh(pipeline, policy)
    spoofed = [reply(4, 40000, 123, resolver=f"198.51.100.{n}") for n in range(1, 30)]
    got = [pipeline.run(x, cpu).action for x in spoofed]
    assert got.count("pass") == 5
    assert len(list(pipeline.maps["sw_refl_buckets"].keys())) == 5


def test_status_counts(pipeline, cpu):
    from shieldwall.stages import stages
    policy = policy_of()
    egress = fresh(pipeline, policy)
    before = stages()["reflection"].status(pipeline.maps)
    prog_test_run(egress, query(4, 40000, 53, qid=5))
    pipeline.run(reply(4, 40000, 53, qid=5), cpu)
    pipeline.run(reply(4, 40000, 53, qid=4), cpu)
    after = stages()["reflection"].status(pipeline.maps)
    delta = {k: after[k] - before[k] for k in STAT_FIELDS}
    assert delta["queries"] == 1 and delta["matched"] == 1 and delta["dropped"] == 1
    assert after["pending"] == 1


def test_a_query_table_full_keeps_the_newest_queries(pipeline, cpu):
    policy = policy_of()
    egress = fresh(pipeline, policy)
    sent = abi.SW_REFL_QUERIES + 2_000
    template = query(4, 1, 123)
    at = len(template) - 48 - 8  # the UDP header
    for n in range(sent):
        port = (1024 + n % 60_000).to_bytes(2, "big") + (123 if n < 60_000 else 53).to_bytes(2, "big")
        prog_test_run(egress, template[:at] + port + template[at + 4:])
    assert len(list(pipeline.maps[QUERIES].keys())) <= abi.SW_REFL_QUERIES
    # A spoofed flood changes nothing in it.
    for n in range(2_000):
        pipeline.run(reply(4, 2000 + n, 123, resolver=f"203.0.113.{n % 250 + 1}"), cpu)
    assert len(list(pipeline.maps[QUERIES].keys())) <= abi.SW_REFL_QUERIES
    assert pipeline.run(reply(4, 1024 + (sent - 1) % 60_000, 53, qid=0x1b00), cpu).action == "pass"


# -- differential: kernel against ReflectionModel ------------------------------------


@st.composite
def conversations(draw):
    """The host's queries, then inbound frames: their replies, near misses (another id,
    port or resolver) and fragments of either."""
    events = []
    for _ in range(draw(st.integers(1, 6))):
        family = draw(st.sampled_from([4, 6]))
        resolver = draw(st.sampled_from(RESOLVERS[family]))
        lport, rport = draw(st.sampled_from(LOCAL_PORTS)), draw(st.sampled_from(REFLECTOR_PORTS))
        qid = draw(st.integers(0, 3))
        if draw(st.booleans()):
            events.append(("out", query(family, lport, rport, qid, resolver)))
        for _ in range(draw(st.integers(1, 3))):
            miss = draw(st.sampled_from(["none", "none", "id", "port", "peer", "other"]))
            src = draw(st.sampled_from(RESOLVERS[family])) if miss == "peer" else resolver
            sport = draw(st.sampled_from(REFLECTOR_PORTS)) if miss == "port" else rport
            sport = 5353 + 1 if miss == "other" else sport
            upper = UDP(sport=sport, dport=lport) / payload(sport, qid + (miss == "id"), draw(st.sampled_from([0, 2000])))
            if draw(st.booleans()):
                frags = fragments(family, src, HOST[family], upper, draw(st.integers(1, 3)))
                events.extend(("in", f) for f in draw(st.permutations(frags)) if draw(st.integers(0, 4)))
            else:
                events.append(("in", frame(family, src, HOST[family], upper)))
    return events


BODIES = ["{}", "{fragments: off}", "{allow: [198.51.100.0/24, '2001:db8:2::/48']}",
          "{limit: {pps: 1, burst: 2}}", "{only: [53, 5354]}"]


@settings(max_examples=80, **SETTINGS)
@given(st.sampled_from(BODIES), conversations())
def test_conversations_decide_as_the_model(pipeline, cpu, body, events):
    policy = policy_of(body)
    egress = fresh(pipeline, policy)
    model = ReflectionModel(policy.sections["reflection"])
    for kind, f in events:
        if kind == "out":
            assert prog_test_run(egress, f).retval == TC_ACT_UNSPEC
            model.outgoing(f)
        else:
            run(pipeline, cpu, model, policy, f)
    assert len(list(pipeline.maps[QUERIES].keys())) == len(model.queries)
