"""From a policy file to what the data plane is configured with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .dataplane.pipeline import PipelineConfig
from .dataplane.stages import STAGES
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
        return [f"sw_fastpath: {fastpath} prefixes, ~{fastpath * LPM_ENTRY_BYTES // 1024} KiB"]


def load_config(path: Path | None, for_kernel: bool = True) -> Config:
    """The built-in defaults without a file; otherwise the validated policy."""
    if path is None:
        return Config(None, PipelineConfig())
    policy = load_policy(path)
    if for_kernel and policy.rules and "policy" not in STAGES:
        # Never let an operator believe rules protect a host when nothing enforces them.
        raise ValueError(f"{path}: this data plane has no policy stage yet; only the "
                         "fastpath lists and the pipeline settings can be applied, so "
                         "remove the rules or use a build with the policy stage")
    return Config(policy, PipelineConfig(
        missed_action=policy.pipeline.on_missing_stage,
        fastpath_allow=tuple(expand(policy.fastpath.allow)),
        fastpath_deny=tuple(expand(policy.fastpath.deny)),
    ))
