"""From a policy file to what the data plane is configured with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .dataplane.pipeline import PipelineConfig
from .dataplane.stages import DEFAULT_CHAIN
from .policy.compile import compile_policy
from .policy.load import load_policy
from .policy.model import Policy, expand

# An LPM trie node holding a 20-byte key and a 4-byte value, with the kernel's overhead.
LPM_ENTRY_BYTES = 96


@dataclass(frozen=True)
class Config:
    policy: Policy | None
    pipeline: PipelineConfig

    def rule_name(self, rule_id: int) -> str | None:
        if not rule_id or self.policy is None:
            return None
        for rule in self.policy.rules:
            if rule.id == rule_id:
                return rule.name
        return f"#{rule_id}"


    def map_summary(self) -> list[str]:
        """The kernel maps this configuration fills, with entries and memory."""
        fastpath = len(self.pipeline.fastpath_allow) + len(self.pipeline.fastpath_deny)
        lines = [f"sw_fastpath: {fastpath} prefixes, ~{fastpath * LPM_ENTRY_BYTES // 1024} KiB"]
        image = self.pipeline.policy_image
        if image is not None:
            prefixes = sum(len(trie) for trie in image.tries.values())
            classes = sum(f.classes for f in image.fields)
            size = image.array_bytes + prefixes * LPM_ENTRY_BYTES
            lines.append(f"sw_pol_*: {image.rules} rules, {classes} classes, {prefixes} "
                         f"prefixes, ~{size // 1024} KiB")
        return lines


def load_config(path: Path | None) -> Config:
    """The built-in defaults without a file; otherwise the validated policy."""
    if path is None:
        return Config(None, PipelineConfig(chain=()))
    policy = load_policy(path)
    allow, deny = tuple(expand(policy.fastpath.allow)), tuple(expand(policy.fastpath.deny))
    # A stage with nothing to do would still cost a tail call per packet.
    busy = {"fastpath": bool(allow or deny), "policy": True}
    chain = policy.pipeline.stages
    if chain is None:
        chain = tuple(stage for stage in DEFAULT_CHAIN if busy[stage])
    return Config(policy, PipelineConfig(
        chain=chain,
        missed_action=policy.pipeline.on_missing_stage,
        fastpath_allow=allow,
        fastpath_deny=deny,
        policy_image=compile_policy(policy),
    ))
