"""A loaded pipeline: the root program, its stages in a PROG_ARRAY, and their maps.

Loading never touches an interface: everything is verified and filled before the caller
attaches, so a rejected program or a bad configuration leaves nothing half-done.
"""

from __future__ import annotations

import ipaddress
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .. import abi
from ..kernel.libbpf import BpfObject, Map, Program
from ..kernel.testrun import prog_test_run
from ..paths import object_path
from . import classifier
from .addresses import IPNetwork, lpm_key
from .stages import DEFAULT_CHAIN, SHARED_MAPS, STAGES, map_types

if TYPE_CHECKING:
    from ..policy.compile import PolicyImage

ROOT_OBJECT = "root"
ROOT_PROGRAM = "sw_root"


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does, independent of how it was written down."""

    chain: tuple[str, ...] = DEFAULT_CHAIN
    missed_action: str = "pass"          # fail-open; "drop" is fail-closed
    fastpath_allow: tuple[IPNetwork, ...] = ()
    fastpath_deny: tuple[IPNetwork, ...] = ()
    policy_image: PolicyImage | None = None  # policy.compile_policy(); None: no rules

    def __post_init__(self) -> None:
        unknown = [s for s in self.chain if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; known: {', '.join(STAGES)}")
        if len(self.chain) > abi.SW_MAX_STAGES:
            raise ValueError(f"a chain holds at most {abi.SW_MAX_STAGES} stages")
        if self.missed_action not in ("pass", "drop"):
            raise ValueError("missed_action must be pass or drop")


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str
    module: str
    rule_id: int


@dataclass
class Pipeline:
    root: BpfObject
    stages: dict[str, BpfObject]
    config: PipelineConfig
    maps: dict[str, Map] = field(default_factory=dict)
    # The image last installed: applying the same one again leaves the ruleset alone.
    _installed: object = field(default=object(), repr=False)

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, config: PipelineConfig, reuse: dict[str, int] | None = None,
             stage_names: tuple[str, ...] | None = None, apply: bool = True) -> "Pipeline":
        """Loads the root and the stages. `reuse` maps map names to fds of existing
        (pinned) maps, so state and counters carry over a reload. Without `apply`, the
        configuration is left for the caller to write (a reload writes it only once the
        new programs run)."""
        reuse = reuse or {}
        root = BpfObject(object_path(ROOT_OBJECT))
        stages: dict[str, BpfObject] = {}
        try:
            for name, (k, v) in SHARED_MAPS.items():
                root.declare(name, k, v)
                if name in reuse:
                    root.reuse_map(name, reuse[name])
            root.load()
            shared = {name: root.map(name).fd for name in SHARED_MAPS}
            for name in stage_names if stage_names is not None else tuple(STAGES):
                spec = STAGES[name]
                obj = BpfObject(object_path(spec.object))
                stages[name] = obj
                for map_name, fd in shared.items():
                    obj.reuse_map(map_name, fd)
                for map_name, (k, v) in spec.maps.items():
                    obj.declare(map_name, k, v)
                    if map_name in reuse:
                        obj.reuse_map(map_name, reuse[map_name])
                obj.load()
            pipeline = cls(root, stages, config)
            pipeline.maps = {name: root.map(name) for name in SHARED_MAPS}
            for name, obj in stages.items():
                for map_name in STAGES[name].maps:
                    pipeline.maps[map_name] = obj.map(map_name)
            if apply:
                pipeline.apply(config)
        except BaseException:
            for obj in stages.values():
                obj.close()
            root.close()
            raise
        return pipeline

    def close(self) -> None:
        for obj in self.stages.values():
            obj.close()
        self.root.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root_program(self) -> Program:
        return self.root.program(ROOT_PROGRAM)

    def stage_program(self, name: str) -> Program:
        return self.stages[name].program(STAGES[name].program)

    # -- configuration -------------------------------------------------------------------
    def apply(self, config: PipelineConfig) -> None:
        """Writes the configuration into the maps. The ruleset goes first: building its
        maps is what can fail (memory), and it switches in one write, so a failure there
        leaves everything as it was. Slots fill before chain_len grows and after it
        shrinks, so a running packet never meets a slot it should not use."""
        if classifier.STATE in self.maps and config.policy_image is not self._installed:
            classifier.install(self.maps, config.policy_image)
            self._installed = config.policy_image
        if "sw_fastpath" in self.maps:
            fill_fastpath(self.maps["sw_fastpath"], config)
        slots = self.maps["sw_stages"]
        for slot, name in enumerate(config.chain):
            if name in self.stages:
                slots.set_fd(slot, self.stage_program(name).fd)
            else:
                slots.delete(slot)
        self.maps["sw_config"].update(0, {
            "chain_len": len(config.chain),
            "missed_action": abi.ACTION_CODES[config.missed_action],
            "end_action": abi.SW_ACT_PASS,
        })
        for slot in range(len(config.chain), abi.SW_MAX_STAGES):
            slots.delete(slot)
        self.config = config

    # -- pins ----------------------------------------------------------------------------
    def pin(self, directory: Path) -> None:
        """Pins the maps not pinned yet, and the programs over any older ones: each
        program pin is replaced by a rename, so a reader never finds it missing."""
        directory.mkdir(parents=True, exist_ok=True)
        for name, m in self.maps.items():
            if not (directory / name).exists():
                m.pin(directory / name)
        programs = [("prog_root", self.root_program)] + \
            [(f"prog_{name}", self.stage_program(name)) for name in self.stages]
        for pin_name, program in programs:
            fresh = directory / f"{pin_name}_new"  # bpffs refuses names with a dot
            fresh.unlink(missing_ok=True)
            program.pin(fresh)
            os.replace(fresh, directory / pin_name)

    # -- offline verdicts -----------------------------------------------------------------
    def run(self, packet: bytes, cpu: int) -> Verdict:
        """The verdict of the real programs on one packet, via BPF_PROG_TEST_RUN."""
        retval, pkt = self.run_traced(packet, cpu)
        return Verdict(abi.action_name(retval), abi.reason_name(pkt.reason),
                       abi.module_name(pkt.module), pkt.rule)

    def run_traced(self, packet: bytes, cpu: int) -> tuple[int, Any]:
        """The program's return value and the packet's sw_pkt (parse and decision).

        The decision is read back from the per-CPU scratch of the CPU the run used, so the
        caller holds the thread on that CPU (see one_cpu())."""
        result = prog_test_run(self.root_program.fd, packet)
        pkt = self.maps["sw_scratch"].lookup(0)[cpu]
        if pkt.action != result.retval:
            raise RuntimeError("the scratch does not hold this packet's decision; "
                               "was the thread moved to another CPU?")
        return result.retval, pkt

    def counters(self) -> dict[tuple[str, str], tuple[int, int]]:
        return read_counters(self.maps["sw_counters"])

    def rule_counters(self) -> dict[int, classifier.RuleCounter]:
        return classifier.rule_counters(self.maps)


def fill_fastpath(m: Map, config: PipelineConfig) -> None:
    """Replaces the fastpath trie's contents with the configured lists: new entries
    first, stale ones after, so a failure part-way never leaves a list shorter than
    both the old and the new one."""
    wanted: dict[tuple, int] = {}
    for net, action in [(n, abi.SW_ACT_PASS) for n in config.fastpath_allow] + \
                       [(n, abi.SW_ACT_DROP) for n in config.fastpath_deny]:
        key = lpm_key(net)
        wanted[(key["prefixlen"], bytes(key["addr"]))] = action
    stale = [key for key in m.keys() if (key.prefixlen, bytes(key.addr)) not in wanted]
    for (plen, addr), action in wanted.items():
        m.update({"prefixlen": plen, "addr": list(addr)}, {"action": action})
    for key in stale:
        m.delete({"prefixlen": key.prefixlen, "addr": list(key.addr)})


def read_counters(m: Map) -> dict[tuple[str, str], tuple[int, int]]:
    """Non-zero verdict counters summed over CPUs: (action, reason) -> (packets, bytes)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for action in range(abi.SW_ACT_MAX):
        for reason in range(abi.SW_R_MAX):
            cells = m.lookup(action * abi.SW_R_MAX + reason) or []
            packets = sum(c.packets for c in cells)
            if packets:
                out[(abi.action_name(action), abi.reason_name(reason))] = (
                    packets, sum(c.bytes for c in cells))
    return out


@contextmanager
def one_cpu() -> Iterator[int]:
    """Holds the calling thread on one CPU, and lets it go afterwards."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def pinned_maps(directory: Path) -> dict[str, Map]:
    """The typed maps pinned in a pipeline's directory."""
    found = {}
    for name, (k, v) in map_types().items():
        if (directory / name).exists():
            found[name] = Map.open_pinned(directory / name, k, v)
    return found


def parse_networks(items: list[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(i, strict=True) for i in items)
