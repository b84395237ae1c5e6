"""Bytes of the structures shared with C, for map contents and program constants: the
layouts are cffi's, compiled against the shared header, never hand-written offsets."""

from __future__ import annotations

from typing import Any

from ..kernel._libbpf import ffi


def pack(ctype: str, value: dict | list | int) -> bytes:
    """The bytes of one `ctype` (a name from shieldwall.h) holding value."""
    return bytes(ffi.buffer(ffi.new(f"{ctype} *", value)))


def pack_array(ctype: str, values: list[Any]) -> bytes:
    if not values:
        return b""
    return bytes(ffi.buffer(ffi.new(f"{ctype}[]", values)))


def size(ctype: str) -> int:
    return ffi.sizeof(ctype)
