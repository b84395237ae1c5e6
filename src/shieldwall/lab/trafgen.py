"""Kernel-speed traffic generator: BPF_PROG_TEST_RUN in live-frames mode with a program
that rewrites each frame and then sends it out of a veth end (bpf/tools/trafgen.bpf.c),
or hands it to a program under test in the same run.

The frames reach the peer's XDP program as if a NIC had received them, at millions of
packets per second, with no tool outside this project. Every run is bounded by its
packet count, and a timed one (send_for) by its time as well.

Three kinds of traffic:
- fixed: one template, optionally with its source cycling through a range;
- random: templates (IPv4, IPv6, VLAN-tagged) whose source and the fields each one
  names (ports, TTL, protocol, TCP flags, length, ...) are drawn afresh for every frame:
  all of them, what no cache absorbs, or those of an attack of one shape (attacks.py);
- replay: captured frames, round-robin, each sent once per round.

How often each replayed frame went out is exact (replayed()): a test can compare what
crossed a device, frame by frame, with what was sent.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from typing import Sequence

from .. import abi
from ..kernel.libbpf import BpfObject
from ..kernel.netns import enter_netns
from ..kernel.testrun import prog_test_run, prog_test_run_live
from ..kernel.xdp import ifindex
from ..paths import object_path

MAX_PACKETS = 50_000_000  # a hard bound on any one run
BATCH = 64
MAX_SECONDS = 600         # a hard bound on any one timed run
TICK = 0.01               # a paced run sends a burst this often
FULL_SPEED_BURST = 100_000  # frames per test run when no rate is asked for: ~50 ms


@dataclass(frozen=True)
class SendResult:
    sent: int
    seconds: float
    ns_per_packet: float = 0.0  # the kernel's own measure of the run (chained runs)

    @property
    def mpps(self) -> float:
        return self.sent / self.seconds / 1e6 if self.seconds else 0.0


@dataclass(frozen=True)
class Template:
    """A random-mode template: an Ethernet frame whose fields the generator rewrites.

    `src_bits` low bits of the source address are drawn at random per frame; the
    rest of the template's source stays, so sources stay inside its prefix. `rewrite`
    (abi.SW_GEN_RW_* bits) names the other fields drawn per frame; by default all of
    them, so nothing repeats. With SW_GEN_RW_CSUM the checksums are made right again,
    the transport one at `l4_csum` bytes into the L4 header.
    """

    frame: bytes
    l3_off: int
    l4_off: int
    family: int          # abi.SW_FAMILY_IPV4 or SW_FAMILY_IPV6
    src_bits: int
    vlan_off: int = 0    # offset of the innermost VLAN tag's TCI, 0 when untagged
    rewrite: int = abi.SW_GEN_RW_ALL
    l4_csum: int = 0


class TrafficGenerator:
    """Sends frames out of `iface` in namespace `netns`, or (iface None) only feeds a
    program under test through run_chained()."""

    def __init__(self, netns: str | None, iface: str | None):
        self.netns = netns
        self.iface = iface
        self.obj = BpfObject(object_path("trafgen"))
        self.obj.declare("sw_gen_config", "__u32", "struct sw_gen_config")
        self.obj.declare("sw_gen_templates", "__u32", "struct sw_gen_template")
        self.obj.declare("sw_gen_frames", "__u32", "struct sw_gen_frame")
        self.obj.declare("sw_gen_sent", "__u32", "__u64")
        self.obj.load()
        self.ifindex = 0
        if iface is not None:
            with enter_netns(netns) if netns else _nothing():
                self.ifindex = ifindex(iface)
        self._config: dict = {}
        self._frame = b""

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> "TrafficGenerator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what to send -----------------------------------------------------------------
    def fixed(self, template: bytes, spread_sources: int = 0, src_offset: int = 0) -> None:
        """The template as is; with spread_sources, the source address (whose last 4
        bytes start at src_offset) counts up from the template's through that many
        values in its low 16 bits: a spoofed flood from a range."""
        self._configure(abi.SW_GEN_FIXED, src_spread=spread_sources, src_offset=src_offset,
                        src_base=int.from_bytes(template[src_offset + 2:src_offset + 4], "big"))
        self._frame = template

    def random(self, templates: Sequence[Template], ports: Sequence[int] = ()) -> None:
        """Random mode: a template drawn per frame, the fields it names rewritten. Half
        the ports drawn come from `ports` (a policy's own, to reach its classes), half are
        uniform."""
        if not 0 < len(templates) <= abi.SW_GEN_TEMPLATES:
            raise ValueError(f"between 1 and {abi.SW_GEN_TEMPLATES} templates")
        length = max(len(t.frame) for t in templates)
        m = self.obj.map("sw_gen_templates")
        for i, t in enumerate(templates):
            if len(t.frame) < abi.SW_GEN_HDR_MAX:
                raise ValueError(f"a template frame holds at least {abi.SW_GEN_HDR_MAX} bytes")
            m.update(i, {"hdr_len": abi.SW_GEN_HDR_MAX, "frame_len": length, "l3_off": t.l3_off,
                         "l4_off": t.l4_off, "vlan_off": t.vlan_off, "family": t.family,
                         "src_bits": t.src_bits, "rewrite": t.rewrite, "l4_csum": t.l4_csum, "data": list(t.frame[:abi.SW_GEN_HDR_MAX])})
        ports = list(ports)[:abi.SW_GEN_PORTS]
        self._configure(abi.SW_GEN_RANDOM, ntemplates=len(templates), nports=len(ports),
                        ports=ports + [0] * (abi.SW_GEN_PORTS - len(ports)))
        self._frame = max((t.frame for t in templates), key=len)

    def replay(self, frames: Sequence[bytes]) -> None:
        """Replay mode: the frames in turn, each sent once per round."""
        usable = [f for f in frames if 14 <= len(f) <= abi.SW_GEN_FRAME_MAX]
        if not usable:
            raise ValueError(f"no frame between 14 and {abi.SW_GEN_FRAME_MAX} bytes to replay")
        m = self.obj.map("sw_gen_frames")
        if len(usable) > m.max_entries:
            usable = usable[:m.max_entries]
        for i, f in enumerate(usable):
            m.update(i, {"len": len(f), "data": list(f)})
        self._configure(abi.SW_GEN_REPLAY, nframes=len(usable))
        self._frame = max(usable, key=len)

    def sent_per_cpu(self) -> list[int]:
        """Frames generated so far on each CPU (the generator's per-CPU count, which
        only ever grows). Two readings around a replay give replayed() its input."""
        return [int(n) for n in self.obj.map("sw_gen_sent").lookup(0)]

    def _configure(self, mode: int, **fields: object) -> None:
        self._config = {"ifindex": self.ifindex, "mode": mode, **fields}
        self.obj.map("sw_gen_config").update(0, self._config)

    # -- sending ----------------------------------------------------------------------
    def send(self, template: bytes | None, count: int, spread_sources: int = 0,
             src_offset: int = 0) -> SendResult:
        """Sends `count` frames out of the interface: `template` in fixed mode, or
        (template None) whatever fixed()/random()/replay() set up."""
        if self.iface is None:
            raise ValueError("this generator has no interface to send on")
        _check_count(count)
        if template is not None:
            self.fixed(template, spread_sources, src_offset)
        prog = self.obj.program("sw_trafgen")
        # Live frames are injected in the caller's network namespace: the redirect target
        # is looked up there.
        with enter_netns(self.netns) if self.netns else _nothing():
            start = time.perf_counter()
            prog_test_run_live(prog.fd, self._frame, repeat=count, batch_size=BATCH)
            seconds = time.perf_counter() - start
        return SendResult(count, seconds)

    def send_for(self, seconds: float, rate: int | None = None) -> SendResult:
        """Sends what fixed()/random()/replay() set up for `seconds`: `rate` frames a
        second, in a burst every TICK, or (rate None) as fast as the generator goes.
        Stops by itself: every burst is bounded, and so is the time."""
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be above 0 and at most {MAX_SECONDS}")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be a positive number of frames a second")
        sent, start = 0, time.monotonic()
        deadline = start + seconds
        while (now := time.monotonic()) < deadline:
            if rate is None:
                burst = FULL_SPEED_BURST
            else:
                # What the rate owes by now; a late tick catches up in one burst.
                burst = min(int((now - start) * rate) - sent, MAX_PACKETS)
                if burst < 1:
                    time.sleep(min(TICK, deadline - now))
                    continue
            sent += self.send(None, burst).sent
        return SendResult(sent, time.monotonic() - start)

    def run_chained(self, target_fd: int, count: int, live: bool = True) -> SendResult:
        """Feeds `count` frames to the program `target_fd`. Live: in live-frames mode,
        its verdicts carried out for real (in the caller's network namespace: a passed
        frame goes up that stack). Not live: the programs alone, on one buffer the
        generator rewrites every time, whatever the verdict."""
        _check_count(count)
        self.obj.map("sw_gen_target").set_fd(0, target_fd)
        prog = self.obj.program("sw_trafgen_chain")
        start = time.perf_counter()
        if live:
            result = prog_test_run_live(prog.fd, self._frame, repeat=count, batch_size=BATCH)
        else:
            result = prog_test_run(prog.fd, self._frame, repeat=count)
        seconds = time.perf_counter() - start
        return SendResult(count, seconds, result.duration_ns)


def replayed(before: Sequence[int], after: Sequence[int], nframes: int) -> list[int]:
    """How many times each of a replay's `nframes` frames was generated between two
    readings of sent_per_cpu(). A run may move from CPU to CPU, but on each CPU the
    generator takes frame `count % nframes` and then counts, so CPU c generated exactly
    frames before[c] .. after[c] - 1 (modulo nframes), whatever the interleaving."""
    if nframes <= 0 or len(before) != len(after):
        raise ValueError("replayed() needs nframes > 0 and two readings of the same CPUs")
    counts = [0] * nframes
    for first, last in zip(before, after):
        if last < first:
            raise ValueError("the generator's count went backwards: not the same generator")
        rounds, rest = divmod(last - first, nframes)
        for i in range(nframes):
            counts[i] += rounds
        for k in range(rest):
            counts[(first + k) % nframes] += 1
    return counts


def _check_count(count: int) -> None:
    if not 0 < count <= MAX_PACKETS:
        raise ValueError(f"count must be between 1 and {MAX_PACKETS}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def xdp_rx_packets(netns: str, iface: str) -> int:
    """Frames that reached the XDP program of a veth end (its driver statistics)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "ethtool", "-S", iface],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"rx_queue_\d+_xdp_packets:\s*(\d+)", out))
