"""Attack scenarios, as data: for each attack of attacks.py, shieldwall's default
protection against it and what the peers (nftables, iptables) are given instead.

The server the lab's client uses offers HTTP on port 80 and a UDP service on port 53,
and nothing else; the client never pings and never sends fragments. A defense may know
that (it is the protected host's own configuration) but not the client's address: an
attack is "distinguishable" when some per-packet defense tells it apart without it.

Policies are built from named pieces (RULES, LIMITS, PEER_RULES), so a scenario is one
short definition and a new defense is one more piece.
"""

from __future__ import annotations

from dataclasses import dataclass

from .attacks import HTTP_PORT, UDP_PORT, Attack, attack
from .peers.written import PeerRule

# Every filter at its default (docs/defenses.md) but bogons: the lab's addresses, the
# client's included, are documentation space, which the bogon list holds.
PROTECT = {"tcp_flags": "drop", "land": "drop", "bogons": "off", "fragments": "drop",
           "ipv4_options": "monitor", "ipv6_rh0": "drop", "zero_ports": "drop"}

# shieldwall rules, by name. Each is a policy rule; the name is also its counter's.
RULES = {
    "udp-not-served": {"match": {"proto": "udp", "dport": f"!{UDP_PORT}"}, "action": "drop"},
    "no-echo-v4": {"match": {"proto": "icmp", "icmp_type": 8}, "action": "drop"},
    "no-echo-v6": {"match": {"proto": "icmpv6", "icmp_type": 128}, "action": "drop"},
    "no-fragments": {"match": {"fragment": "any"}, "action": "drop"},
}

# The limit stage's section (docs/defenses.md). Drops by it have the reasons
# rate_limited and blocked.
LIMITS = {
    "udp-per-source": {"per": "source", "prefix4": 32, "prefix6": 64, "pps": 1000,
                       "burst": 2000, "block": "60s"},
}
# Rules that apply a limit: name -> (match, limit).
LIMITED = {
    "udp": ({"proto": "udp"}, "udp-per-source"),
}


# Drops for the peers, by name (peers/written.py). Rate limits the way each tool says them: nftables meters (per source, a /64 for
# IPv6) and `limit`, iptables `hashlimit` above a rate (per source, or global).
PEER_RULES = {
    "udp-not-served": PeerRule((f"udp dport != {UDP_PORT}",),
                               f"-p udp ! --dport {UDP_PORT}", f"-p udp ! --dport {UDP_PORT}"),
    "no-echo": PeerRule(("icmp type echo-request", "icmpv6 type echo-request"),
                        "-p icmp --icmp-type echo-request",
                        "-p ipv6-icmp --icmpv6-type echo-request"),
    "no-fragments": PeerRule(("ip frag-off & 0x3fff != 0",),
                             "-m u32 --u32 4&0x3FFF=0x1:0x3FFF", None),
    # hashlimit's answer to a SYN flood: each source held to a rate (spoofed sources
    # never repeat, so it holds none of them).
    "syn-per-source": PeerRule(
        (f"tcp dport {HTTP_PORT} tcp flags & (fin|syn|rst|ack) == syn meter syn4 size 65535 "
         "{ ip saddr limit rate over 100/second burst 200 packets }",),
        f"-p tcp --syn --dport {HTTP_PORT} -m hashlimit --hashlimit-above 100/sec "
        "--hashlimit-burst 200 --hashlimit-mode srcip --hashlimit-name syn4",
        f"-p tcp --syn --dport {HTTP_PORT} -m hashlimit --hashlimit-above 100/sec "
        "--hashlimit-burst 200 --hashlimit-mode srcip --hashlimit-srcmask 64 "
        "--hashlimit-name syn6"),
    "echo-limit": PeerRule(
        ("icmp type echo-request limit rate over 1000/second burst 1000 packets",
         "icmpv6 type echo-request limit rate over 1000/second burst 1000 packets"),
        "-p icmp --icmp-type echo-request -m hashlimit --hashlimit-above 1000/sec "
        "--hashlimit-burst 1000 --hashlimit-name echo4",
        "-p ipv6-icmp --icmpv6-type echo-request -m hashlimit --hashlimit-above 1000/sec "
        "--hashlimit-burst 1000 --hashlimit-name echo6"),
    "udp-per-source": PeerRule(
        ("meta l4proto udp meter udp4 size 65535 { ip saddr limit rate over 1000/second "
         "burst 2000 packets }",
         "meta l4proto udp meter udp6 size 65535 { ip6 saddr and ffff:ffff:ffff:ffff:: "
         "limit rate over 1000/second burst 2000 packets }"),
        "-p udp -m hashlimit --hashlimit-above 1000/sec --hashlimit-burst 2000 "
        "--hashlimit-mode srcip --hashlimit-name udp4",
        "-p udp -m hashlimit --hashlimit-above 1000/sec --hashlimit-burst 2000 "
        "--hashlimit-mode srcip --hashlimit-srcmask 64 --hashlimit-name udp6"),
}


# Defenses under `protect:` of their own (docs/defenses.md), by name: their section.
PROTECT_STAGES = {
    "icmp": {},  # echo limited per type, unrelated errors dropped
    "reflection": {},  # UDP from reflector ports only as replies to the host's queries
    # SYNs to the web port answered from XDP with cookies; only an ACK with a valid
    # cookie, or of a connection, goes on.
    "syn": {"ports": [HTTP_PORT], "mode": "cookie"},
}

# The reflector source ports of the reflection stage's default list; the peers' rate
# limit per reflector. Neither peer can ask for "a reply to the host's own query": their
# hooks (nftables netdev ingress, iptables raw) run before connection tracking, where
# `ct state established` is unknown; a later hook would meet the flood after the stack
# has built an sk_buff and a conntrack entry for each of its packets.
REFLECTOR_PORTS = "19,53,111,123,161,389,1900,3702,5353,11211,37810"
PEER_RULES["reflectors-per-source"] = PeerRule(
    (f"udp sport {{ {REFLECTOR_PORTS.replace(',', ', ')} }} meter refl4 size 65535 {{ ip saddr "
     "limit rate over 100/second burst 200 packets }",
     f"udp sport {{ {REFLECTOR_PORTS.replace(',', ', ')} }} meter refl6 size 65535 {{ ip6 saddr "
     "limit rate over 100/second burst 200 packets }"),
    f"-p udp -m multiport --sports {REFLECTOR_PORTS} -m hashlimit --hashlimit-above 100/sec "
    "--hashlimit-burst 200 --hashlimit-mode srcip --hashlimit-name refl4",
    f"-p udp -m multiport --sports {REFLECTOR_PORTS} -m hashlimit --hashlimit-above 100/sec "
    "--hashlimit-burst 200 --hashlimit-mode srcip --hashlimit-name refl6")


@dataclass(frozen=True)
class Scenario:
    name: str                      # also the attack's name (attacks.ATTACKS)
    rules: tuple[str, ...] = ()    # RULES in force today
    limited: tuple[str, ...] = ()  # LIMITED rules
    peers: tuple[str, ...] = ()    # PEER_RULES; none: the peers are not run
    why: str = ""                  # why no defense tells the attack from the client
    protects: tuple[str, ...] = ()  # PROTECT_STAGES in force
    # The nftables peer is its SYNPROXY on these ports instead of PEER_RULES.
    synproxy: tuple[int, ...] = ()
    host_queries: bool = False     # the protected host's own DNS and NTP queries run too

    @property
    def distinguishable(self) -> bool:
        return not self.why

    @property
    def attack(self) -> Attack:
        return attack(self.name)


SCENARIOS = (
    Scenario("syn", protects=("syn",), peers=("syn-per-source",), synproxy=(HTTP_PORT,)),
    Scenario("syn-spoofed", protects=("syn",), peers=("syn-per-source",), synproxy=(HTTP_PORT,)),
    Scenario("syn-cookie-replay", protects=("syn",), peers=("syn-per-source",),
             synproxy=(HTTP_PORT,)),
    Scenario("ack", protects=("syn",), peers=("syn-per-source",), synproxy=(HTTP_PORT,)),
    Scenario("udp", rules=("udp-not-served",), peers=("udp-not-served",)),
    Scenario("heavy", limited=("udp",), peers=("udp-per-source",)),
    Scenario("slow", limited=("udp",), peers=("udp-per-source",),
             why=f"each source sends far less than the client, to the same UDP port {UDP_PORT}: "
             "a per-source limit never triggers, and a global one drops the client too"),
    Scenario("icmp", rules=("no-echo-v4", "no-echo-v6"), peers=("no-echo",)),
    Scenario("fragments", rules=("no-fragments",), peers=("no-fragments",)),
    # The peers limit echo requests per type (nftables `limit rate over`, iptables
    # hashlimit without a key: one bucket per type, as shieldwall's). Neither can tell a
    # forged error from a real one at ingress: nftables' netdev hook has no connection
    # state, and conntrack's RELATED (in the raw table's stead) only knows the flows it
    # tracked, not the host's sockets; so the forged errors reach the server's stack.
    Scenario("icmp-flood", protects=("icmp",), peers=("echo-limit",)),
    Scenario("mixed", rules=("no-fragments", "udp-not-served", "no-echo-v4", "no-echo-v6"),
             limited=("udp",), protects=("syn",),
             peers=("no-fragments", "udp-not-served", "no-echo", "udp-per-source"),
             why="in part: its slow share is not (see that scenario); its SYN, ACK, UDP, "
             "ICMP, fragment and heavy-hitter shares are"),
)
SCENARIOS += tuple(
    Scenario(name, protects=("reflection",), peers=("reflectors-per-source",), host_queries=True)
    for name in ("dns-amplification", "ntp-amplification", "memcached-amplification"))
BY_NAME = {s.name: s for s in SCENARIOS}


def shieldwall_policy(s: Scenario) -> dict:
    """The scenario's shieldwall policy document (what a policy file holds)."""
    rules = [{"name": name, **RULES[name]} for name in s.rules]
    doc: dict = {"version": 1, "default_action": "pass", "protect": dict(PROTECT)}
    doc["protect"].update({name: dict(PROTECT_STAGES[name]) for name in s.protects})
    if s.limited:
        used = {LIMITED[name][1] for name in s.limited}
        doc["limits"] = {name: dict(LIMITS[name]) for name in sorted(used)}
        rules += [{"name": name, "match": LIMITED[name][0], "action": {"limit": LIMITED[name][1]}}
                  for name in s.limited]
    doc["rules"] = rules
    return doc

