"""Where the BPF sources, the shared header, the compiled objects and the compiler live.

The package runs from its source tree (an editable install); SHIELDWALL_OBJ_DIR points
elsewhere when the objects were built somewhere else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BPF_SRC_DIR = REPO_ROOT / "bpf"
SHARED_HEADER = BPF_SRC_DIR / "include" / "shieldwall.h"


def object_dir() -> Path:
    return Path(os.environ.get("SHIELDWALL_OBJ_DIR", REPO_ROOT / "build" / "bpf"))


def object_path(name: str) -> Path:
    return object_dir() / f"{name}.bpf.o"


def clang() -> str:
    """The compiler for BPF C, found as bpf/Makefile finds it: $CLANG, else clang-19 (the
    version the objects are built and tested with), else clang."""
    found = os.environ.get("CLANG") or shutil.which("clang-19") or shutil.which("clang")
    if not found:
        raise FileNotFoundError("no clang-19 or clang on PATH (Debian package clang-19); "
                                "or name one in CLANG")
    return found
