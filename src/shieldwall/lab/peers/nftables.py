"""nftables as a benchmark peer: a shieldwall policy written as a netdev ingress table
(shieldwall.nft.ruleset writes it, the same writer `up --mode nft` uses), installed in a
lab namespace, its counters read, and removed."""

from __future__ import annotations

import json
import subprocess
from contextlib import contextmanager
from typing import Iterator

from ...nft import ir
from ...nft.ruleset import (DEFAULT_PRIORITY, DIFFERENCES, EXPR, Cond, NftPlan,
                            NftRuleset, RuleStep, Writer, plan)
from ...policy.model import Policy
from .common import Installed, NotExpressible, NotExpressibleError, run_in

PEER = "nftables"
DEFAULT_TABLE = "sw_peer"
# The writer's names, as the peer's own: what its tests and installers take.
__all__ = ["PEER", "DEFAULT_PRIORITY", "DEFAULT_TABLE", "DIFFERENCES", "EXPR", "Cond", "NftPlan",
           "NftRuleset", "RuleStep", "plan", "nftables_ruleset", "NftInstalled", "installed"]


def nftables_ruleset(policy: Policy, device: str, *, table: str = DEFAULT_TABLE,
                     counters: bool = False, priority: int = DEFAULT_PRIORITY
                     ) -> NftRuleset | NotExpressible:
    """The policy as one `netdev` table hooked at ingress on `device`.

    Every rule and list is expressible; only a stage other than the fastpath and the
    policy stage in the policy's chain is not. `differences` lists the documented
    differences from shieldwall that can apply to it (DIFFERENCES).
    """
    unknown = ir.stage_reasons(policy, "nftables")
    if unknown:
        return NotExpressible(PEER, tuple(unknown))
    p = plan(policy, counters)
    text = Writer(policy, table, device, priority).write(p)
    differences = [DIFFERENCES["qinq"]]
    if any(c.fragment is not None for c in ir.chain_clauses(policy, 6)):
        differences.append(DIFFERENCES["ipv6_fragment_headers"])
    return NftRuleset(text, table, device, counters, tuple(differences))


# --- installing it ----------------------------------------------------------------


def _nft(netns: str, args: list[str], stdin: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_in(netns, ["nft", *args], stdin, check, timeout=300)


class NftInstalled(Installed):
    """A ruleset loaded in a namespace; reads its counters while it is there."""

    def __init__(self, netns: str, ruleset: NftRuleset) -> None:
        super().__init__(netns, ruleset.device)
        self.ruleset = ruleset

    def counters(self) -> dict[str, int]:
        """Packets per rule name (and "(default)"), summed over both families; empty
        unless the ruleset was written with counters."""
        out = _nft(self.netns, ["-j", "list", "table", self.ruleset.family, self.ruleset.table]).stdout
        counts: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule or "comment" not in rule:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    name = rule["comment"]
                    counts[name] = counts.get(name, 0) + expr["counter"]["packets"]
        return counts


@contextmanager
def installed(netns: str, ruleset: NftRuleset | NotExpressible) -> Iterator[NftInstalled]:
    """Load the ruleset in `netns` and delete its table afterwards. The table must not
    exist yet: `create` refuses to merge into someone else's."""
    if isinstance(ruleset, NotExpressible):
        raise NotExpressibleError(ruleset)
    family = ruleset.family
    _nft(netns, ["-f", "-"], stdin=f"create table {family} {ruleset.table}\n{ruleset.text}")
    try:
        yield NftInstalled(netns, ruleset)
    finally:
        _nft(netns, ["delete", "table", family, ruleset.table], check=False)
