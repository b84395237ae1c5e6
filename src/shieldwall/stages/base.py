"""What a stage is: one C program (bpf/stages/<name>.bpf.c) and one Python module here.

A stage module subclasses Stage and registers an instance (stages/__init__.py finds the
modules by themselves). Everything else — the policy loader, the reference model,
`check`, the pipeline loader, `status` — asks the registry, so a new stage touches its
C file, its module, and the header entry for the layouts it shares with C.

The life of a stage's data, in the order the pipeline uses it:

    section(doc, v)      its part of the policy file, validated (issues reported to v)
    link(section, all, v) the same, once every section is read (references between them)
    image(section)       what the stage computes from it, in pure Python
    sources(image)       its longest-prefix view of source addresses, if it keys on them
    build(image, column) its config maps' contents and its program's constants; column
                         maps the pipeline's source classes to its own values
    carry(maps)          what must follow from the generation it replaces, read once that
                         one has stopped running (its counters are final then)
    after_swap(maps, c)  hands that to the new generation's maps (which already run)
    status(maps)         its part of `status`, read back from the pinned maps

Config maps are rebuilt from the policy for every load; state maps (counters, buckets,
blocks) are pinned and handed to the next load, so they survive reloads.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from .. import abi

if TYPE_CHECKING:
    from ..dataplane.sources import SourceMap
    from ..kernel.libbpf import Map
    from ..model.parse import ParsedPacket
    from ..policy.errors import Issue
    from ..policy.model import Policy
    from ..policy.reference import Decision
    from ..policy.validator import Validator

MapTypes = dict[str, tuple[str, str]]  # map name -> (key type, value type), cffi names


@dataclass(eq=False)
class StageBuild:
    """A stage's part of one load: its program's constants (rodata section -> bytes),
    its config maps' sizes, their contents as (keys, values) bytes for one batch update
    each, and its table (lib/table.h: one map value) by map name."""

    rodata: dict[str, bytes] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    contents: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    table: tuple[str, bytes] | None = None
    memory: int = 0  # bytes its config maps take, about
    # Address lookups of its own that live set entries can join in place
    # (dataplane.livehosts.Lookup), by name.
    lookups: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HostNeeds:
    """What a stage needs from the network namespace beside its programs while it is
    in force (engine/host.py sets it up and takes it down): an nftables table of its
    own, in family inet, and sysctl values (paths below /proc/sys). `unavailable` is
    the error to show when the host cannot give it (it names the policy field)."""

    table: str
    ruleset: str
    sysctls: dict[str, str]
    unavailable: str

    @staticmethod
    def table_for(stage: str, iface: str) -> str:
        """The table of a stage on an interface: nft names are letters, digits and _."""
        return f"shieldwall_{stage}_{re.sub(r'[^A-Za-z0-9_]', '_', iface)}"


class Stage:
    name: ClassVar[str]                      # what pipeline.stages calls it
    reasons: ClassVar[tuple[str, ...]] = ()  # reason codes it decides with (header SW_R_*)
    keys: ClassVar[tuple[str, ...]] = ()     # keys of the policy file it owns; a dotted one
                                             # (protect.syn) is a sub-key of another's section
    order: ClassVar[int]                     # its place in the default chain
    config_maps: ClassVar[MapTypes] = {}
    state_maps: ClassVar[MapTypes] = {}
    # A TC egress program of its object that must run on the interface while the chain
    # holds the stage (the lifecycle attaches it): it sees the host's own packets.
    egress: ClassVar[str | None] = None

    @property
    def module(self) -> int:
        """SW_MOD_<NAME>: what sw_pkt.module says when this stage decides."""
        return abi.defines()[f"SW_MOD_{self.name.upper()}"]

    @property
    def program(self) -> str:
        return f"sw_stage_{self.name}"

    @property
    def object(self) -> str:
        return self.name

    @property
    def maps(self) -> MapTypes:
        return {**self.config_maps, **self.state_maps}

    # -- the policy file ----------------------------------------------------------------
    def section(self, doc: dict, v: "Validator") -> Any:
        """Its keys of the (mapping) document, validated; problems go to v.report with
        their field paths. Called with the keys absent too: return the default."""
        raise NotImplementedError

    def link(self, section: Any, sections: dict[str, Any], v: "Validator") -> Any:
        """Its section once every stage has read its own: for references between
        sections (a rule's action naming a limit); problems go to v.report."""
        return section

    def busy(self, section: Any) -> bool:
        """Whether it has work to do: a stage with none stays out of the default chain,
        where it would cost a tail call per packet for nothing."""
        return True

    def place(self, section: Any) -> int:
        """Its place in the default chain for this section (`order` unless the section
        changes where it has work to do)."""
        return self.order

    def required(self, section: Any) -> bool:
        """Whether leaving it out of an explicit chain would change a decision (then the
        loader refuses such a chain)."""
        return self.busy(section)

    def summary(self, section: Any) -> list[str]:
        """Its lines in `check`."""
        return []

    def warnings(self, policy: "Policy") -> Iterable["Issue"]:
        """Legal but suspicious things in its section, for `check`."""
        return ()

    def changes(self, old: Any, new: Any) -> list[str]:
        """What changes in its section, in lines for `reload --dry-run`."""
        return [] if old == new else [f"{self.name}: changed"]

    def sets_used(self, section: Any) -> set[str]:
        """Names of the policy's sets it references."""
        return set()

    # -- the reference model ------------------------------------------------------------
    def decide(self, section: Any, pkt: "ParsedPacket") -> "Decision | None":
        """Its decision for a packet the root parsed, or None to hand it on."""
        raise NotImplementedError

    # -- the data plane -----------------------------------------------------------------
    def image(self, section: Any) -> Any:
        """Everything its maps will hold, computed in pure Python (may raise ValueError
        when the kernel maps could not hold it)."""
        return section

    def sources(self, image: Any) -> "SourceMap | None":
        """Its longest-prefix map of source addresses, when it keys on the source."""
        return None

    def build(self, image: Any, column: list[int] | None) -> StageBuild:
        raise NotImplementedError

    def reads(self, image: Any) -> dict[str, set[str]]:
        """The sets its image depends on, each with the lookups that read it: "src" (the
        root's source classification) or a lookup of its own build. A set read anywhere
        else (constants of the program, ...) cannot take live entries in place."""
        return {}

    def carry(self, maps: dict[str, "Map"]) -> Any:
        """What must follow from the maps of a generation that no longer runs; handed
        to after_swap. Called again on recovery: it must only read."""
        return None

    def after_swap(self, maps: dict[str, "Map"], carried: Any) -> None:
        """Gives the new generation (its maps, live) what carry() read. A recovery may
        call it twice with the same data: it must set, not add."""

    def host(self, section: Any, iface: str) -> HostNeeds | None:
        """What it needs from the host's network namespace while in force on iface."""
        return None

    def status(self, maps: dict[str, "Map"]) -> dict:
        """Its part of `status --json`, read from the pinned maps."""
        return {}

    def status_lines(self, report: dict) -> list[str]:
        """Its lines in `status` (report: what status() returned)."""
        return []

    def describe(self, image: Any) -> list[str]:
        """What its maps hold and cost, for `check`."""
        return []
