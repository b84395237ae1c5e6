"""The stages a chain can hold. Their order in a chain is configuration."""

from __future__ import annotations

from dataclasses import dataclass

from .. import abi


@dataclass(frozen=True)
class StageSpec:
    name: str        # what the configuration calls it
    object: str      # build/bpf/<object>.bpf.o
    program: str     # the XDP program in that object
    module: int      # SW_MOD_* it reports when it decides
    maps: dict[str, tuple[str, str]]  # its own maps: name -> (key type, value type)


STAGES: dict[str, StageSpec] = {
    "fastpath": StageSpec("fastpath", "fastpath", "sw_stage_fastpath", abi.SW_MOD_FASTPATH,
                          {"sw_fastpath": ("struct sw_lpm_key", "struct sw_fastpath_entry")}),
    "policy": StageSpec("policy", "policy", "sw_stage_policy", abi.SW_MOD_POLICY, {
        # Generation slots of the ruleset's inner maps (dataplane.classifier).
        "sw_pol_keys": ("__u32", "__u32"),
        "sw_pol_src": ("__u32", "__u32"),
        "sw_pol_dst": ("__u32", "__u32"),
        "sw_pol_vecs": ("__u32", "__u32"),
        "sw_pol_meta": ("__u32", "struct sw_pol_meta"),
        "sw_pol_state": ("__u32", "struct sw_pol_state"),
        "sw_pol_hits": ("__u32", "struct sw_rule_counter"),
        "sw_pol_names": ("__u32", "struct sw_rule_name"),
        "sw_pol_cache": ("__u32", "struct sw_pol_cache_slot"),
    }),
}

DEFAULT_CHAIN = ("fastpath", "policy")

# The maps of the root that every stage shares.
SHARED_MAPS: dict[str, tuple[str, str]] = {
    "sw_scratch": ("__u32", "struct sw_pkt"),
    "sw_counters": ("__u32", "struct sw_counter"),
    "sw_config": ("__u32", "struct sw_config"),
    "sw_stages": ("__u32", "__u32"),
}


def map_types() -> dict[str, tuple[str, str]]:
    """Every pinned map of a pipeline and its C types."""
    types = dict(SHARED_MAPS)
    for spec in STAGES.values():
        types.update(spec.maps)
    return types
