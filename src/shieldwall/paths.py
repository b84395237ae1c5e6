"""Where the BPF sources, the shared header and the compiled objects live.

The package runs from its source tree (an editable install); SHIELDWALL_OBJ_DIR points
elsewhere when the objects were built somewhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BPF_SRC_DIR = REPO_ROOT / "bpf"
SHARED_HEADER = BPF_SRC_DIR / "include" / "shieldwall.h"


def object_dir() -> Path:
    return Path(os.environ.get("SHIELDWALL_OBJ_DIR", REPO_ROOT / "build" / "bpf"))


def object_path(name: str) -> Path:
    return object_dir() / f"{name}.bpf.o"
