"""Offline verdicts: every frame of a capture through the real pipeline, nothing attached."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Callable, Iterator

from .. import abi
from ..config import Config
from ..dataplane.bpffs import require_root
from ..dataplane.pipeline import Pipeline, one_cpu
from ..kernel.errors import BpfError
from ..model.parse import ETH_HLEN, parse
from ..pcapio import read_frames
from .snaplen import judged_frame

# How BPF_PROG_TEST_RUN refuses a frame for its size alone: ENOMEM once it would need
# more than MAX_SKB_FRAGS pages after the linear part; EINVAL from kernels without
# multi-buffer test runs (before 5.18), for anything past the linear part.
REFUSED_FOR_SIZE = frozenset({errno.ENOMEM, errno.EINVAL})
# A frame whose EtherType no parser knows (IEEE 802 local experimental): the root passes
# it as non_ip at once, whatever its size.
FILLER_ETHERTYPE = b"\x88\xb5"


def verdicts(pcap: Path, config: Config) -> Iterator[dict]:
    frames = read_frames(pcap)  # a corrupt capture fails here, before anything is loaded
    require_root()  # before libbpf fails with a bare EPERM that does not say what is missing
    with Pipeline.load(config.pipeline) as pipeline, one_cpu() as cpu:
        def run(data: bytes):
            return pipeline.run(data, cpu)

        limit = largest_accepted(run, max((len(f.data) for f in frames), default=0))
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
                judged = judged_frame(frame.data, frame.orig_len, limit)
                v = run(judged.data)
                line.update(action=v.action, reason=v.reason, rule=config.rule_name(v.rule_id),
                            module=v.module)
                if judged.note:
                    line["note"] = judged.note
            yield line


def largest_accepted(run: Callable[[bytes], object], wanted: int) -> int:
    """The largest frame, up to `wanted` bytes, that a test run of `run` accepts.

    The limit depends on the kernel's page size, MAX_SKB_FRAGS and the size of its
    skb_shared_info, none of which user space can read: it is found by bisection, with
    frames the root decides at once."""
    if wanted < ETH_HLEN:
        return wanted
    if _accepted(run, wanted):
        return wanted
    run(_filler(ETH_HLEN))  # fails with the kernel's reason when nothing runs at all
    low, high = ETH_HLEN, wanted  # low is accepted, high is not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _accepted(run, middle) else (low, middle)
    return low


def _accepted(run: Callable[[bytes], object], size: int) -> bool:
    try:
        run(_filler(size))
    except BpfError as err:
        if err.errno not in REFUSED_FOR_SIZE:
            raise
        return False
    return True


def _filler(size: int) -> bytes:
    return b"\x02" * 12 + FILLER_ETHERTYPE + bytes(size - ETH_HLEN)
