"""Peer configurations written by hand rather than translated from a shieldwall policy:
for what shieldwall's policy cannot say yet (rate limits), the attack scenarios give
each peer its own rules, as expressions of the tool (lab/scenarios.py). This module
wraps them into what the installers of nftables.py and iptables.py take, so they are
installed, counted and removed exactly like translated ones.

Every rule drops what it matches and counts it under its name.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ...kernel.netns import enter_netns

from .iptables import IptablesConfig
from .nftables import DEFAULT_PRIORITY, NftRuleset

TABLE = "sw_scen"
CHAIN = "SW_SCEN"
SYNPROXY_TABLE = "sw_scen_synproxy"
# What the kernel's SYNPROXY needs of the namespace: a lone ACK must not be picked up
# as a connection (it is the cookie's answer, for SYNPROXY to check), and timestamps on,
# where cookies keep the options.
SYNPROXY_SYSCTLS = {"net/netfilter/nf_conntrack_tcp_loose": "0", "net/ipv4/tcp_timestamps": "1"}


@dataclass(frozen=True)
class PeerRule:
    """One drop decision: nftables expressions at the netdev ingress hook (one rule
    each), and iptables/ip6tables matches in the raw table (None: that family needs
    none). Its name is the rules' comment, and so their counter's name."""

    nft: tuple[str, ...]
    ipt4: str | None
    ipt6: str | None


def nft_ruleset(rules: dict[str, PeerRule], device: str) -> NftRuleset:
    lines = [f'{expr} counter drop comment "{name}"'
             for name, rule in rules.items() for expr in rule.nft]
    body = "\n".join(f"    {line}" for line in lines)
    text = (f"table netdev {TABLE} {{\n  chain ingress {{\n"
            f'    type filter hook ingress device "{device}" priority {DEFAULT_PRIORITY}; policy accept;\n'
            f"{body}\n  }}\n}}\n")
    return NftRuleset(text, TABLE, device, counters=True)


def iptables_config(rules: dict[str, PeerRule], device: str) -> IptablesConfig:
    texts, chains = {}, {}
    for family, attr in ((4, "ipt4"), (6, "ipt6")):
        matches = [(name, getattr(rule, attr)) for name, rule in rules.items()
                   if getattr(rule, attr)]
        if not matches:
            texts[family] = ""
            continue
        chains[family] = (CHAIN,)
        lines = ["*raw", f":{CHAIN} - [0:0]", f"-A PREROUTING -i {device} -j {CHAIN}"]
        lines += [f"-A {CHAIN} {match} -m comment --comment {name} -j DROP"
                  for name, match in matches]
        texts[family] = "\n".join(lines + ["COMMIT"]) + "\n"
    return IptablesConfig("", texts[4], texts[6], device, chains, (), counters=True)


def synproxy_ruleset(device: str, ports: tuple[int, ...]) -> NftRuleset:
    """nftables' own SYN-flood defense, alone: SYNs to the ports leave connection
    tracking and SYNPROXY answers them with cookies; an ACK it finds valid completes
    the handshake with the server, anything else no connection knows is dropped.
    Counted under "syn" (SYNs answered), "cookie" (ACKs that reached SYNPROXY) and
    "invalid" (the drops)."""
    listed = ", ".join(str(p) for p in ports)
    text = (f"table inet {SYNPROXY_TABLE} {{\n"
            f"  chain pre {{\n"
            f"    type filter hook prerouting priority raw; policy accept;\n"
            f'    iifname "{device}" tcp dport {{ {listed} }} tcp flags & (fin|syn|rst|ack) == syn '
            f'counter notrack comment "syn"\n'
            f"  }}\n"
            f"  chain in {{\n"
            f"    type filter hook input priority filter; policy accept;\n"
            f'    iifname "{device}" tcp dport {{ {listed} }} ct state invalid,untracked counter '
            f'synproxy mss 1460 wscale 7 timestamp sack-perm comment "cookie"\n'
            f'    iifname "{device}" ct state invalid counter drop comment "invalid"\n'
            f"  }}\n}}\n")
    return NftRuleset(text, SYNPROXY_TABLE, device, counters=True, family="inet")


@contextmanager
def sysctls(netns: str, values: dict[str, str]) -> Iterator[None]:
    """The namespace's sysctls (paths under /proc/sys) set for a run, and put back as
    they were afterwards."""
    before: dict[str, str] = {}
    try:
        with enter_netns(netns):
            for name, value in values.items():
                path = Path("/proc/sys") / name
                before[name] = path.read_text().strip()
                path.write_text(value)
        yield
    finally:
        with enter_netns(netns):
            for name, value in before.items():
                (Path("/proc/sys") / name).write_text(value)
