"""Hypothesis strategies for the peer tests: policies whose rules share shapes (what
merging into lookups is for), and policies of the kind xdp-filter can express. Addresses
are documentation ranges only."""

from __future__ import annotations

from hypothesis import strategies as st

from shieldwall.policy import parse_policy


@st.composite
def same_shape_policies(draw):
    """Runs of rules of a few shapes with mixed verdicts: what merging is for."""
    shapes = [
        lambda: {"src": draw(st.sampled_from(["198.51.100.0/24", "198.51.100.0/30",
                                              "203.0.113.0/24", "2001:db8::/48", "192.0.2.7"]))},
        lambda: {"dst": draw(st.sampled_from(["192.0.2.1", "192.0.2.0/25", "2001:db8::1"])),
                 "proto": draw(st.sampled_from(["tcp", "udp"])),
                 "dport": draw(st.sampled_from(["53", "80", "443", "1000-2000", "!80"]))},
        lambda: {"proto": draw(st.sampled_from(["tcp", "udp", ["tcp", "udp"]])),
                 "dport": draw(st.sampled_from(["53", "80", "0-1023", "1500"]))},
    ]
    rules = []
    for i in range(draw(st.integers(2, 24))):
        rules.append({"name": f"m{i}", "match": draw(st.sampled_from(shapes))(),
                      "action": draw(st.sampled_from(["pass", "drop", "drop", "count"]))})
    return parse_policy({"version": 1, "default_action": draw(st.sampled_from(["pass", "drop"])),
                         "rules": rules}, "merge.yaml", ".")


XDP_V4 = ["192.0.2.7/32", "198.51.100.0/30", "203.0.113.200/29", "192.0.2.128/28"]
XDP_V6 = ["2001:db8::1/128", "2001:db8::/126", "2001:db8:1::7/128"]
XDP_PORTS = ["53", "80", "443", "1500", "1020-1030", "0"]


@st.composite
def xdp_policies(draw):
    """Rules of one field (small prefixes, few ports) whose verdict is mostly the opposite
    of default_action, now and then a counting rule or one of the other verdict."""
    default = draw(st.sampled_from(["pass", "drop"]))
    hit = "drop" if default == "pass" else "pass"
    addrs = st.lists(st.sampled_from(XDP_V4 + XDP_V6), min_size=1, max_size=3, unique=True)
    rules = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["src", "dst", "port", "port", "count", "other"]))
        if kind in ("src", "dst", "other"):
            match = {"dst" if kind == "dst" else "src": draw(addrs)}
        else:
            match = {draw(st.sampled_from(["sport", "dport"])):
                     draw(st.lists(st.sampled_from(XDP_PORTS), min_size=1, max_size=2))}
            proto = draw(st.sampled_from([None, "tcp", "udp", ["tcp", "udp"]]))
            if proto:
                match["proto"] = proto
        action = {"count": "count", "other": default}.get(kind, hit)
        rules.append({"name": f"x{i}", "match": match, "action": action})
    fastpath = {}
    if draw(st.booleans()):
        listed = draw(st.lists(st.sampled_from(XDP_V4 + XDP_V6), max_size=2, unique=True))
        split = draw(st.integers(0, len(listed)))
        fastpath = {"allow": listed[:split], "deny": listed[split:]}
    return parse_policy({"version": 1, "default_action": default, "rules": rules,
                         "fastpath": fastpath}, "xdp.yaml", ".")
