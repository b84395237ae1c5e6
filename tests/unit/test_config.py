"""From a policy file to the pipeline's configuration: which stages run."""

from __future__ import annotations

from pathlib import Path

import pytest

from shieldwall.config import default_config, load_config
from shieldwall.policy import PolicyError
from shieldwall.stages import stages


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ndefault_action: pass\n" + text)
    return path


def test_without_a_file_no_stage_runs():
    assert default_config().pipeline.chain == ()


def test_stages_with_nothing_to_do_are_left_out(tmp_path: Path):
    assert load_config(write(tmp_path, "")).pipeline.chain == ("policy",)
    with_lists = write(tmp_path, "fastpath: {deny: [198.51.100.0/24]}\n")
    assert load_config(with_lists).pipeline.chain == ("fastpath", "policy")


def test_an_explicit_chain_is_kept_as_written(tmp_path: Path):
    path = write(tmp_path, "pipeline: {stages: [policy, fastpath], on_missing_stage: drop}\n")
    pipeline = load_config(path).pipeline
    assert (pipeline.chain, pipeline.missed_action) == (("policy", "fastpath"), "drop")


@pytest.mark.parametrize("stages,problem", [
    ("[fastpath, nope]", "pipeline.stages[1]: unknown stage 'nope'; known: " + ", ".join(stages())),
    ("[policy, policy]", "pipeline.stages[1]: stage 'policy' is listed twice"),
    ("policy", "pipeline.stages: expected a list"),
])
def test_a_bad_chain_is_refused_with_its_path(tmp_path: Path, stages: str, problem: str):
    with pytest.raises(PolicyError) as info:
        load_config(write(tmp_path, f"pipeline: {{stages: {stages}}}\n"))
    assert problem in str(info.value)


def test_a_stage_left_out_while_its_section_has_work_is_refused(tmp_path: Path):
    path = write(tmp_path, "fastpath: {deny: [198.51.100.0/24]}\npipeline: {stages: [policy]}\n")
    with pytest.raises(PolicyError, match="stage 'fastpath' is left out, but fastpath give"):
        load_config(path)


def test_each_chain_stage_gets_its_image(tmp_path: Path):
    config = load_config(write(tmp_path, "fastpath: {allow: [192.0.2.0/28]}\n"
                                         "rules: [{name: r, action: drop, match: {dport: 22}}]\n"))
    assert set(config.pipeline.images) == {"fastpath", "policy"}
    assert config.pipeline.images["policy"].rules[0].name == "r"
