"""Which stage each verdict reason belongs to.

The data plane counts verdicts by (action, reason), not by stage: a stage label read
from the packet would need the module in the counter index, a bigger map and a wider
hot path. It is not needed: every reason code is given by exactly one module
(bpf/include/shieldwall.h, SW_MOD_*), so the stage is a function of the reason.
tests/unit/test_reasons_stage.py reads every sw_finish() of the BPF sources and fails
if a reason ever comes from two modules, or from one this table does not name.

The limit stage's pass of a rule's packet within its limit carries reason `rule` and
module `policy` on purpose (the rule decided; the limit let it through), so `rule` is
the policy stage's in both directions.
"""

from __future__ import annotations

from .. import abi

# The parser and the chain's own outcomes are the root's.
_ROOT = ("none", "end_of_chain", "non_ip", "truncated_eth", "truncated_vlan", "vlan_too_deep",
         "truncated_ipv4", "bad_ipv4_header", "bad_ipv4_length", "truncated_ipv6",
         "bad_ipv6_length", "bad_ipv6_header", "truncated_ipv6_ext", "ipv6_ext_too_deep",
         "truncated_l4", "bad_tcp_header", "missed_stage")

STAGE_OF_REASON: dict[str, str] = {
    **{r: "root" for r in _ROOT},
    "allowlisted": "fastpath", "blocklisted": "fastpath",
    "rule": "policy", "default": "policy", "nd_protected": "policy",
    "bad_tcp_flags": "protect", "land": "protect", "bogon_source": "protect",
    "fragment_overlap": "protect", "ipv4_options": "protect", "ipv6_rh0": "protect",
    "zero_port": "protect",
    "rate_limited": "limit", "blocked": "limit",
    "bad_cookie": "syn", "syn_cookie": "syn", "syn_challenge": "syn",
    "syn_authenticated": "syn", "syn_unanswerable": "syn",
    "reflection": "reflection", "reflector_limited": "reflection",
    "reflection_fragment": "reflection",
    "icmp_unrelated": "icmp", "icmp_limited": "icmp",
}

# The stage names are the header's module names.
assert set(STAGE_OF_REASON.values()) <= set(abi.MODULE_NAMES.values())

UNKNOWN = "unknown"


def stage_of(reason: str) -> str:
    """The stage that gives `reason`; "unknown" for a code this build does not name
    (a newer data plane's, read by an older control plane)."""
    return STAGE_OF_REASON.get(reason, UNKNOWN)
