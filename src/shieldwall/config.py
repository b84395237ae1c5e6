"""From a policy file to what the data plane is configured with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from .dataplane.pipeline import EventsConfig, PipelineConfig
from .policy.load import load_policy
from .policy.model import Policy
from .policy.reference import chain
from .stages import stages


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
        """What each stage's maps will hold and what a packet costs there."""
        registry = stages()
        return [line for name in self.pipeline.chain
                for line in registry[name].describe(self.pipeline.images[name])]


def configure(policy: Policy) -> PipelineConfig:
    """The pipeline a validated policy asks for: its chain, and each chain stage's image
    (ValueError when a stage's maps could not hold its part)."""
    names = chain(policy)
    registry = stages()
    images = {name: registry[name].image(policy.sections[name]) for name in names}
    events = policy.events
    return PipelineConfig(chain=names, missed_action=policy.pipeline.on_missing_stage,
                          images=MappingProxyType(images),
                          events=EventsConfig(events.rate, events.drops, events.passes))


def load_config(path: Path) -> Config:
    """The validated policy of a file, and its pipeline configuration."""
    policy = load_policy(path)
    return Config(policy, configure(policy))


def default_config() -> Config:
    """No policy: the root alone, which passes every packet it parses (end_of_chain)."""
    return Config(None, PipelineConfig())
