"""Hypothesis strategies for policies and for packets that hit their rules' values.

Policies come out as YAML-shaped data and go through the real loader, so every one is a
valid policy. Values are drawn from small pools that overlap on purpose: nested prefixes,
ranges that share endpoints, sets that hold literal prefixes of other rules. Addresses
are documentation ranges only.
"""

from __future__ import annotations

from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NS, IPv6, IPv6ExtHdrDestOpt,
                                IPv6ExtHdrFragment, IPv6ExtHdrHopByHop)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from shieldwall.policy import Policy, parse_policy

PREFIXES_V4 = ["192.0.2.0/24", "192.0.2.0/25", "192.0.2.128/26", "192.0.2.7/32",
               "198.51.100.0/24", "198.51.100.0/30", "203.0.113.0/24", "203.0.113.200/29"]
PREFIXES_V6 = ["2001:db8::/32", "2001:db8::/48", "2001:db8:1::/48", "2001:db8::1/128",
               "2001:db8:ffff::/64", "2001:db8:1:2::/64"]
ADDRESSES_V4 = ["192.0.2.1", "192.0.2.7", "192.0.2.130", "192.0.2.200", "198.51.100.2",
                "198.51.100.9", "203.0.113.5", "203.0.113.201"]
# ::ffff:192.0.2.7 is an IPv6 packet's source spelled like an IPv4 address: the tries key
# IPv4 that way, so it must match no IPv4 prefix, in the fastpath or the rules.
ADDRESSES_V6 = ["2001:db8::1", "2001:db8::2", "2001:db8:1::7", "2001:db8:1:2::9",
                "2001:db8:ffff::42", "2001:db8:abcd::1", "::ffff:192.0.2.7"]

PORTS = ["53", "80", "443", "1024-65535", "0-1023", "1000-2000", "1500", "-100", "8080-"]
PROTOS = ["tcp", "udp", "icmp", "icmpv6", "gre", "0-16", "17", "50-60"]
ICMP_NUMBERS = ["0", "8", "128", "133", "133-137", "135", "0-10", "200-"]
LENGTHS = ["0-100", "100-", "60-80", "28", "48-120", "-1500"]
TTLS = ["64", "0-10", "100-", "1", "255", "2-254"]
VLANS = ["10", "100-200", "0", "4095", "1-4094"]
TCP_FLAGS = ["SYN", "SYN,!ACK", "ACK", "!SYN", "FIN,!ACK", "RST", "SYN,ACK,!URG"]
ACTIONS = ["pass", "drop", "count", "monitor"]


def _listed(values: list[str], negatable: bool = True) -> st.SearchStrategy:
    item = st.sampled_from(values)
    if negatable:
        item = st.tuples(st.booleans(), item).map(lambda t: f"!{t[1]}" if t[0] else t[1])
    return st.one_of(item, st.lists(item, min_size=1, max_size=3))


@st.composite
def _match(draw, sets: list[str]) -> dict:
    addresses = PREFIXES_V4 + PREFIXES_V6 + [f"@{name}" for name in sets]
    fields = {
        "src": _listed(addresses), "dst": _listed(addresses), "proto": _listed(PROTOS),
        "sport": _listed(PORTS), "dport": _listed(PORTS), "icmp_type": _listed(ICMP_NUMBERS),
        "icmp_code": _listed(["0", "1-3", "3"]), "length": _listed(LENGTHS),
        "ttl": _listed(TTLS), "vlan": _listed(VLANS), "tcp_flags": st.sampled_from(TCP_FLAGS),
        "fragment": st.sampled_from(["any", "first", "non_first"]),
        "family": st.sampled_from(["ipv4", "ipv6"]),
    }
    # Few empty matches: a rule matching everything would hide the rules after it.
    size = draw(st.sampled_from([0] + [1] * 6 + [2] * 7 + [3] * 6))
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=size, max_size=size,
                           unique=True))
    return {name: draw(fields[name]) for name in chosen}


@st.composite
def state_policies(draw, max_rules: int = 8) -> Policy:
    """Generated policies whose rules read `state` here and there (one always does)."""
    data = draw(policy_data(max_rules))
    rules = data["rules"] or [{"name": "r1", "action": "pass", "match": {}}]
    for rule in rules:
        if draw(st.booleans()):
            rule["match"]["state"] = draw(st.sampled_from(["established", "new"]))
    rules[draw(st.integers(0, len(rules) - 1))]["match"].setdefault("state", "established")
    data["rules"] = rules
    return parse_policy(data, "generated.yaml", ".")


def policies(max_rules: int = 12) -> st.SearchStrategy:
    return policy_data(max_rules).map(lambda data: parse_policy(data, "generated.yaml", "."))


@st.composite
def policy_data(draw, max_rules: int = 12) -> dict:
    """A policy as the YAML-shaped data the loader reads."""
    set_names = [f"s{i}" for i in range(draw(st.integers(0, 2)))]
    pool = st.sampled_from(PREFIXES_V4 + PREFIXES_V6)
    sets = {name: {"type": "prefix", "entries": draw(st.lists(pool, min_size=1, max_size=4))}
            for name in set_names}
    rules = [{"name": f"r{i + 1}", "action": draw(st.sampled_from(ACTIONS)),
              "match": draw(_match(set_names))}
             for i in range(draw(st.integers(0, max_rules)))]
    fastpath = {}
    if draw(st.integers(0, 3)) == 0:
        listed = draw(st.lists(pool, max_size=3, unique=True))
        split = draw(st.integers(0, len(listed)))
        fastpath = {"allow": listed[:split], "deny": listed[split:]}
    return {"version": 1, "default_action": draw(st.sampled_from(["pass", "drop"])),
            "sets": sets, "rules": rules, "fastpath": fastpath}


@st.composite
def _upper(draw, family: int):
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "nd", "gre", "none"]))
    port = st.sampled_from([0, 53, 80, 99, 443, 1023, 1024, 1500, 2000, 8080, 65535])
    if kind == "tcp":
        return TCP(sport=draw(port), dport=draw(port), flags=draw(st.integers(0, 255)))
    if kind == "udp":
        return UDP(sport=draw(port), dport=draw(port))
    if kind == "icmp" and family == 4:
        return ICMP(type=draw(st.sampled_from([0, 8, 11, 133, 255])), code=draw(st.integers(0, 3)))
    if kind == "icmp":
        return ICMPv6EchoRequest()
    if kind == "nd" and family == 6:
        return ICMPv6ND_NS(tgt="2001:db8::1")
    if kind == "gre":
        return Raw(b"\x00" * 8)
    return None


@st.composite
def packets(draw) -> bytes:
    """An Ethernet frame the root parses without error, with values the pools name."""
    frame = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    for _ in range(draw(st.integers(0, 2))):
        tag = draw(st.sampled_from([Dot1Q, Dot1AD]))
        frame = frame / tag(vlan=draw(st.sampled_from([0, 10, 150, 4095])))
    family = draw(st.sampled_from([4, 6]))
    ttl = draw(st.sampled_from([0, 1, 64, 128, 255]))
    upper = draw(_upper(family))
    if family == 4:
        frag = draw(st.sampled_from([(0, 0), (0, 0), (1, 0), (0, 100), (1, 100)]))
        ip = IP(src=draw(st.sampled_from(ADDRESSES_V4)), dst=draw(st.sampled_from(ADDRESSES_V4)),
                ttl=ttl, flags=frag[0], frag=frag[1])
        if frag[1]:  # no layer 4 in a later fragment, whatever the protocol
            ip.proto = draw(st.sampled_from([6, 17, 47]))
            upper = Raw(b"\x00" * 8)
        elif upper is None or isinstance(upper, Raw):
            ip.proto = draw(st.sampled_from([47, 50]))
        frame = frame / ip
    else:
        frame = frame / IPv6(src=draw(st.sampled_from(ADDRESSES_V6)),
                             dst=draw(st.sampled_from(ADDRESSES_V6)), hlim=ttl)
        for ext in draw(st.lists(st.sampled_from(["hop", "dst", "frag"]), max_size=2)):
            if ext == "frag":
                offset = draw(st.sampled_from([0, 0, 9]))
                frame = frame / IPv6ExtHdrFragment(offset=offset, m=draw(st.integers(0, 1)))
                if offset:
                    upper = Raw(b"\x00" * 8)
                    break
            else:
                frame = frame / (IPv6ExtHdrHopByHop() if ext == "hop" else IPv6ExtHdrDestOpt())
        if isinstance(upper, Raw) and not frame.haslayer(IPv6ExtHdrFragment):
            frame[IPv6].lastlayer().nh = 47  # a protocol the parser does not read
    if upper is not None:
        frame = frame / upper
    return bytes(frame / Raw(b"p" * draw(st.sampled_from([0, 10, 60, 120]))))


# Large policies: hundreds or thousands of rules over the same pools, built by a seeded
# generator (hypothesis draws the seed and the size), so the examples stay cheap to draw
# and still overlap: nested prefixes, shared ports and ranges, negations, every action.
_LARGE_SHAPES = [("src",), ("dst", "proto", "dport"), ("src", "proto", "dport"), ("proto", "sport"),
                 ("dst",), ("proto", "tcp_flags"), ("length", "ttl"), ("src", "dst"),
                 ("proto", "dport", "length"), ("icmp_type", "proto"), ("vlan",), ("fragment",)]


def _large_value(rnd, name: str, hosts: list[str]) -> object:
    if name in ("src", "dst"):
        pick = rnd.random()
        if pick < 0.5:
            return rnd.choice(hosts)
        value = rnd.choice(PREFIXES_V4 + PREFIXES_V6)
        return f"!{value}" if pick > 0.95 else value
    pools = {"proto": ["tcp", "udp", "icmp", "icmpv6", "17", "0-16"], "sport": PORTS,
             "dport": PORTS + [str(p) for p in (22, 25, 53, 123, 8443, 9000, 1500, 2000)],
             "length": LENGTHS, "ttl": TTLS, "icmp_type": ICMP_NUMBERS, "vlan": VLANS,
             "tcp_flags": TCP_FLAGS, "fragment": ["any", "first", "non_first"]}
    value = rnd.choice(pools[name])
    if name not in ("tcp_flags", "fragment") and rnd.random() < 0.05:
        return [f"!{value}"]
    return value


@st.composite
def large_policies(draw, min_rules: int = 513, max_rules: int = 1500) -> Policy:
    import random
    rnd = random.Random(draw(st.integers(0, 2**32)))
    count = draw(st.integers(min_rules, max_rules))
    hosts = ADDRESSES_V4 + ADDRESSES_V6[:-1] + [f"192.0.2.{i}" for i in range(0, 256, 3)] + \
        [f"2001:db8:1::{i:x}" for i in range(0, 600, 7)]
    rules = []
    for i in range(count):
        shape = rnd.choice(_LARGE_SHAPES)
        action = rnd.choice(["pass", "drop", "drop", "count", "monitor"] if rnd.random() < 0.1
                            else ["pass", "drop"])
        rules.append({"name": f"r{i + 1}", "action": action,
                      "match": {name: _large_value(rnd, name, hosts) for name in shape}})
    data = {"version": 1, "default_action": rnd.choice(["pass", "drop"]), "rules": rules}
    return parse_policy(data, "large.yaml", ".")
