"""The life of a pipeline on an interface: up, reload, down, status.

Everything an attached pipeline needs lives in pins under one bpffs directory per
interface (bpffs.pin_dir), so any later process can inspect, reload or detach it.
The bpf_link is pinned too: protection survives the process that attached it.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from .. import abi
from ..dataplane import bpffs
from ..dataplane.pipeline import (SHARED_MAPS, Pipeline, PipelineConfig, after_swap, carry,
                                  pinned_maps, read_counters, state_maps)
from ..kernel import libbpf, xdp
from ..stages import stages
from ..kernel.errors import BpfError
from ..kernel.ethtool import driver_name

LINK_PIN = "link"
ROOT_PIN = "prog_root"


class AttachError(BpfError):
    pass


@dataclass(frozen=True)
class AttachResult:
    iface: str
    mode: str
    why: str
    prog_id: int
    pins: Path
    reloaded: bool = False


def _pinned_prog_id(directory: Path, name: str) -> int | None:
    path = directory / name
    if not path.exists():
        return None
    fd = libbpf.obj_get(path)
    try:
        return libbpf.prog_info(fd).id
    finally:
        os.close(fd)


def _ours(directory: Path, state: xdp.XdpState) -> bool:
    root_id = _pinned_prog_id(directory, ROOT_PIN)
    return root_id is not None and root_id in (state.native_id, state.generic_id, state.offload_id)


def _attach_link(prog_fd: int, index: int, mode: str) -> int:
    return libbpf.xdp_link_create(prog_fd, index, xdp.MODE_FLAGS[mode])


def _try_modes(prog_fd: int, index: int, iface: str, mode: str) -> tuple[int, str, str]:
    """Attaches in the requested mode, or the best that works for `auto`.
    Returns (link fd, mode, why)."""
    driver = driver_name(iface) or "unknown"
    if mode != "auto":
        fd = _attach_link(prog_fd, index, mode)
        return fd, mode, f"{mode} mode as requested (driver {driver})"
    try:
        fd = _attach_link(prog_fd, index, "native")
        return fd, "native", f"driver {driver} runs XDP natively: packets are decided before the kernel allocates an sk_buff"
    except BpfError as exc:
        native_error = exc
    fd = _attach_link(prog_fd, index, "generic")
    return fd, "generic", (
        f"native mode failed on driver {driver} ({os.strerror(native_error.errno)}); "
        "generic mode works but runs after the sk_buff is allocated, so a flood still costs "
        "the kernel memory and much more CPU per packet")


def up(iface: str, config: PipelineConfig, mode: str = "auto", force: bool = False) -> AttachResult:
    with bpffs.exclusive():
        return _up(iface, config, mode, force)


def _up(iface: str, config: PipelineConfig, mode: str, force: bool) -> AttachResult:
    bpffs.require_root()
    bpffs.ensure_bpffs()
    index = xdp.ifindex(iface)
    state = xdp.query(index)
    directory = bpffs.pin_dir(iface)
    if state.mode and _ours(directory, state):
        return _reload(iface, config)
    if state.mode:
        if not force:
            raise AttachError(errno.EBUSY, f"{iface} already has a foreign XDP program "
                              f"(id {state.prog_id}, {state.mode} mode)",
                              "shieldwall will not displace it; use --force to replace it")
        _detach_foreign(index, state)
    bpffs.remove_pins(directory)  # stale pins of an interface that lost its program

    pipeline = Pipeline.load(config)
    link_fd = -1
    try:
        pipeline.pin(directory)
        link_fd, got, why = _try_modes(pipeline.root_program.fd, index, iface, mode)
        libbpf.pin_fd(link_fd, directory / LINK_PIN)
        return AttachResult(iface, got, why, pipeline.root_program.id, directory)
    except BaseException:
        if link_fd >= 0:
            libbpf.link_detach(link_fd)
        bpffs.remove_pins(directory)
        raise
    finally:
        if link_fd >= 0:
            os.close(link_fd)
        pipeline.close()


def _detach_foreign(index: int, state: xdp.XdpState) -> None:
    for mode, prog_id in (("native", state.native_id), ("generic", state.generic_id),
                          ("offload", state.offload_id)):
        if prog_id:
            try:
                xdp.detach(index, mode)
            except BpfError as exc:
                raise AttachError(exc.errno, f"could not remove the foreign XDP program {prog_id}",
                                  "it is probably held by a bpf_link of another tool; detach it there") from None


def reload(iface: str, config: PipelineConfig) -> AttachResult:
    """Loads fresh programs that reuse the pinned maps (state and counters carry over)
    and swaps the interface's program atomically through the pinned link."""
    with bpffs.exclusive():
        return _reload(iface, config)


def _reload(iface: str, config: PipelineConfig) -> AttachResult:
    bpffs.require_root()
    bpffs.ensure_bpffs()
    index = xdp.ifindex(iface)
    directory = bpffs.pin_dir(iface)
    if not (directory / LINK_PIN).exists():
        raise AttachError(errno.ENOENT, f"shieldwall is not attached to {iface}",
                          f"attach it first: shieldwall up --iface {iface}")
    existing = pinned_maps(directory)
    try:
        carried = carry(existing)
        pipeline = Pipeline.load(config, reuse={n: m.fd for n, m in existing.items()
                                                if n in state_maps()})
    finally:
        for m in existing.values():
            m.close()
    link_fd = libbpf.obj_get(directory / LINK_PIN)
    try:
        # The new root brings its whole chain and config with it: one swap changes all
        # of it. A failure before here leaves the running configuration untouched.
        libbpf.link_update(link_fd, pipeline.root_program.fd)
        after_swap(pipeline, carried)
        pipeline.pin(directory)
        state = xdp.query(index)
        return AttachResult(iface, state.mode or "none", "programs replaced in place; state kept",
                            pipeline.root_program.id, directory, reloaded=True)
    finally:
        os.close(link_fd)
        pipeline.close()


def down(iface: str) -> bool:
    """Detaches shieldwall from the interface and removes its pins. False if it was not there."""
    with bpffs.exclusive():
        return _down(iface)


def _down(iface: str) -> bool:
    bpffs.require_root()
    bpffs.ensure_bpffs()
    directory = bpffs.pin_dir(iface)
    if not directory.exists():
        return False
    if (directory / LINK_PIN).exists():
        fd = libbpf.obj_get(directory / LINK_PIN)
        try:
            libbpf.link_detach(fd)
        except BpfError as exc:
            if exc.errno not in (errno.ENOLINK, errno.ENODEV, errno.EINVAL):
                raise
        finally:
            os.close(fd)
    bpffs.remove_pins(directory)
    return True


def status(iface: str | None = None) -> list[dict]:
    """What is attached where, read back from the kernel and the pins."""
    bpffs.require_root()
    bpffs.ensure_bpffs()
    scope = bpffs.pin_dir("x").parent
    names = [iface] if iface else sorted(p.name for p in scope.iterdir()) if scope.exists() else []
    return [_status_of(name) for name in names]


def _status_of(iface: str) -> dict:
    directory = bpffs.pin_dir(iface)
    report: dict = {"iface": iface, "pins": str(directory), "attached": False, "mode": None}
    try:
        state = xdp.query(xdp.ifindex(iface))
    except BpfError as exc:
        report["problem"] = str(exc)
        state = None
    if not directory.exists():
        report["problem"] = report.get("problem") or "shieldwall is not attached here"
        if state and state.mode:
            report["foreign_program"] = {"id": state.prog_id, "mode": state.mode}
        return report
    if state:
        report["attached"] = _ours(directory, state)
        report["mode"] = state.mode if report["attached"] else None
        report["prog_id"] = state.prog_id
        report["driver"] = driver_name(iface)
    maps = pinned_maps(directory)
    missing = [name for name in SHARED_MAPS if name not in maps]
    if missing:
        report["problem"] = f"incomplete pins in {directory}: {', '.join(missing)} missing"
        for m in maps.values():
            m.close()
        return report
    try:
        report["chain"] = _chain(directory, maps)
        cfg = maps["sw_config"].lookup(0)
        report["on_missing_stage"] = abi.action_name(cfg.missed_action)
        report["counters"] = [
            {"action": a, "reason": r, "packets": p, "bytes": b}
            for (a, r), (p, b) in sorted(read_counters(maps["sw_counters"]).items())]
        report["stages"] = {}
        for c in report["chain"]:
            found = stages().get(c["stage"])
            if found is not None:
                report["stages"][found.name] = found.status(maps)
        rules = report["stages"].get("policy", {}).get("rules")
        if rules is not None:
            report["rules"] = rules
    finally:
        for m in maps.values():
            m.close()
    return report


def _chain(directory: Path, maps: dict) -> list[dict]:
    ids = {_pinned_prog_id(directory, f"prog_{name}"): name for name in stages()}
    cfg = maps["sw_config"].lookup(0)
    chain = []
    for slot in range(cfg.chain_len):
        prog_id = maps["sw_stages"].lookup(slot)
        chain.append({"slot": slot, "stage": ids.get(prog_id, "missing" if prog_id is None else f"prog {prog_id}"),
                      "prog_id": prog_id})
    return chain
