"""Offline verdicts: every frame of a capture through the real pipeline, nothing attached."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .. import abi
from ..config import Config
from ..dataplane.bpffs import require_root
from ..dataplane.pipeline import Pipeline, one_cpu
from ..model.parse import ETH_HLEN, parse
from ..pcapio import read_frames


def verdicts(pcap: Path, config: Config) -> Iterator[dict]:
    frames = read_frames(pcap)  # a corrupt capture fails here, before anything is loaded
    require_root()  # before libbpf fails with a bare EPERM that does not say what is missing
    with Pipeline.load(config.pipeline) as pipeline, one_cpu() as cpu:
        for frame in frames:
            line = {"index": frame.index}
            # BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, and no
            # driver hands such a runt to XDP either: the root's decision is known.
            if len(frame.data) < ETH_HLEN:
                _, decision = parse(frame.data)
                line.update(action=abi.action_name(decision.action),
                            reason=abi.reason_name(decision.reason), rule=None, module="root",
                            note="shorter than an Ethernet header: never reaches XDP")
            else:
                v = pipeline.run(frame.data, cpu)
                line.update(action=v.action, reason=v.reason, rule=config.rule_name(v.rule_id),
                            module=v.module)
            yield line
