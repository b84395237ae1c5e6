"""Built-in policies for the benchmark: what an operator protecting a host writes, at any
size from 10 to 10,000 rules, with documentation addresses only.

`realistic(n)` is a default-drop policy:
- hygiene first: non-first fragments, SYN+FIN, TTL 0-1 dropped; ICMP errors and echo
  passed; big UDP answers from reflector ports dropped; DNS answers counted;
- the protected host's own services: SSH from the admin network, HTTP(S) and DNS;
- then, up to n rules, the kind of rules that pile up in a real ruleset: blocked
  sources (IPv4 hosts and networks, IPv6 /64s), services of other hosts of the site
  (destination, protocol, port), admin networks allowed to management ports, a few
  UDP port ranges, TCP rules on source port and flags.

The mix is seeded: the same n always gives the same policy. Traffic aimed at the
protected host from random sources matches almost none of the rules, which is what
makes a classifier show its worst case: every field looked at, no rule deciding early.
"""

from __future__ import annotations

import random
from typing import Any

from ..policy import Capacity, parse_policy
from ..policy.model import Policy

SERVICES = (22, 25, 53, 80, 110, 123, 143, 443, 465, 587, 993, 995, 3306, 5432, 6379,
            8080, 8443, 9000)
ADMIN_PORTS = (22, 3389, 5900)


def _hygiene(server_v4: str, server_v6: str) -> list[tuple[dict, str]]:
    return [
        ({"fragment": "non_first"}, "drop"),
        ({"proto": "tcp", "tcp_flags": "SYN,FIN"}, "drop"),
        ({"ttl": "0-1"}, "drop"),
        ({"proto": "icmp", "icmp_type": [0, 3, 8, 11]}, "pass"),
        ({"proto": "icmpv6", "icmp_type": [1, 2, 3, 128, 129]}, "pass"),
        ({"proto": "udp", "sport": [53, 123, 1900, 11211, 389], "length": "600-"}, "drop"),
        ({"proto": "udp", "sport": 53}, "count"),
        ({"src": ["203.0.113.0/26", "2001:db8:ad::/48"], "proto": "tcp", "dport": 22}, "pass"),
        ({"dst": [server_v4, server_v6], "proto": "tcp", "dport": [80, 443]}, "pass"),
        ({"dst": [server_v4, server_v6], "proto": "udp", "dport": 53}, "pass"),
    ]


def _filler(rnd: random.Random) -> tuple[dict, str]:
    kind = rnd.random()
    if kind < 0.35:  # a blocked source
        if rnd.random() < 0.3:
            return {"src": f"198.51.100.{rnd.randrange(256)}"}, "drop"
        return {"src": f"2001:db8:{rnd.randrange(0x100, 1 << 16):x}:{rnd.randrange(1 << 16):x}::/64"}, "drop"
    if kind < 0.80:  # a service of another host of the site
        if rnd.random() < 0.5:
            dst = f"192.0.2.{rnd.randrange(2, 256)}"
        else:
            dst = f"2001:db8:1::{rnd.randrange(2, 1 << 16):x}"
        port = rnd.choice(SERVICES) if rnd.random() < 0.6 else rnd.randrange(1024, 65536)
        return {"dst": dst, "proto": rnd.choice(["tcp", "tcp", "udp"]), "dport": port}, "pass"
    if kind < 0.90:  # an admin network
        src = rnd.choice([f"203.0.113.{rnd.randrange(64, 256, 8)}/29",
                          f"2001:db8:ad{rnd.randrange(1, 16):x}::/48"])
        return {"src": src, "proto": "tcp", "dport": rnd.choice(ADMIN_PORTS)}, "pass"
    if kind < 0.93:  # a small range of UDP ports of another host
        low = rnd.randrange(1024, 60000)
        return {"dst": f"192.0.2.{rnd.randrange(2, 256)}", "proto": "udp",
                "dport": f"{low}-{low + rnd.randrange(1, 64)}"}, "pass"
    return {"proto": "tcp", "sport": rnd.choice([80, 443]), "tcp_flags": "ACK",
            "dst": f"192.0.2.{rnd.randrange(2, 256)}"}, "pass"


def realistic_data(rules: int, server_v4: str = "192.0.2.1",
                   server_v6: str = "2001:db8:0:1::1", seed: int = 1) -> dict[str, Any]:
    """The policy document, as YAML would load it."""
    rnd = random.Random(seed)
    chosen = _hygiene(server_v4, server_v6)[:rules]
    while len(chosen) < rules:
        chosen.append(_filler(rnd))
    return {"version": 1, "default_action": "drop",
            "rules": [{"name": f"r{i + 1}", "match": m, "action": a} for i, (m, a) in enumerate(chosen)]}


def realistic(rules: int, server_v4: str = "192.0.2.1", server_v6: str = "2001:db8:0:1::1",
              seed: int = 1) -> Policy:
    """A validated realistic policy of `rules` rules."""
    return parse_policy(realistic_data(rules, server_v4, server_v6, seed),
                        f"built-in realistic policy ({rules} rules)", ".",
                        Capacity(rules=max(rules, Capacity().rules)))
