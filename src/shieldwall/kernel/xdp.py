"""XDP attach, detach and query on an interface (netlink through libbpf)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from ._libbpf import ffi, lib
from .errors import BpfError

MODE_FLAGS = {"native": lib.XDP_FLAGS_DRV_MODE, "generic": lib.XDP_FLAGS_SKB_MODE,
              "offload": lib.XDP_FLAGS_HW_MODE}
_ATTACHED = {lib.XDP_ATTACHED_NONE: None, lib.XDP_ATTACHED_DRV: "native",
             lib.XDP_ATTACHED_SKB: "generic", lib.XDP_ATTACHED_HW: "offload",
             lib.XDP_ATTACHED_MULTI: "multi"}


class InterfaceError(BpfError):
    pass


def ifindex(name: str) -> int:
    """The interface's index in the current network namespace."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise InterfaceError(19, f"no interface named {name!r} in this network namespace") from None


@dataclass(frozen=True)
class XdpState:
    mode: str | None          # native, generic, offload, multi, or None when nothing is attached
    prog_id: int              # the program of that mode (0 if none)
    native_id: int
    generic_id: int
    offload_id: int


def query(index: int) -> XdpState:
    opts = ffi.new("struct bpf_xdp_query_opts *")
    opts.sz = ffi.sizeof("struct bpf_xdp_query_opts")
    ret = lib.bpf_xdp_query(index, 0, opts)
    if ret < 0:
        raise BpfError(-ret, f"querying XDP on ifindex {index}")
    mode = _ATTACHED.get(opts.attach_mode)
    return XdpState(mode, opts.prog_id, opts.drv_prog_id, opts.skb_prog_id, opts.hw_prog_id)


def _replace_opts(flags: int, replace_fd: int | None) -> tuple[int, Any]:
    opts = ffi.new("struct bpf_xdp_attach_opts *")
    opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
    if replace_fd is not None:
        flags |= lib.XDP_FLAGS_REPLACE
        opts.old_prog_fd = replace_fd
    return flags, opts


def attach(index: int, prog_fd: int, mode: str, replace_fd: int | None = None) -> None:
    """Netlink attach, the fallback where bpf_link is not available.

    With replace_fd the kernel swaps atomically and refuses if the current program is not
    that one (XDP_FLAGS_REPLACE); without it, it refuses to displace any program.
    """
    flags = MODE_FLAGS[mode] | (0 if replace_fd is not None else lib.XDP_FLAGS_UPDATE_IF_NOEXIST)
    flags, opts = _replace_opts(flags, replace_fd)
    ret = lib.bpf_xdp_attach(index, prog_fd, flags, opts)
    if ret < 0:
        raise BpfError(-ret, f"attaching XDP in {mode} mode to ifindex {index}")


def detach(index: int, mode: str, expected_fd: int | None = None) -> None:
    flags, opts = _replace_opts(MODE_FLAGS[mode], expected_fd)
    ret = lib.bpf_xdp_detach(index, flags, opts)
    if ret < 0:
        raise BpfError(-ret, f"detaching XDP ({mode}) from ifindex {index}")
