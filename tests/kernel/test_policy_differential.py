"""The whole pipeline (root, fastpath, policy) against the reference model on generated
policies and packets: same action, reason, module and deciding rule, and the same rule
counters.

One pipeline serves every example: each policy is applied as a fresh load that keeps
the state maps, as a reload does, so counters follow rule names from one ruleset to the
next and the test compares what each example adds.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shieldwall.config import configure
from shieldwall.policy import classifier
from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig
from shieldwall.model.parse import parse
from shieldwall.policy import evaluate
from shieldwall.stages.policy import rule_counters

from ..policy_strategies import large_policies, packets, policies

pytestmark = pytest.mark.kernel

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
MODULES = {"allowlisted": "fastpath", "blocklisted": "fastpath", "end_of_chain": "root"}


@pytest.fixture(scope="module")
def pipeline(hook):
    with Pipeline.load(PipelineConfig(hook=hook)) as p:
        yield p


def same_as_reference(pipeline, cpu, policy, frames) -> None:
    pipeline.apply(configure(policy))
    counters = lambda: rule_counters(pipeline.maps) if "policy" in pipeline.stages else {}
    base = counters()
    ids = {rule.name: rule.id for rule in policy.rules}
    hits: Counter[int] = Counter()
    would_drop: Counter[int] = Counter()
    for frame in frames:
        fields, root = parse(frame)
        assert root is None
        want = evaluate(policy, fields)
        got = pipeline.run(frame, cpu)
        module = MODULES.get(want.reason, "policy")
        assert (got.action, got.reason, got.module, got.rule_id) == \
            (want.action, want.reason, module, want.rule_id), policy.rules
        if module == "policy":
            hits.update(ids[name] for name in want.counted)
            hits[want.rule_id] += 1  # 0: decided by default_action
            would_drop.update(ids[name] for name in want.would_drop)
    after = counters()
    added = {i: c.packets - base[i].packets for i, c in after.items()}
    added_would = {i: c.would_drop - base[i].would_drop for i, c in after.items()}
    assert {i: n for i, n in added.items() if n} == dict(hits)
    assert {i: n for i, n in added_would.items() if n} == dict(would_drop)


@settings(max_examples=80, **SETTINGS)
@given(policies(), st.lists(packets(), min_size=20, max_size=30))
def test_pipeline_equals_reference(pipeline, cpu, policy, frames):
    # Small rulesets: most in direct mode (rules as program constants).
    same_as_reference(pipeline, cpu, policy, frames)


@settings(max_examples=60, **SETTINGS)
@given(policies(), st.lists(packets(), min_size=20, max_size=30))
def test_chains_equal_reference(pipeline, cpu, policy, frames):
    # The same small rulesets through the decision chains.
    classifier.DIRECT = False
    try:
        same_as_reference(pipeline, cpu, policy, frames)
    finally:
        classifier.DIRECT = True


@settings(max_examples=8, **SETTINGS)
@given(large_policies(), st.lists(packets(), min_size=80, max_size=120))
def test_pipeline_equals_reference_on_large_policies(pipeline, cpu, policy, frames):
    # 513 to 1,500 rules: several buckets, sparse steps and host hashes in the kernel.
    same_as_reference(pipeline, cpu, policy, frames)


@settings(max_examples=25, **SETTINGS)
@given(large_policies(min_rules=40, max_rules=300), st.lists(packets(), min_size=60, max_size=80))
def test_sparse_steps_equal_reference(pipeline, cpu, policy, frames):
    # Every step sparse: states with a few exceptions scan a short list, states with
    # many get a dense row of their own; both must decide as the reference does.
    saved = classifier.DENSE_FREE, classifier.DENSE_RATIO, classifier.DIRECT
    classifier.DENSE_FREE, classifier.DENSE_RATIO, classifier.DIRECT = 0, 0, False
    try:
        same_as_reference(pipeline, cpu, policy, frames)
    finally:
        classifier.DENSE_FREE, classifier.DENSE_RATIO, classifier.DIRECT = saved
