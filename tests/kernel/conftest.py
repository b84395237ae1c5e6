"""Kernel tier: the real programs on this kernel, through BPF_PROG_TEST_RUN."""

from __future__ import annotations

import pytest

from shieldwall.dataplane.pipeline import HOOKS, Pipeline, PipelineConfig, one_cpu


@pytest.fixture(scope="session", autouse=True)
def _pins_of_this_run(private_bpffs):
    yield private_bpffs


@pytest.fixture(scope="session")
def cpu():
    with one_cpu() as cpu:
        yield cpu


IP_HEADER = {0x0800: 20, 0x86DD: 40}
# An sk_buff the harness builds is one page: the data, NET_SKB_PAD before it and the
# shared info after it.
SKB_RUN_MAX = 4096 - 64 - 320


def harness_runs(hook: str, frame: bytes) -> bool:
    """Whether BPF_PROG_TEST_RUN runs the frame at all: for a TC program it builds an
    sk_buff in one page, and refuses (EINVAL) a longer frame or an untagged IP frame
    too short for its IP header. On a device such frames reach the hook like any
    other; only the harness cannot make them."""
    if hook == "xdp" or len(frame) < 14:
        return True
    if len(frame) > SKB_RUN_MAX:
        return False
    need = IP_HEADER.get(int.from_bytes(frame[12:14], "big"))
    return need is None or len(frame) >= 14 + need


@pytest.fixture(scope="session", params=HOOKS)
def hook(request):
    """Each hook the programs are built for: XDP, and TC ingress (bpf/lib/ctx.h)."""
    return request.param


@pytest.fixture(scope="session")
def bare_pipeline(hook):
    """Root plus an empty-handed fastpath stage: every IP packet reaches the chain's end."""
    with Pipeline.load(PipelineConfig(hook=hook)) as pipeline:
        yield pipeline
