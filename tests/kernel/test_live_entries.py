"""Live set entries laid over a running pipeline (dataplane.livehosts) against the
reference model of the policy whose sets hold them: on generated policies, entries
added, expired in the data plane, and removed again, every packet's verdict is the one
the policy with those entries in its sets gives."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shieldwall.config import configure
from shieldwall.dataplane.livehosts import Membership, host_key, lay_over
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.model.parse import parse
from shieldwall.policy import classifier, evaluate, parse_policy

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ..policy_strategies import ADDRESSES_V4, ADDRESSES_V6, PREFIXES_V4, PREFIXES_V6, packets, policy_data

pytestmark = pytest.mark.kernel

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
# Addresses the packets use (an IPv4-mapped one is no valid entry).
HOSTS = ADDRESSES_V4 + [a for a in ADDRESSES_V6 if not a.startswith("::ffff:")]
PREFIXES = PREFIXES_V4 + PREFIXES_V6
MODULES = {"allowlisted": "fastpath", "blocklisted": "fastpath", "end_of_chain": "root"}


@pytest.fixture(scope="module")
def pipeline():
    saved = classifier.DIRECT
    classifier.DIRECT = False  # a small ruleset's constants take no live entries
    with Pipeline.load(PipelineConfig()) as p:
        yield p
    classifier.DIRECT = saved


@st.composite
def _set_rule(draw, names: list[str], i: int) -> dict:
    """A rule naming a set in an address field, maybe negated, maybe beside other
    items, and maybe with other fields too."""
    where = draw(st.sampled_from(["src", "dst"]))
    item = st.tuples(st.booleans(), st.sampled_from([f"@{n}" for n in names] + PREFIXES)).map(
        lambda t: f"!{t[1]}" if t[0] else t[1])
    items = [f"@{draw(st.sampled_from(names))}"] + draw(st.lists(item, max_size=2))
    match = {where: draw(st.permutations(items))}
    if draw(st.booleans()):
        match["proto"] = draw(st.sampled_from(["tcp", "udp", "!icmp"]))
    return {"name": f"set-{i}", "action": draw(st.sampled_from(["pass", "drop", "count"])),
            "match": match}


@st.composite
def live_cases(draw):
    data = draw(policy_data(max_rules=6))
    names = sorted(data["sets"]) or ["s0"]
    data["sets"].setdefault("s0", {"type": "prefix", "entries": ["192.0.2.0/25"]})
    extra_rules = [draw(_set_rule(names, i)) for i in range(draw(st.integers(1, 4)))]
    data["rules"] = draw(st.permutations(data["rules"] + extra_rules))
    if draw(st.booleans()):
        data["fastpath"] = {draw(st.sampled_from(["allow", "deny"])): [f"@{draw(st.sampled_from(names))}"]}
    entry = st.tuples(st.sampled_from(names), st.sampled_from(HOSTS), st.booleans())
    entries = draw(st.lists(entry, max_size=8, unique_by=lambda e: e[:2]))
    removed = draw(st.lists(st.sampled_from(range(len(entries))), unique=True)) if entries else []
    return data, entries, removed


def _lay(pipeline, entries) -> list[tuple[str, str]]:
    """Lays the entries over the pipeline (an expired one with a TTL already past);
    returns those in force."""
    index = pipeline.live
    by_addr: dict[str, list[tuple[str, int]]] = {}
    for name, addr, expired in entries:
        by_addr.setdefault(addr, []).append((name, 1 if expired else 0))
    changes = {host_key(ipaddress.ip_network(a)): Membership(tuple(sorted(m))) for a, m in by_addr.items()}
    for lookup in index.lookups.values():
        lay_over(pipeline.maps, lookup, changes)
    return [(n, a) for n, a, expired in entries if not expired]


def _same(pipeline, cpu, data, in_force, frames) -> None:
    extra: dict[str, list] = {}
    for name, addr in in_force:
        extra.setdefault(name, []).append(ipaddress.ip_network(addr))
    policy = parse_policy(data, "generated.yaml", ".", extra=extra)
    for frame in frames:
        fields, _ = parse(frame)
        want = evaluate(policy, fields)
        got = pipeline.run(frame, cpu)
        assert (got.action, got.reason, got.module, got.rule_id) == \
            (want.action, want.reason, MODULES.get(want.reason, "policy"), want.rule_id), \
            (in_force, policy.rules, fields)


@st.composite
def frames(draw) -> list[bytes]:
    """Packets between the hosts entries name, and the generated kind."""
    out = draw(st.lists(packets(), min_size=5, max_size=10))
    for _ in range(draw(st.integers(15, 25))):
        family = draw(st.sampled_from([4, 6]))
        pool = [h for h in HOSTS if (":" in h) == (family == 6)]
        ip = (IP if family == 4 else IPv6)(src=draw(st.sampled_from(pool)), dst=draw(st.sampled_from(pool)))
        l4 = draw(st.sampled_from([TCP(dport=80, flags="S"), UDP(dport=53)]))
        out.append(bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / ip / l4))
    return out


@settings(max_examples=150, **SETTINGS)
@given(live_cases(), frames())
def test_live_entries_equal_the_policy_holding_them(pipeline, cpu, case, frames):
    data, entries, removed = case
    pipeline.apply(configure(parse_policy(data, "generated.yaml", ".")))
    index = pipeline.live
    entries = [e for e in entries if index.in_place(e[0])]
    in_force = _lay(pipeline, entries)
    _same(pipeline, cpu, data, in_force, frames)
    # Some taken off again: the others stay, the rest is as compiled.
    kept = [e for i, e in enumerate(entries) if i not in removed]
    gone = {e[1] for i, e in enumerate(entries) if i in removed}
    changes = {}
    for addr in gone:
        left = tuple(sorted((n, 1 if x else 0) for n, a, x in kept if a == addr))
        changes[host_key(ipaddress.ip_network(addr))] = Membership(left) if left else None
    for lookup in index.lookups.values():
        lay_over(pipeline.maps, lookup, changes)
    _same(pipeline, cpu, data, [(n, a) for n, a, x in kept if not x], frames)


def test_most_generated_sets_take_entries_in_place(pipeline):
    # A set named beside negated items of a rule cannot: everything else can.
    data = {"version": 1, "default_action": "pass",
            "sets": {"a": {"type": "prefix", "entries": ["192.0.2.0/24"]},
                     "b": {"type": "prefix", "entries": ["198.51.100.0/24"]}},
            "rules": [{"name": "x", "action": "drop", "match": {"src": ["@a", "!203.0.113.0/24"]}},
                      {"name": "y", "action": "drop", "match": {"dst": "!@b"}}],
            "fastpath": {"deny": ["@b"]}}
    pipeline.apply(configure(parse_policy(data, "p.yaml", ".")))
    assert not pipeline.live.in_place("a")
    assert pipeline.live.in_place("b")
    assert pipeline.live.reads == {"a": {"src"}, "b": {"src", "dst"}}
