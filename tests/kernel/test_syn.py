"""The syn stage on this kernel: the SYN-ACKs it writes (fields, options, checksums),
the kernel's own cookie check accepting the ACK a client builds from one, forged ACKs
and RSTs refused, the auth mode's challenge and its RST, and a differential test
against the reference model."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, IPOption_NOP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from shieldwall import abi
from shieldwall.config import configure
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.kernel.testrun import prog_test_run
from shieldwall.model.parse import parse
from shieldwall.policy import evaluate, parse_policy
from shieldwall.stages.syn import AUTH, STATE, challenge

from ..policy_strategies import packets

pytestmark = pytest.mark.kernel

ETH = dict(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
CLIENT4, SERVER4 = "198.51.100.9", "192.0.2.1"
CLIENT6, SERVER6 = "2001:db8:1::9", "2001:db8::1"
SYN_OPTIONS = [("MSS", 1400), ("SAckOK", b""), ("Timestamp", (123456, 0)), ("NOP", None),
               ("WScale", 9)]


@pytest.fixture(scope="module")
def pipeline(hook):
    with Pipeline.load(PipelineConfig(hook=hook)) as p:
        yield p


def _policy(**syn):
    spec = {"ports": [80, 443], **syn}
    return parse_policy({"version": 1, "default_action": "pass",
                         "protect": {"syn": spec, "bogons": "off"}}, "p.yaml", ".")


def _use(pipeline, **syn):
    """The pipeline with this syn section, and no source authenticated (state that
    outlives a reload, which the reference model does not hold)."""
    policy = _policy(**syn)
    pipeline.apply(configure(policy))
    auth = pipeline.maps[AUTH]
    for key in list(auth.keys()):
        auth.delete(key)
    return policy


def _run(pipeline, cpu, frame: bytes):
    """The verdict (action, reason, module) and the frame as the program left it."""
    result = prog_test_run(pipeline.root_program.fd, frame)
    pkt = pipeline.maps["sw_scratch"].lookup(0)[cpu]
    assert pkt.action == pipeline.returned_action(result.retval)
    return ((abi.action_name(pkt.action), abi.reason_name(pkt.reason), abi.module_name(pkt.module)),
            result.data)


def _syn(v6=False, vlan=False, options=SYN_OPTIONS, dport=80, seq=1000, flags="S") -> bytes:
    frame = Ether(**ETH)
    if vlan:
        frame = frame / Dot1Q(vlan=150)
    ip = IPv6(src=CLIENT6, dst=SERVER6) if v6 else IP(src=CLIENT4, dst=SERVER4)
    return bytes(frame / ip / TCP(sport=40000, dport=dport, flags=flags, seq=seq, options=options))


def _checksums_right(frame: Ether) -> bool:
    again = frame.copy()
    ip = again[IPv6] if IPv6 in again else again[IP]
    if IP in again:
        del again[IP].chksum
    del again[TCP].chksum
    redone = Ether(bytes(again))
    return bytes(redone) == bytes(frame) and ip is not None


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlan", [False, True])
def test_cookie_synack(pipeline, cpu, v6, vlan):
    _use(pipeline, mode="cookie", mss=1400, wscale=5)
    verdict, out = _run(pipeline, cpu, _syn(v6, vlan))
    assert verdict == ("tx", "syn_cookie", "syn")
    reply = Ether(out)
    assert (reply.src, reply.dst) == (ETH["dst"], ETH["src"])
    assert (Dot1Q in reply) == vlan and (not vlan or reply[Dot1Q].vlan == 150)
    ip = reply[IPv6] if v6 else reply[IP]
    assert (ip.src, ip.dst) == ((SERVER6, CLIENT6) if v6 else (SERVER4, CLIENT4))
    tcp = reply[TCP]
    assert (tcp.sport, tcp.dport, str(tcp.flags), tcp.ack, tcp.window) == (80, 40000, "SA", 1001, 0)
    options = dict(tcp.options)
    assert options["MSS"] == (1380 if v6 else 1400)
    assert "SAckOK" in options and options["WScale"] == 5
    tsval, tsecr = options["Timestamp"]
    # The kernel's cookie timestamp: its low bits are the client's wscale and SACK.
    assert tsecr == 123456 and tsval & 0xF == 9 and tsval & 0x10 and not tsval & 0x20
    assert len(bytes(tcp)) == 40 and not bytes(tcp.payload)
    assert len(out) == len(reply.copy().__class__(out))  # nothing after the TCP header
    assert _checksums_right(reply)


def test_cookie_synack_without_options(pipeline, cpu):
    _use(pipeline, mode="cookie")
    verdict, out = _run(pipeline, cpu, _syn(options=[]))
    assert verdict == ("tx", "syn_cookie", "syn")
    tcp = Ether(out)[TCP]
    assert dict(tcp.options) == {"MSS": 1460}  # no timestamp: nothing else can be kept
    assert _checksums_right(Ether(out))


def _ack_for(synack: bytes, v6=False, vlan=False, forge=False) -> bytes:
    """The client's ACK for a SYN-ACK, as its TCP builds it (or a forged one)."""
    reply = Ether(synack)
    tcp = reply[TCP]
    ack = random.getrandbits(32) if forge else (tcp.seq + 1) & 0xFFFFFFFF
    options = [("NOP", None), ("NOP", None), ("Timestamp", (123457, dict(tcp.options)["Timestamp"][0]))] \
        if "Timestamp" in dict(tcp.options) else []
    frame = Ether(**ETH)
    if vlan:
        frame = frame / Dot1Q(vlan=150)
    ip = IPv6(src=CLIENT6, dst=SERVER6) if v6 else IP(src=CLIENT4, dst=SERVER4)
    return bytes(frame / ip / TCP(sport=40000, dport=80, flags="A", seq=tcp.ack, ack=ack,
                                  options=options))


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlan", [False, True])
def test_cookie_ack_checked_by_the_kernel(pipeline, cpu, v6, vlan):
    _use(pipeline, mode="cookie")
    _, synack = _run(pipeline, cpu, _syn(v6, vlan))
    verdict, _ = _run(pipeline, cpu, _ack_for(synack, v6, vlan))
    assert verdict[0] == "pass" and verdict[2] != "syn"  # handed on: the rules decide
    verdict, _ = _run(pipeline, cpu, _ack_for(synack, v6, vlan, forge=True))
    assert verdict == ("drop", "bad_cookie", "syn")


def test_cookie_refuses_other_packets_without_a_socket(pipeline, cpu):
    _use(pipeline, mode="cookie")
    for flags in ("R", "FA", "PA", "SA", "RA"):
        frame = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=443, flags=flags))
        assert _run(pipeline, cpu, frame)[0] == ("drop", "bad_cookie", "syn"), flags
    # Ports not protected are not the stage's business.
    other = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=22, flags="S"))
    assert _run(pipeline, cpu, other)[0][2] != "syn"


def test_unanswerable_syns_are_dropped(pipeline, cpu):
    _use(pipeline, mode="cookie")
    options = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=SERVER4, options=[IPOption_NOP()] * 4)
                    / TCP(sport=40000, dport=80, flags="S"))
    ext = bytes(Ether(**ETH) / IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrDestOpt()
                / TCP(sport=40000, dport=80, flags="S"))
    for frame in (options, ext):
        assert _run(pipeline, cpu, frame)[0] == ("drop", "syn_unanswerable", "syn")


def _slots() -> set[int]:
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) >> abi.SW_SYN_SLOT_SHIFT
    return {now - 1, now, now + 1}


@pytest.mark.parametrize("v6", [False, True])
def test_auth_challenge_and_rst(pipeline, cpu, v6):
    _use(pipeline, mode="auth", auth_ttl="300s")
    syn = _syn(v6, seq=5000)
    verdict, out = _run(pipeline, cpu, syn)
    assert verdict == ("tx", "syn_challenge", "syn")
    reply = Ether(out)
    tcp = reply[TCP]
    assert str(tcp.flags) == "SA" and tcp.ack != 5001
    assert _checksums_right(reply)
    state = pipeline.maps[STATE].lookup(0)
    fields, _ = parse(syn)
    expected = {challenge(state.key0, state.key1, fields.src, fields.dst, 40000, 80, slot)
                for slot in _slots()}
    assert (tcp.seq << 32 | tcp.ack) in expected

    ip = IPv6(src=CLIENT6, dst=SERVER6) if v6 else IP(src=CLIENT4, dst=SERVER4)
    forged = bytes(Ether(**ETH) / ip / TCP(sport=40000, dport=80, flags="R", seq=(tcp.ack + 1) & 0xFFFFFFFF))
    assert _run(pipeline, cpu, forged)[0] == ("drop", "bad_cookie", "syn")
    assert _run(pipeline, cpu, syn)[0][1] == "syn_challenge"  # still unknown
    # The client's TCP answers an unacceptable SYN-ACK with RST, seq = its ACK number.
    rst = bytes(Ether(**ETH) / ip / TCP(sport=40000, dport=80, flags="R", seq=tcp.ack))
    assert _run(pipeline, cpu, rst)[0] == ("drop", "syn_authenticated", "syn")
    verdict, _ = _run(pipeline, cpu, _syn(v6, seq=5000))
    assert verdict[0] == "pass" and verdict[2] != "syn"  # the retransmitted SYN goes on


def test_auth_hands_other_packets_on(pipeline, cpu):
    _use(pipeline, mode="auth")
    frame = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40001, dport=80, flags="A"))
    assert _run(pipeline, cpu, frame)[0][2] != "syn"


def test_activation_by_rate_starts_inactive(pipeline, cpu):
    _use(pipeline, mode="cookie", activate={"above": 1000000, "below": 500000})
    pipeline.maps[STATE].update(0, {"active": 0})
    verdict, _ = _run(pipeline, cpu, _syn())
    assert verdict[2] != "syn"  # far under the rate: the kernel (or SYNPROXY) answers


# -- the reference model ----------------------------------------------------------------

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def tcp_frames(draw) -> bytes:
    v6 = draw(st.booleans())
    frame = Ether(**ETH)
    if draw(st.booleans()):
        frame = frame / Dot1Q(vlan=draw(st.sampled_from([1, 150])))
    if v6:
        ip = IPv6(src=draw(st.sampled_from([CLIENT6, "2001:db8:5::1"])), dst=SERVER6)
        if draw(st.integers(0, 5)) == 0:
            ip = ip / IPv6ExtHdrDestOpt()
    else:
        ip = IP(src=draw(st.sampled_from([CLIENT4, "203.0.113.5"])), dst=SERVER4)
        if draw(st.integers(0, 5)) == 0:
            ip.options = [IPOption_NOP()] * 4
    tcp = TCP(sport=draw(st.integers(1024, 65535)), dport=draw(st.sampled_from([80, 443, 22, 8080])),
              flags=draw(st.integers(0, 255)), seq=draw(st.integers(0, 2**32 - 1)),
              ack=draw(st.integers(0, 2**32 - 1)),
              options=draw(st.sampled_from([[], SYN_OPTIONS, [("MSS", 536)]])))
    payload = Raw(b"x" * draw(st.sampled_from([0, 0, 10])))
    return bytes(frame / ip / tcp / payload)


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(["cookie", "auth"]),
       st.lists(st.one_of(tcp_frames(), packets()), min_size=10, max_size=30))
def test_syn_equals_reference(pipeline, cpu, mode, frames):
    policy = _use(pipeline, mode=mode)
    for frame in frames:
        fields, root = parse(frame)
        if root is not None:
            continue
        want = evaluate(policy, fields)
        verdict, _ = _run(pipeline, cpu, frame)
        assert verdict[:2] == (want.action, want.reason), (mode, fields)


def test_verdict_shows_the_answer(tmp_path):
    from ..kernel.test_verdict_cli import run_verdict
    from shieldwall.pcapio import write_pcap

    policy = tmp_path / "syn.yaml"
    policy.write_text("version: 1\ndefault_action: pass\nprotect:\n  syn: {ports: [80], mode: cookie}\n")
    pcap = tmp_path / "syn.pcap"
    forged = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=80, flags="A", ack=7))
    write_pcap(pcap, [_syn(), _syn(v6=True, vlan=True), forged])
    lines = run_verdict(pcap, policy)
    assert [(x["action"], x["reason"], x["module"]) for x in lines] == [
        ("tx", "syn_cookie", "syn"), ("tx", "syn_cookie", "syn"), ("drop", "bad_cookie", "syn")]


def test_the_secret_and_authentications_outlive_a_reload(pipeline, cpu):
    _use(pipeline, mode="auth")
    _, out = _run(pipeline, cpu, _syn(seq=9))
    before = pipeline.maps[STATE].lookup(0)
    keys = (before.key0, before.key1)
    assert all(keys)
    rst = bytes(Ether(**ETH) / IP(src=CLIENT4, dst=SERVER4)
                / TCP(sport=40000, dport=80, flags="R", seq=Ether(out)[TCP].ack))
    # A reload between the challenge and its answer: the answer still counts.
    pipeline.apply(configure(_policy(mode="auth", auth_ttl="60s")))
    after = pipeline.maps[STATE].lookup(0)
    assert (after.key0, after.key1) == keys
    assert _run(pipeline, cpu, rst)[0] == ("drop", "syn_authenticated", "syn")
    pipeline.apply(configure(_policy(mode="auth")))
    assert _run(pipeline, cpu, _syn(seq=9))[0][2] != "syn"  # still authenticated
