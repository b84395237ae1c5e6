"""The TC egress programs some stages need beside the XDP root (the conntrack stage's
sees the host's own packets), each held by a tcx bpf_link pinned next to the XDP link:

    link-egress-<stage>   runs that stage's program of a generation in force

The links follow the generations in force: a change attaches (or swaps in) the new
generation's programs before its commit, so the new chain never runs without them, and
once it is in force removes those no generation in force needs. A swap is one
bpf_link_update: no packet leaves without the program. `down` removes the pins with the
rest, and the kernel detaches a link when its last pin goes: exactly what shieldwall
attached, nothing else on the interface.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..dataplane.pipeline import EGRESS_PIN_PREFIX
from ..kernel import libbpf, xdp

LINK_PREFIX = "link-egress-"


def _programs(generations: Iterable[Path]) -> dict[str, Path]:
    """Stage -> the pinned egress program it needs, over the given generations (the
    first that has one wins)."""
    found: dict[str, Path] = {}
    for gen in generations:
        for pin in sorted(gen.glob(f"{EGRESS_PIN_PREFIX}*")) if gen.is_dir() else ():
            found.setdefault(pin.name[len(EGRESS_PIN_PREFIX):], pin)
    return found


def links(directory: Path) -> dict[str, Path]:
    """Stage -> its pinned egress link."""
    pins = sorted(directory.glob(f"{LINK_PREFIX}*")) if directory.is_dir() else []
    return {pin.name[len(LINK_PREFIX):]: pin for pin in pins}


def running(directory: Path) -> dict[str, int]:
    """Stage -> the id of the program its pinned egress link runs."""
    found = {}
    for stage, pin in links(directory).items():
        fd = libbpf.obj_get(pin)
        try:
            found[stage] = libbpf.link_info(fd).prog_id
        finally:
            os.close(fd)
    return found


def attach(directory: Path, generations: Iterable[Path]) -> None:
    """Every egress program these generations need runs on the interface: a link is
    created, or its program swapped; none is removed."""
    index = None
    have = links(directory)
    for stage, program in _programs(generations).items():
        prog_fd = libbpf.obj_get(program)
        try:
            if stage in have:
                link_fd = libbpf.obj_get(have[stage])
                try:
                    libbpf.link_update(link_fd, prog_fd)
                finally:
                    os.close(link_fd)
                continue
            if index is None:
                index = xdp.ifindex(directory.name)
            link_fd = libbpf.tcx_egress_link_create(prog_fd, index)
            try:
                libbpf.pin_fd(link_fd, directory / f"{LINK_PREFIX}{stage}")
            finally:
                os.close(link_fd)  # the pin holds it now (or nothing does: detached)
        finally:
            os.close(prog_fd)


def sync(directory: Path, generations: Iterable[Path]) -> None:
    """The egress links are exactly those the generations in force need."""
    generations = list(generations)
    attach(directory, generations)
    needed = _programs(generations)
    for stage, pin in links(directory).items():
        if stage not in needed:
            detach(pin)


def detach(pin: Path) -> None:
    """Detaches the link now (a process may still hold an fd of it) and drops its pin."""
    libbpf.detach_pinned(pin)
    pin.unlink(missing_ok=True)
