"""Peer configurations written by hand rather than translated from a shieldwall policy:
for what shieldwall's policy cannot say yet (rate limits), the attack scenarios give
each peer its own rules, as expressions of the tool (lab/scenarios.py). This module
wraps them into what the installers of nftables.py and iptables.py take, so they are
installed, counted and removed exactly like translated ones.

Every rule drops what it matches and counts it under its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .iptables import IptablesConfig
from .nftables import DEFAULT_PRIORITY, NftRuleset

TABLE = "sw_scen"
CHAIN = "SW_SCEN"


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
