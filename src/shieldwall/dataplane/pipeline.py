"""A loaded pipeline: the root program, its chain of stages, and their maps.

Every load is whole and fresh: the root and each stage of the chain are loaded with
their own config maps (sized for what they hold), their own prog array, and constants
that tell each program its place in the chain, so the verifier makes the tail calls
direct jumps and prunes what the configuration does not use. Only state maps (the
verdict counters, each stage's declared state) are taken over from the load before.
Nothing is visible to a packet until the caller swaps the new root in; the old
pipeline keeps working, unchanged, until then.

Loading never touches an interface: everything is verified and filled before the
caller attaches or swaps, so a rejected program or a bad configuration leaves nothing
half-done.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

from .. import abi
from ..model.events import Budget
from ..kernel.libbpf import BpfObject, Map, Program
from ..kernel.testrun import prog_test_run
from ..paths import object_path
from ..stages import Stage, StageBuild, stages
from . import addrtrie, bpffs
from .images import pack
from .livehosts import LiveIndex, Lookup
from .sources import Sources, merge
from .tables import TableImage

ROOT_OBJECT = "root"
ROOT_PIN = "prog_root"
ROOT_PROGRAM = "sw_root"
CONSTS = ".rodata.sw"
EGRESS_PIN_PREFIX = "egress_"  # a stage's TC egress program in a generation's pins

# Maps every program of a pipeline shares (lib/maps.h): the root's instances.
SHARED_MAPS: dict[str, tuple[str, str]] = {
    "sw_scratch": ("__u32", "struct sw_pkt"),
    "sw_counters": ("__u32", "struct sw_counter"),
    "sw_config": ("__u32", "struct sw_config"),
    "sw_stages": ("__u32", "__u32"),
    "sw_events": ("__u32", "struct sw_event"),       # a ring buffer (lib/events.h)
    "sw_ev_budget": ("__u32", "struct sw_event_budget"),
    "sw_ev_clock": ("__u32", "__u64[3]"),             # a timer clock (lib/clock.h)
}
# The root's own: the source trie every stage's source prefixes are merged into.
ROOT_MAPS: dict[str, tuple[str, str]] = {
    "sw_src_tab": ("__u32", "__u32"),  # a table: one value (lib/table.h)
    "sw_src_hosts": ("struct sw_addr_key", "struct sw_host"),
    "sw_arm": ("__u32", "__u32"),      # a canary's: the root it is tried against
}
# The kernel hooks a pipeline is built for (bpf/lib/ctx.h), and what their programs
# return for each verdict: XDP's actions are shieldwall's own; TC has its own codes.
HOOKS = ("xdp", "tc")
TC_VERDICTS = {0: "pass", 2: "drop", 7: "tx"}  # TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT
_TC_RETURNS = {name: code for code, name in TC_VERDICTS.items()}  # aborted: as drop

# Kept across reloads; everything else is rebuilt from the configuration. The event
# ring is one for the interface's life, so its reader never has to follow a reload.
ROOT_STATE = ("sw_counters", "sw_events", "sw_ev_budget")


@dataclass(frozen=True)
class Arm:
    """The packets a canary decides (lib/canary.h): a share of flows, by a hash stable
    per flow (`share` of 2^32), or the sources in one prefix."""

    share: int | None = None
    prefix: Any = None  # an ipaddress network

    def consts(self) -> dict:
        if self.prefix is None:
            return {"canary_mode": abi.SW_CANARY_SHARE, "canary_share": min(self.share or 0, 0xFFFFFFFF)}
        net = self.prefix
        v4 = net.version == 4
        addr = (bytes(10) + b"\xff\xff" if v4 else b"") + net.network_address.packed
        mask = (b"\xff" * 12 if v4 else b"") + net.netmask.packed
        return {"canary_mode": abi.SW_CANARY_SOURCE,
                "canary_family": abi.SW_FAMILY_IPV4 if v4 else abi.SW_FAMILY_IPV6,
                "canary_addr": list(addr), "canary_mask": list(mask)}


@dataclass(frozen=True)
class EventsConfig:
    """Sampled events (lib/events.h): at most `rate` a second per CPU, each of drops and
    passes, from 1 in `drops` dropped and 1 in `passes` passed packets (0: none)."""

    rate: int = 0
    drops: int = 1
    passes: int = 0

    def consts(self) -> dict:
        budget = Budget.of(self.rate)
        return {"ev_rate": self.rate, "ev_drop_every": max(self.drops, 1),
                "ev_pass_every": self.passes, "ev_cost_ns": budget.cost_ns,
                "ev_tol_ns": budget.tol_ns, "ev_tick_events": budget.tick_events}


@dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline does: the chain, its failure outcome, and each chain stage's
    image (Stage.image() of its policy section)."""

    chain: tuple[str, ...] = ()
    missed_action: str = "pass"          # fail-open; "drop" is fail-closed
    images: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    canary: "Arm | None" = None          # a canary's root: which packets it decides
    hook: str = "xdp"                    # xdp, or tc: the same programs built for TC ingress
    events: EventsConfig = EventsConfig()  # off unless a policy asks (config.configure)

    def __post_init__(self) -> None:
        known = stages()
        unknown = [s for s in self.chain if s not in known]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; known: {', '.join(known)}")
        if len(self.chain) > abi.SW_MAX_STAGES:
            raise ValueError(f"a chain holds at most {abi.SW_MAX_STAGES} stages")
        if len(set(self.chain)) != len(self.chain):
            raise ValueError("a stage appears twice in the chain")
        if self.hook not in HOOKS:
            raise ValueError(f"hook must be one of {', '.join(HOOKS)}")
        if self.missed_action not in ("pass", "drop"):
            raise ValueError("missed_action must be pass or drop")
        missing = [s for s in self.chain if s not in self.images]
        if missing:
            raise ValueError(f"no image for stage {missing[0]!r}")


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str
    module: str
    rule_id: int


def state_maps() -> dict[str, tuple[str, str]]:
    """Every map kept across reloads, with its types."""
    found = {name: SHARED_MAPS[name] for name in ROOT_STATE}
    for s in stages().values():
        found.update(s.state_maps)
    return found


def map_types() -> dict[str, tuple[str, str]]:
    """Every map a pipeline may pin, with its types."""
    found = {**SHARED_MAPS, **ROOT_MAPS}
    for s in stages().values():
        found.update(s.maps)
    return found


@dataclass
class Pipeline:
    root: BpfObject
    stages: dict[str, BpfObject]
    config: PipelineConfig
    maps: dict[str, Map] = field(default_factory=dict)
    sources: Sources | None = None
    live: LiveIndex = field(default_factory=LiveIndex)

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def load(cls, config: PipelineConfig, reuse: Mapping[str, int] | None = None,
             other_arm: int | None = None) -> "Pipeline":
        """Loads the root and the chain's stages with fresh config maps, filled; `reuse`
        maps state-map names to fds of existing (pinned) maps, so counters and state
        carry over a reload. The new programs run nothing until someone attaches or
        swaps in root_program. `other_arm`: with config.canary, the fd of the root the
        packets outside the canary go to."""
        reuse = {name: fd for name, fd in (reuse or {}).items() if name in state_maps()}
        registry = stages()
        chain = [registry[name] for name in config.chain]
        sources = _sources(chain, config)
        builds = {s.name: s.build(config.images[s.name],
                                  sources.columns.get(s.name) if sources else None)
                  for s in chain}
        root_build = _root_build(config, sources)
        root = BpfObject(hook_object(ROOT_OBJECT, config.hook))
        objects: dict[str, BpfObject] = {}
        try:
            _prepare(root, {**SHARED_MAPS, **ROOT_MAPS}, root_build, reuse)
            root.load()
            shared = {name: root.map(name).fd for name in SHARED_MAPS}
            for position, s in enumerate(chain):
                obj = objects[s.name] = BpfObject(hook_object(s.object, config.hook))
                for name, fd in shared.items():
                    obj.reuse_map(name, fd)
                build = builds[s.name]
                build.rodata[CONSTS] = _consts(config, position + 1, table=build.table)
                _prepare(obj, {**SHARED_MAPS, **s.maps}, build, reuse)
                obj.load()
            pipeline = cls(root, objects, config, sources=sources,
                           live=_live_index(chain, config, [root_build, *builds.values()]))
            pipeline.maps = {name: root.map(name) for name in {**SHARED_MAPS, **ROOT_MAPS}}
            for name, obj in objects.items():
                pipeline.maps.update({m: obj.map(m) for m in registry[name].maps})
            _fill(pipeline.maps, root_build)
            for s in chain:
                _fill(pipeline.maps, builds[s.name])
            events = config.events.consts()
            pipeline.maps["sw_config"].update(0, {
                "chain_len": len(chain), "missed_action": abi.ACTION_CODES[config.missed_action],
                "end_action": abi.SW_ACT_PASS,
                **{k: events[k] for k in ("ev_rate", "ev_drop_every", "ev_pass_every")}})
            # Slots last: a stage is reachable only once its maps are filled.
            for slot, s in enumerate(chain):
                pipeline.maps["sw_stages"].set_fd(slot, objects[s.name].program(s.program).fd)
            if config.canary is not None and other_arm is not None:
                pipeline.maps["sw_arm"].set_fd(0, other_arm)
        except BaseException:
            for obj in objects.values():
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
        return self.stages[name].program(stages()[name].program)

    def egress_programs(self) -> dict[str, Program]:
        """The TC egress programs the chain's stages need on the interface, by stage."""
        registry = stages()
        return {name: obj.program(registry[name].egress) for name, obj in self.stages.items()
                if registry[name].egress}

    def state_fds(self) -> dict[str, int]:
        return {name: m.fd for name, m in self.maps.items() if name in state_maps()}

    # -- replacing the configuration offline ---------------------------------------------
    def apply(self, config: PipelineConfig) -> None:
        """Becomes a pipeline for `config`: a fresh load that keeps this one's state, as
        a reload does (but with nothing attached to swap)."""
        carried = carry(self)
        config = replace(config, hook=self.config.hook)  # where it runs does not change
        fresh = Pipeline.load(config, reuse=self.state_fds())
        after_swap(fresh.maps, config.chain, carried)
        self.close()
        self.__dict__.update(fresh.__dict__)

    # -- pins ----------------------------------------------------------------------------
    def pin(self, generation: Path, state: Path, own: Iterable[str] = ()) -> None:
        """Pins the programs and config maps in `generation`, a directory of their own
        that must not exist yet, and the state maps in `state` (a state map already
        pinned there is the same map, reused), except those in `own`: this generation's
        alone (a canary's verdict counters). Nothing that runs reads pins: pinning
        changes no verdict."""
        bpffs.make_pin_dir(state)  # and the interface's directory above it, checked
        generation.mkdir(mode=0o700)
        keep = state_maps().keys() - set(own)
        for name, m in self.maps.items():
            if name not in keep:
                m.pin(generation / name)
            elif not (state / name).exists():
                m.pin(state / name)
        self.root_program.pin(generation / ROOT_PIN)
        for name in self.stages:
            self.stage_program(name).pin(generation / f"prog_{name}")
        for name, program in self.egress_programs().items():
            program.pin(generation / f"{EGRESS_PIN_PREFIX}{name}")

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
        if result.retval != sw_return(self.config.hook, pkt.action):
            raise RuntimeError("the scratch does not hold this packet's decision; "
                               "was the thread moved to another CPU?")
        return pkt.action, pkt

    def returned_action(self, retval: int) -> int:
        """The verdict (SW_ACT_*) a program's return value to the kernel stands for."""
        if self.config.hook == "xdp":
            return retval
        return abi.ACTION_CODES[TC_VERDICTS.get(retval, "drop")]

    def counters(self) -> dict[tuple[str, str], tuple[int, int]]:
        return read_counters(self.maps["sw_counters"])


def sw_return(hook: str, action: int) -> int:
    """What a program built for the hook returns for a verdict (lib/ctx.h)."""
    if hook == "xdp":
        return action
    return _TC_RETURNS.get(abi.action_name(action), _TC_RETURNS["drop"])


def hook_object(name: str, hook: str) -> Path:
    """The object of a program built for a hook: TC's carry a .tc suffix (bpf/Makefile)."""
    return object_path(name if hook == "xdp" else f"{name}.{hook}")


def carry(pipeline_or_maps: "Pipeline | dict[str, Map]") -> dict[str, Any]:
    """What each stage carries from a generation that no longer runs."""
    maps = pipeline_or_maps.maps if isinstance(pipeline_or_maps, Pipeline) else pipeline_or_maps
    return {name: s.carry(maps) for name, s in stages().items()}


def after_swap(maps: dict[str, Map], chain: Iterable[str], carried: dict[str, Any]) -> None:
    """Each chain stage takes what it carried into its new, running, maps."""
    registry = stages()
    for name in chain:
        registry[name].after_swap(maps, carried.get(name))


def _live_index(chain: list[Stage], config: PipelineConfig, builds: list[StageBuild]) -> LiveIndex:
    index = LiveIndex()
    for build in builds:
        index.lookups.update(build.lookups)
    for s in chain:
        for name, places in s.reads(config.images[s.name]).items():
            index.reads.setdefault(name, set()).update(places)
    return index


def _sources(chain: list[Stage], config: PipelineConfig) -> Sources | None:
    maps = {s.name: m for s in chain if (m := s.sources(config.images[s.name])) is not None}
    return merge(maps) if maps else None


def _consts(config: PipelineConfig, next_position: int, sources: Sources | None = None,
            trie: addrtrie.Trie | None = None, table: tuple[str, bytes] | None = None) -> bytes:
    canary = config.canary.consts() if config.canary is not None and next_position == 0 else {}
    return pack("struct sw_consts", {
        **canary,
        **config.events.consts(),
        "next_slot": next_position if next_position < len(config.chain) else abi.SW_SLOT_END,
        "missed_action": abi.ACTION_CODES[config.missed_action],
        "end_action": abi.SW_ACT_PASS,
        "src_classes": int(sources is not None),
        "src_root4": trie.root4 if trie else 0,
        "src_root6": trie.root6 if trie else 0,
        "table_entries": len(table[1]) // 4 if table else 0,
        "limit_slot": config.chain.index("limit") if "limit" in config.chain else abi.SW_SLOT_END,
    })


def _root_build(config: PipelineConfig, sources: Sources | None) -> StageBuild:
    build = StageBuild()
    tab = TableImage()
    trie = addrtrie.build(tab, sources.nodes) if sources else None
    build.table = ("sw_src_tab", tab.value())
    build.rodata[CONSTS] = _consts(config, 0, sources, trie, build.table)
    hosts = trie.hosts if trie else {}
    if trie is not None and sources is not None:
        build.lookups["src"] = Lookup("src", "sw_src_tab", "sw_src_hosts", trie.root4, trie.root6,
                                      sources.live)
    build.sizes = {"sw_src_hosts": addrtrie.hash_size(hosts)}
    if hosts:
        build.contents["sw_src_hosts"] = addrtrie.host_contents(hosts)
    build.memory = tab.bytes + 96 * len(hosts)
    return build


def _prepare(obj: BpfObject, types: dict[str, tuple[str, str]], build: StageBuild,
             reuse: Mapping[str, int]) -> None:
    for name, (k, v) in types.items():
        obj.declare(name, k, v)
        if name in reuse:
            obj.reuse_map(name, reuse[name])
    for name, count in build.sizes.items():
        if name not in reuse:
            obj.set_max_entries(name, count)
    if build.table:
        obj.set_value_size(build.table[0], len(build.table[1]))
    for section, data in build.rodata.items():
        obj.set_rodata(section, data)


def _fill(maps: dict[str, Map], build: StageBuild) -> None:
    for name, (keys, values) in build.contents.items():
        maps[name].update_batch(keys, values)
    if build.table:
        maps[build.table[0]].update_raw(0, build.table[1])


def read_events(config: Any, budget: Map) -> dict:
    """The sampling a pipeline runs (its sw_config) and what its CPUs sent and refused,
    by kind, summed over CPUs."""
    out: dict = {"rate": config.ev_rate, "drops": config.ev_drop_every,
                 "passes": config.ev_pass_every}
    for kind, name in ((abi.SW_EV_DROPS, "drops"), (abi.SW_EV_PASSES, "passes")):
        cells = budget.lookup(kind) or []
        out[f"{name}_sent"] = sum(c.sent for c in cells)
        out[f"{name}_refused"] = sum(c.refused + c.lost for c in cells)
        out[f"{name}_ring_full"] = sum(c.ring_full for c in cells)
    return out


def read_counters(m: Map) -> dict[tuple[str, str], tuple[int, int]]:
    """Non-zero verdict counters summed over CPUs: (action, reason) -> (packets, bytes)."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for key, cells in m.lookup_batch():
        packets = sum(c.packets for c in cells)
        if packets:
            action, reason = divmod(int(key), abi.SW_R_MAX)
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


def pinned_maps(directory: Path, only: Mapping[str, tuple[str, str]] | None = None) -> dict[str, Map]:
    """The typed maps pinned in a pipeline's directory."""
    found = {}
    for name, (k, v) in (only or map_types()).items():
        if (directory / name).exists():
            found[name] = Map.open_pinned(directory / name, k, v)
    return found
