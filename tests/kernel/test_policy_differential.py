"""The policy stage against the reference model (policy.reference.evaluate) on generated
policies and packets: same action, reason and deciding rule, and the same rule counters.

One pipeline serves every example: each policy is installed as a new generation, so the
test also switches rulesets under a warm decision cache. Every packet list is run twice,
and packets of a list share classes, so cached and uncached decisions are both compared.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.model.parse import parse
from shieldwall.policy import evaluate
from shieldwall.policy.compile import compile_policy
from shieldwall.policy.model import expand

from ..policy_strategies import packets, policies

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def pipeline():
    with Pipeline.load(PipelineConfig()) as p:
        yield p


def configure(policy) -> PipelineConfig:
    return PipelineConfig(fastpath_allow=tuple(expand(policy.fastpath.allow)),
                          fastpath_deny=tuple(expand(policy.fastpath.deny)),
                          policy_image=compile_policy(policy))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.data_too_large])
@given(policies(), st.lists(packets(), min_size=20, max_size=30))
def test_policy_stage_equals_reference(pipeline, cpu, policy, frames):
    pipeline.apply(configure(policy))
    # Counters follow rule names from earlier examples: compare what this one adds.
    base = pipeline.rule_counters()
    ids = {rule.name: rule.id for rule in policy.rules}
    hits: Counter[int] = Counter()
    would_drop: Counter[int] = Counter()
    for frame in frames * 2:
        fields, root = parse(frame)
        assert root is None
        want = evaluate(policy, fields)
        got = pipeline.run(frame, cpu)
        module = "fastpath" if want.reason in ("allowlisted", "blocklisted") else "policy"
        assert (got.action, got.reason, got.module, got.rule_id) == \
            (want.action, want.reason, module, want.rule_id), policy.rules
        if module == "policy":
            hits.update(ids[name] for name in want.counted)
            hits[want.rule_id] += 1  # 0: decided by default_action
            would_drop.update(ids[name] for name in want.would_drop)
    counters = pipeline.rule_counters()
    added = {i: c.packets - base[i].packets for i, c in counters.items()}
    added_would = {i: c.would_drop - base[i].would_drop for i, c in counters.items()}
    assert {i: n for i, n in added.items() if n} == dict(hits)
    assert {i: n for i, n in added_would.items() if n} == dict(would_drop)
