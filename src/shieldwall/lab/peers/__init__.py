"""Peers measured on the same veth path as shieldwall, each given the policy shieldwall
enforces, written as an expert in that tool would write it for speed:

- nftables at the netdev ingress hook (`nftables_ruleset`, `nftables_policy`);
- iptables/ip6tables with ipset in the raw table's PREROUTING (`iptables_rules`,
  `iptables_policy`);
- xdp-filter from xdp-tools (`xdp_filter_config`, `xdp_filter_policy`), for the policies
  it can express.

Each translator returns the tool's configuration, or a `NotExpressible` note naming what
the tool cannot say. Each `*_policy` context manager installs a translation on the lab's
server interface, inside its namespace, and removes exactly what it installed; given a
policy its tool cannot express, it raises NotExpressibleError. What it yields is a
handle that reads the peer's own counters where it has them, and called, returns the
frames that have reached the interface so far (what a rate is measured on).

Every translation decides like `shieldwall.policy.reference.evaluate` for the frames
shieldwall parses, except where the tool cannot see what shieldwall sees: those
differences are listed in each module's DIFFERENCES and in the configuration's
`differences`, and tested as such. Frames shieldwall's parser refuses as malformed
(docs/parsing.md) are not the policy's business, and peers are not asked to drop them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from ...policy import Policy, parse_policy
from ..topology import LabTopology
from . import iptables as _iptables
from . import nftables as _nftables
from . import xdpfilter as _xdpfilter
from .common import NotExpressible, NotExpressibleError
from .iptables import IptablesConfig, IptablesInstalled, iptables_rules
from .nftables import NftInstalled, NftRuleset, nftables_ruleset
from .xdpfilter import XdpFilterConfig, XdpFilterInstalled, xdp_filter_config

__all__ = [
    "NotExpressible", "NotExpressibleError",
    "nftables_ruleset", "NftRuleset", "nftables_policy", "NftInstalled",
    "iptables_rules", "IptablesConfig", "iptables_policy", "IptablesInstalled",
    "xdp_filter_config", "XdpFilterConfig", "xdp_filter_policy", "XdpFilterInstalled",
    "xdp_filter", "nftables_ingress",
]


@contextmanager
def nftables_policy(topo: LabTopology, policy: Policy, *, counters: bool = False,
                    table: str = _nftables.DEFAULT_TABLE) -> Iterator[NftInstalled]:
    """The policy as an nftables netdev ingress table on the server interface."""
    ruleset = nftables_ruleset(policy, topo.server_if, table=table, counters=counters)
    with _nftables.installed(topo.server_ns, ruleset) as handle:
        yield handle


@contextmanager
def iptables_policy(topo: LabTopology, policy: Policy, *, backend: str = "legacy",
                    counters: bool = False) -> Iterator[IptablesInstalled]:
    """The policy as raw-table PREROUTING rules and ipsets for the server interface;
    `backend` is "legacy" (x_tables) or "nft" (iptables-nft)."""
    config = iptables_rules(policy, topo.server_if, counters=counters)
    with _iptables.installed(topo.server_ns, config, backend) as handle:
        yield handle


@contextmanager
def xdp_filter_policy(topo: LabTopology, policy: Policy, *, xdp_mode: str = "native",
                      strict: bool = True,
                      max_entries: int = _xdpfilter.DEFAULT_MAX_ENTRIES
                      ) -> Iterator[XdpFilterInstalled]:
    """The policy as xdp-filter on the server interface."""
    config = xdp_filter_config(policy, topo.server_if, xdp_mode=xdp_mode, strict=strict,
                               max_entries=max_entries)
    with _xdpfilter.installed(topo.server_ns, config) as handle:
        yield handle


def _drop_sources_policy(sources: list[str]) -> Policy:
    return parse_policy({"version": 1, "default_action": "pass", "rules": [
        {"name": "drop-flood", "match": {"src": list(sources)}, "action": "drop"}]},
        "(peers)", ".")


@contextmanager
def xdp_filter(topo: LabTopology, sources: list[str]) -> Iterator[None]:
    """xdp-filter in native mode dropping each source address (a one-rule policy)."""
    policy = _drop_sources_policy(sources)
    with xdp_filter_policy(topo, policy, max_entries=max(len(sources), 1)):
        yield None  # arrivals: the driver's XDP statistics, as for any XDP program


@contextmanager
def nftables_ingress(topo: LabTopology, prefix: str) -> Iterator[Callable[[], int]]:
    """nftables at netdev ingress dropping one source prefix, with a counter; yields a
    function returning the packets it dropped."""
    with nftables_policy(topo, _drop_sources_policy([prefix]), counters=True) as handle:
        yield lambda: handle.counters().get("drop-flood", 0)
