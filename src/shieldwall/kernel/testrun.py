"""BPF_PROG_TEST_RUN: run a program on a packet without any interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._libbpf import ffi, lib
from .errors import BpfError


@dataclass(frozen=True)
class RunResult:
    retval: int
    duration_ns: int     # average per repetition, as the kernel measured it
    data: bytes          # the packet after the program (empty in live-frames mode)


def _run(prog_fd: int, packet: bytes, repeat: int, what: str, **fields: Any) -> Any:
    opts = ffi.new("struct bpf_test_run_opts *")
    opts.sz = ffi.sizeof("struct bpf_test_run_opts")
    data_in = ffi.from_buffer(packet)  # kept alive until the call returns
    opts.data_in = data_in
    opts.data_size_in = len(packet)
    opts.repeat = repeat
    for name, value in fields.items():
        setattr(opts, name, value)
    ret = lib.bpf_prog_test_run_opts(prog_fd, opts)
    if ret < 0:
        raise BpfError(-ret, f"{what} of a {len(packet)}-byte packet")
    return opts


def prog_test_run(prog_fd: int, packet: bytes, repeat: int = 1) -> RunResult:
    """Runs the program on the packet `repeat` times and returns what it did."""
    out = ffi.new("char[]", len(packet) + 256)
    opts = _run(prog_fd, packet, repeat, "test run", data_out=out, data_size_out=len(out))
    return RunResult(opts.retval, opts.duration, bytes(ffi.buffer(out, opts.data_size_out)))


def prog_test_run_live(prog_fd: int, packet: bytes, repeat: int, batch_size: int = 0) -> RunResult:
    """Live-frames mode: the verdict is carried out for real (XDP_TX and XDP_REDIRECT
    send the frame), `repeat` times, in batches. The kernel reports no retval here."""
    opts = _run(prog_fd, packet, repeat, "live-frames test run",
                flags=lib.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=batch_size)
    return RunResult(opts.retval, opts.duration, b"")
