"""The reflection stage's section (every problem names its path), its decision with
empty tables, and its model of the query table."""

from __future__ import annotations

import pytest
from scapy.layers.dns import DNS
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from shieldwall.model.parse import parse
from shieldwall.policy import parse_policy_text
from shieldwall.policy.errors import PolicyError
from shieldwall.stages.reflection import REFLECTORS, ReflectionModel, ReflectionStage

HEAD = "version: 1\ndefault_action: pass\nprotect:\n  reflection: "


def section(body: str):
    return parse_policy_text(HEAD + body + "\n", "p.yaml", ".").sections["reflection"]


def test_the_minimal_form_takes_the_defaults():
    s = section("{}")
    assert s.ports == frozenset(REFLECTORS) and s.ttl == 5 and s.pps is None
    assert s.fragments == "track"
    assert section("{ports: [27015]}").ports == frozenset(REFLECTORS) | {27015}
    assert section("{only: [53]}").ports == {53}
    assert section("{fragments: off}").fragments == "off"
    assert section("{limit: {pps: 10}}").burst == 10


@pytest.mark.parametrize("body, path", [
    ("{ports: [0]}", "protect.reflection.ports[0]"),
    ("{only: 53}", "protect.reflection.only"),
    ("{ports: [1], only: [2]}", "protect.reflection"),
    ("{ttl: 0}", "protect.reflection.ttl"),
    ("{limit: {burst: 3}}", "protect.reflection.limit"),
    ("{limit: {pps: x}}", "protect.reflection.limit.pps"),
    ("{allow: ['!192.0.2.1']}", "protect.reflection.allow"),
    ("{fragments: maybe}", "protect.reflection.fragments"),
    ("{colour: blue}", "protect.reflection"),
    ("7", "protect.reflection"),
])
def test_problems_name_their_field(body, path):
    with pytest.raises(PolicyError) as err:
        section(body)
    assert f"p.yaml: {path}:" in str(err.value)


def frame(src, dst, sport, dport, payload=b"", **ip):
    return bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / payload)


def test_decide_with_empty_tables():
    stage, s = ReflectionStage(), section("{allow: [203.0.113.0/24]}")
    decide = lambda f: stage.decide(s, parse(f)[0])
    assert decide(frame("198.51.100.1", "192.0.2.1", 53, 4000)).reason == "reflection"
    assert decide(frame("203.0.113.1", "192.0.2.1", 53, 4000)) is None
    assert decide(frame("198.51.100.1", "192.0.2.1", 4000, 53)) is None
    later = frame("198.51.100.1", "192.0.2.1", 1, 1, frag=10)
    assert decide(later).reason == "reflection_fragment"
    assert stage.decide(section("{limit: {pps: 5}}"), parse(frame("198.51.100.1", "192.0.2.1", 53, 4000))[0]) is None


def test_the_model_matches_dns_replies_by_id():
    model = ReflectionModel(section("{}"))
    model.outgoing(frame("192.0.2.1", "198.51.100.53", 4000, 53, bytes(DNS(id=5))), now=0)
    model.outgoing(frame("192.0.2.1", "198.51.100.53", 4000, 53, bytes(DNS(id=6))), now=0)
    reply = lambda qid, now=0: model.inbound(frame("198.51.100.53", "192.0.2.1", 53, 4000,
                                                   bytes(DNS(id=qid, qr=1))), now)
    assert reply(5) is None and reply(6) is None
    assert reply(7).reason == "reflection"
    assert reply(5, now=6 * 10**9).reason == "reflection"  # after its ttl
