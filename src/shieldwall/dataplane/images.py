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


NAME_LEN = 64  # struct sw_rule_name


def pack_names(names: list[str]) -> bytes:
    """Names for a map of struct sw_rule_name (rules, limits), in order."""
    return b"".join(n.encode()[:NAME_LEN].ljust(NAME_LEN, b"\0") for n in names)


def read_names(names_map: Any) -> dict[int, str]:
    """The names a map of struct sw_rule_name holds, by key; empty slots left out."""
    found: dict[int, str] = {}
    for key, value in names_map.lookup_batch():
        name = ffi.string(value.name, NAME_LEN).decode(errors="replace")
        if name:
            found[int(key)] = name
    return dict(sorted(found.items()))
