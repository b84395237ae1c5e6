"""Where the compiled BPF objects, the shared header and the BPF compiler are.

An installed package carries both as package data in shieldwall/bpf/ (the wheel build
puts them there, see setup.py). A source checkout, which the editable install runs
from, has no such directory: its objects are built into build/bpf/ and the header is
bpf/include/shieldwall.h. SHIELDWALL_OBJ_DIR names another objects directory.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

PACKAGE_DATA = "bpf"

REPO_ROOT = Path(__file__).resolve().parents[2]
BPF_SRC_DIR = REPO_ROOT / "bpf"


def installed_data_dir() -> Path | None:
    """The package's data directory, when this is an installed package."""
    data = resources.files(__package__) / PACKAGE_DATA
    # libbpf opens objects by file name: only a directory on disk will do (pip always
    # unpacks wheels, so an installed package has one).
    return data if isinstance(data, Path) and data.is_dir() else None


def object_dir() -> Path:
    if "SHIELDWALL_OBJ_DIR" in os.environ:
        return Path(os.environ["SHIELDWALL_OBJ_DIR"])
    return installed_data_dir() or REPO_ROOT / "build" / "bpf"


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


def shared_header() -> Path:
    data = installed_data_dir()
    return data / "shieldwall.h" if data else BPF_SRC_DIR / "include" / "shieldwall.h"


SHARED_HEADER = shared_header()
