"""Constants shared with the data plane, read from the one shared header.

Only the integer #defines of the header's cdef region are read here, so pure-Python code
(the reference model, policy validation) needs no compiled module. The struct layouts
are checked by the compiler in shieldwall.kernel.ffi.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .paths import SHARED_HEADER

_DEFINE = re.compile(r"^#define\s+(SW_[A-Z0-9_]+)\s+(\d+)[ \t]*$", re.M)


def cdef_region(text: str) -> str:
    """The part of the header between the cdef markers."""
    start = text.index("/* cdef-begin */")
    end = text.index("/* cdef-end */")
    return text[start:end]


@lru_cache(maxsize=None)
def defines() -> dict[str, int]:
    text = re.sub(r"/\*.*?\*/", "", cdef_region(SHARED_HEADER.read_text()), flags=re.S)
    return {name: int(value) for name, value in _DEFINE.findall(text)}


def _named(prefix: str, stop: str) -> dict[int, str]:
    table = {}
    for name, value in defines().items():
        if name.startswith(prefix) and name != stop:
            table[value] = name[len(prefix):].lower()
    return table


def __getattr__(name: str) -> int:
    # abi.SW_ACT_DROP etc. resolve straight from the header.
    try:
        return defines()[name]
    except KeyError:
        raise AttributeError(name) from None


ACTION_NAMES: dict[int, str] = _named("SW_ACT_", "SW_ACT_MAX")
REASON_NAMES: dict[int, str] = _named("SW_R_", "SW_R_MAX")
MODULE_NAMES: dict[int, str] = _named("SW_MOD_", "SW_MOD_MAX")
ACTION_CODES = {v: k for k, v in ACTION_NAMES.items()}
REASON_CODES = {v: k for k, v in REASON_NAMES.items()}
MODULE_CODES = {v: k for k, v in MODULE_NAMES.items()}


def action_name(code: int) -> str:
    return ACTION_NAMES.get(code, f"unknown_{code}")


def reason_name(code: int) -> str:
    return REASON_NAMES.get(code, f"unknown_{code}")


def module_name(code: int) -> str:
    return MODULE_NAMES.get(code, f"unknown_{code}")
