"""Kernel tier: the real programs on this kernel, through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import pytest

from shieldwall.dataplane.pipeline import Pipeline, PipelineConfig, one_cpu


@pytest.fixture(scope="session", autouse=True)
def _pins_of_this_run(private_bpffs):
    yield private_bpffs


@pytest.fixture(scope="session")
def cpu():
    with one_cpu() as cpu:
        yield cpu


@pytest.fixture(scope="session")
def bare_pipeline():
    """Root plus an empty-handed fastpath stage: every IP packet reaches the chain's end."""
    with Pipeline.load(PipelineConfig()) as pipeline:
        yield pipeline
