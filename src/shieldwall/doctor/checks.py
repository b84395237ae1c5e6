"""The checks: facts in, findings out. Pure functions of the facts, so every profile
(this host read live, or a recorded one) is judged by the same code.

A finding names its check, says ok, warn or fail, shows the evidence (the value read
and where), what it costs shieldwall, and the remedy. `blocks` lists the modes it rules
out: the verdict is computed from those alone.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from . import drivers, needs

OK, WARN, FAIL = "ok", "warn", "fail"
BPF_MODES = ("native", "generic", "tc")
XDP_MODES = ("native", "generic")


@dataclass
class Finding:
    check: str
    status: str
    evidence: str
    impact: str
    remedy: str = ""
    blocks: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d


@dataclass
class Context:
    host: dict[str, Any]
    iface: dict[str, Any] | None = None
    # Facts of the interfaces the first one depends on (a bond's slaves, a VLAN's lower).
    related: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def version(self) -> tuple[int, int] | None:
        return parse_version(self.host.get("kernel_release", ""))

    def has(self, since: tuple[int, int]) -> bool | None:
        return None if self.version is None else self.version >= since


def parse_version(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _error(value: Any) -> str | None:
    return value.get("error") if isinstance(value, dict) else None


# -- kernel -----------------------------------------------------------------------------

def kernel_version(ctx: Context) -> list[Finding]:
    release = ctx.host.get("kernel_release", "")
    version = ctx.version
    where = f"{release or '?'} (uname -r)"
    if version is None:
        return [Finding("kernel.version", WARN, f"unreadable release {where}",
                        "the doctor cannot compare features with the kernel's version; the "
                        "probes still answer", "")]
    missing = [name for name, (since, *_) in needs.FEATURES.items() if version < since]
    if version < (5, 18):
        return [Finding("kernel.version", FAIL, where,
                        "shieldwall's XDP programs need 5.18 (multi-buffer programs, "
                        "bpf_xdp_get_buff_len), its stages 5.17 (bpf_loop); missing here: "
                        + ", ".join(missing),
                        "a kernel of 6.6 or later (Debian 12 backports, Ubuntu 24.04, any "
                        "distribution's HWE kernel); until then, nft mode",
                        blocks=BPF_MODES if version < (5, 17) else XDP_MODES)]
    if missing:
        return [Finding("kernel.version", WARN, where,
                        f"runs shieldwall, without: {', '.join(missing)}",
                        "a kernel of 6.6 or later has every feature shieldwall uses")]
    return [Finding("kernel.version", OK, where, "every feature shieldwall uses is there (6.6+)")]


# Features whose presence a probe confirms: feature -> (probe kind, names).
_PROBED = {
    "coarse_clock": ("helper", ("bpf_ktime_get_coarse_ns",)),
    "bpf_timer": ("helper", ("bpf_timer_init", "bpf_timer_set_callback", "bpf_timer_start")),
    "bpf_loop": ("helper", ("bpf_loop",)),
    "xdp_frags": ("helper", ("bpf_xdp_get_buff_len",)),
    "syn_cookies": ("helper", needs._COOKIES),
    "xdp_ct_lookup": ("kfunc", ("bpf_xdp_ct_lookup",)),
}
# A missing feature that costs a defense, not just convenience, is a failure.
_DEFENSES = {"syn_cookies"}


def kernel_features(ctx: Context) -> list[Finding]:
    out = []
    probes = ctx.host.get("probes") or {}
    helpers = (probes.get("helpers") or {}).get("xdp") \
        if not _error(probes) and _probes_valid(ctx) else None
    kfuncs = ctx.host.get("kfuncs") if not _error(ctx.host.get("kfuncs")) else None
    for name, (since, use, loss, blocks) in needs.FEATURES.items():
        check = f"kernel.{name}"
        has = ctx.has(since)
        evidence = f"kernel {ctx.host.get('kernel_release', '?')}; {name} since {v(since)}"
        kind, names = _PROBED.get(name, (None, ()))
        probed: bool | None = None
        if kind == "helper" and helpers is not None:
            found = [helpers.get(n) for n in names]
            if all(f is not None for f in found):
                probed = all(found)
                evidence += ("; probed present" if probed else "; probe finds no "
                             + ", ".join(n for n, f in zip(names, found) if not f))
        elif kind == "kfunc" and kfuncs is not None and kfuncs.get(names[0]) is not None:
            probed = bool(kfuncs[names[0]])
            evidence += "; in the kernel's BTF" if probed else "; not in the kernel's BTF"
        if probed is True or (probed is None and has):
            out.append(Finding(check, OK, evidence, f"available: {use}"))
            continue
        severe = bool(blocks) or name in _DEFENSES
        if has and probed is False:
            evidence += " (the version has it: this kernel was built without it)"
            remedy = "a kernel built with it: the distribution's standard kernel, not a cut-down cloud image"
        else:
            remedy = f"a kernel of {v(since)} or later"
        if name == "xdp_ct_lookup":
            remedy += " (with nf_conntrack loaded)"
        out.append(Finding(check, FAIL if severe else WARN, evidence, loss, remedy,
                           blocks=tuple(blocks)))
    return out


def btf(ctx: Context) -> list[Finding]:
    b = ctx.host.get("btf") or {}
    if _error(b):
        return [Finding("bpf.btf", WARN, f"unreadable: {_error(b)}", "unknown", "")]
    where = b.get("path", "/sys/kernel/btf/vmlinux")
    if b.get("present"):
        return [Finding("bpf.btf", OK, f"{where}: {b.get('bytes', 0):,} bytes",
                        "kfuncs (bpf_xdp_ct_lookup) and BTF-aware tools (bpftool) work")]
    return [Finding("bpf.btf", WARN, f"{where} absent (CONFIG_DEBUG_INFO_BTF=n)",
                    "shieldwall's own programs carry their BTF and do not need the kernel's; "
                    "kfuncs such as bpf_xdp_ct_lookup and CO-RE tools do",
                    "a kernel built with CONFIG_DEBUG_INFO_BTF=y (the default of every major "
                    "distribution since 5.10)")]


def _sysctl(ctx: Context, name: str) -> tuple[str | None, str]:
    value = (ctx.host.get("sysctl") or {}).get(name)
    where = f"/proc/sys/{name}"
    if value is None or _error(value):
        return None, f"{where} unreadable"
    return str(value), f"{where} = {value}"


def jit(ctx: Context) -> list[Finding]:
    out = []
    value, where = _sysctl(ctx, "net/core/bpf_jit_enable")
    if value == "1":
        out.append(Finding("bpf.jit", OK, where, "programs run as native code"))
    elif value == "2":
        out.append(Finding("bpf.jit", WARN, where + " (JIT with debug output)",
                           "every load writes the image to the kernel log", "sysctl net.core.bpf_jit_enable=1"))
    elif value == "0":
        out.append(Finding("bpf.jit", WARN, where,
                           "programs run in the interpreter, several times slower per packet",
                           "sysctl net.core.bpf_jit_enable=1 (kernels with CONFIG_BPF_JIT_ALWAYS_ON "
                           "have no choice to make)"))
    else:
        out.append(Finding("bpf.jit", WARN, where, "unknown whether programs are compiled",
                           "read it in the host's own network namespace"))
    value, where = _sysctl(ctx, "net/core/bpf_jit_harden")
    if value in ("0", "1"):
        out.append(Finding("bpf.jit_harden", OK, where,
                           "root's programs are compiled without constant blinding"))
    elif value == "2":
        out.append(Finding("bpf.jit_harden", WARN, where,
                           "constant blinding for every program: a few more instructions per "
                           "packet in every stage", "sysctl net.core.bpf_jit_harden=1 (blinds "
                           "unprivileged programs only)"))
    else:
        out.append(Finding("bpf.jit_harden", WARN, where, "unknown", ""))
    return out


def unprivileged(ctx: Context) -> list[Finding]:
    value, where = _sysctl(ctx, "kernel/unprivileged_bpf_disabled")
    if value in ("1", "2"):
        return [Finding("bpf.unprivileged", OK, where,
                        "none: shieldwall runs as root; unprivileged users cannot load BPF")]
    if value == "0":
        return [Finding("bpf.unprivileged", WARN, where,
                        "none for shieldwall; any user may load socket filters, a Spectre "
                        "gadget surface", "sysctl kernel.unprivileged_bpf_disabled=2")]
    return [Finding("bpf.unprivileged", WARN, where, "unknown", "")]


def bpffs(ctx: Context) -> list[Finding]:
    mounts = ctx.host.get("bpffs")
    if _error(mounts) or mounts is None:
        return [Finding("bpf.bpffs", WARN, "/proc/mounts unreadable", "unknown", "")]
    if "/sys/fs/bpf" in mounts:
        return [Finding("bpf.bpffs", OK, "bpf mounted at /sys/fs/bpf (/proc/mounts)",
                        "pinned links and state maps outlive the process")]
    return [Finding("bpf.bpffs", WARN, f"no bpf mount at /sys/fs/bpf (/proc/mounts: "
                    f"{', '.join(mounts) or 'none'})",
                    "shieldwall mounts one at `up` (mode 0700); a container without the "
                    "mount privilege cannot, and pins would not outlive it",
                    "mount -t bpf -o mode=0700 bpf /sys/fs/bpf (systemd does at boot)")]


def memory(ctx: Context) -> list[Finding]:
    lim = ctx.host.get("memlock") or {}
    soft = lim.get("soft") if not _error(lim) else "?"
    where = f"RLIMIT_MEMLOCK soft {'unlimited' if soft is None else soft}"
    if ctx.has(needs.FEATURES["memcg_accounting"][0]):
        return [Finding("bpf.memory", OK, f"kernel {ctx.host.get('kernel_release')} charges BPF "
                        f"memory to the memory cgroup (5.11+); {where} does not apply",
                        "maps of any size load within the cgroup's memory limit")]
    if soft is None or (isinstance(soft, int) and soft >= 1 << 30):
        return [Finding("bpf.memory", OK, f"kernel before 5.11 counts BPF memory against "
                        f"RLIMIT_MEMLOCK; {where}", "enough for a million-prefix set")]
    return [Finding("bpf.memory", WARN, f"kernel before 5.11 counts BPF memory against "
                    f"RLIMIT_MEMLOCK; {where}",
                    "maps beyond the limit fail to load (EPERM); shieldwall never raises the "
                    "limit itself", "LimitMEMLOCK=infinity in the service unit, or "
                    "`ulimit -l unlimited` before starting shieldwall")]


def privileges(ctx: Context) -> list[Finding]:
    euid = ctx.host.get("euid")
    if euid in (0, None):
        return []
    return [Finding("doctor.privileges", WARN, f"the doctor ran as uid {euid}, not root",
                    "the kernel refuses BPF probes to unprivileged users: program types, map "
                    "types and helpers are judged by the kernel version alone, and some "
                    "interface facts may be missing", "run it as root (sudo shieldwall doctor)")]


def _probes_valid(ctx: Context) -> bool:
    return ctx.host.get("euid") in (0, None)


def _probed(ctx: Context, key: str) -> dict[str, Any] | None:
    """One part of the probes' answers, or None when they cannot be trusted."""
    probes = ctx.host.get("probes") or {}
    if not _probes_valid(ctx) or _error(probes):
        return None
    return probes.get(key)


def prog_types(ctx: Context) -> list[Finding]:
    if not _probes_valid(ctx):
        return []
    probes = ctx.host.get("probes") or {}
    if _error(probes) or not probes.get("prog_types"):
        return [Finding("bpf.probes", WARN, f"libbpf probes failed: {_error(probes) or 'no answer'}",
                        "program types, map types and helpers are judged by version alone", "")]
    types = probes["prog_types"]
    out = []
    for name, modes, use in (("xdp", XDP_MODES, "native and generic modes"),
                             ("sched_cls", ("tc",), "tc mode and the egress programs")):
        t = types.get(name) or {}
        evidence = f"libbpf_probe_bpf_prog_type({name}) = {'yes' if t.get('supported') else 'no'}"
        if t.get("supported"):
            out.append(Finding(f"bpf.prog_type.{name}", OK, evidence, f"{use} can load"))
        else:
            out.append(Finding(f"bpf.prog_type.{name}", FAIL, evidence + f" (errno {t.get('errno', 0)})",
                               f"{use} cannot load", "a kernel with CONFIG_BPF_SYSCALL and "
                               "CONFIG_NET_CLS_BPF / XDP support", blocks=modes))
    refused = [n for n in needs.OPTIONAL_PROG_TYPES if not (types.get(n) or {}).get("supported")]
    if not refused:
        out.append(Finding("bpf.prog_type.optional", OK, "ext, tracing and lsm load",
                           "none: shieldwall does not use them"))
        return out
    how = ", ".join(f"{n} (errno {(types.get(n) or {}).get('errno', 0)})" for n in refused)
    profile = ""
    eperm = all((types.get(n) or {}).get("errno") == 1 for n in refused)
    if eperm and ctx.has((5, 7)):
        profile = ("; the kernel has these types (5.7+) but refuses them to root: a "
                   "restricted-BPF profile (lockdown, an LSM or a hardened build)")
    out.append(Finding("bpf.prog_type.optional", OK, f"refused: {how}{profile}",
                       "none for shieldwall: its stages chain by tail calls through a prog "
                       "array. libxdp's multi-program dispatcher needs ext (freplace) and "
                       "falls back to one program here; tracing tools (bpftrace fentry) fail",
                       "nothing to do for shieldwall"))
    return out


def map_types(ctx: Context) -> list[Finding]:
    found = _probed(ctx, "map_types")
    if not found:
        return []
    needed = needs.map_types()
    missing = [m for m in needed if found.get(m) is False]
    where = "libbpf_probe_bpf_map_type: " + ", ".join(f"{m} {'yes' if found.get(m) else 'no'}"
                                                       for m in needed)
    if not missing:
        return [Finding("bpf.map_types", OK, where, "every map type shieldwall declares loads")]
    lost = sorted(p for p, (_, maps) in needs.PROGRAMS.items() if set(maps) & set(missing))
    core = set(lost) & set(needs.CORE_PROGRAMS)
    return [Finding("bpf.map_types", FAIL, where,
                    f"missing {', '.join(missing)}: {', '.join(lost)} cannot load",
                    "a kernel built with the standard BPF map types",
                    blocks=BPF_MODES if core else ())]


def helpers(ctx: Context) -> list[Finding]:
    found = _probed(ctx, "helpers")
    if not found:
        return []
    lost: dict[str, list[str]] = {}
    blocks: set[str] = set()
    for prog_type, modes in (("xdp", XDP_MODES), ("sched_cls", ("tc",))):
        have = found.get(prog_type) or {}
        for program, (hs, _) in needs.PROGRAMS.items():
            missing = [h for h in hs if have.get(h) is False]
            if missing:
                lost.setdefault(f"{program} ({prog_type})", []).extend(missing)
                if program in needs.CORE_PROGRAMS:
                    blocks.update(modes)
    count = len(needs.helpers())
    if not lost:
        return [Finding("bpf.helpers", OK, f"all {count} helpers shieldwall calls probe present "
                        "for xdp and sched_cls (libbpf_probe_bpf_helper)",
                        "every stage can load")]
    detail = "; ".join(f"{p}: {', '.join(sorted(set(h)))}" for p, h in sorted(lost.items()))
    stages = sorted({p.split()[0] for p in lost})
    return [Finding("bpf.helpers", FAIL, f"missing helpers (libbpf_probe_bpf_helper): {detail}",
                    f"these programs cannot load: {', '.join(stages)}"
                    + ("; the chain itself cannot run" if blocks else "; leave them out of the policy"),
                    "a kernel built with the helpers (a full distribution kernel, not a cut-down "
                    "cloud image)", blocks=tuple(m for m in BPF_MODES if m in blocks))]


# -- host -------------------------------------------------------------------------------

def steal(ctx: Context) -> list[Finding]:
    s = ctx.host.get("steal") or {}
    if s.get("skipped"):
        return [Finding("host.steal", OK, "not sampled (asked not to wait)", "unknown; "
                        "`shieldwall doctor` samples it")]
    if _error(s) or not s.get("total_ticks"):
        return [Finding("host.steal", WARN, f"no steal sample ({_error(s) or 'no ticks'})", "unknown", "")]
    share = 100.0 * s.get("steal_ticks", 0) / s["total_ticks"]
    where = (f"{share:.1f}% steal over {s.get('seconds', '?')} s "
             f"({s.get('steal_ticks')} of {s['total_ticks']} ticks, {s.get('source', '/proc/stat')})")
    if share < 2.0:
        return [Finding("host.steal", OK, where, "the vCPUs are this guest's when it needs them")]
    return [Finding("host.steal", WARN, where,
                    "the hypervisor runs other guests on these CPUs: packet processing stalls "
                    "at random, and drop rates under a flood vary with the neighbours",
                    "dedicated vCPUs (a 'dedicated' or 'CPU-optimized' plan); measure again "
                    "under load")]


def nft(ctx: Context) -> list[Finding]:
    n = ctx.host.get("nft") or {}
    if not _probes_valid(ctx) and n.get("binary"):
        return [Finding("nft.available", WARN, f"{n['binary']} present; nf_tables not checked "
                        "(listing tables needs root)", "unknown whether nft mode runs",
                        "run the doctor as root")]
    if _error(n):
        return [Finding("nft.available", FAIL, f"nft unusable: {_error(n)}",
                        "nft mode cannot run", "apt install nftables", blocks=("nft",))]
    if n.get("works"):
        return [Finding("nft.available", OK, f"{n.get('binary')} ({n.get('version', '?')}) lists tables",
                        "nft mode can run as the last fallback")]
    return [Finding("nft.available", FAIL, f"{n.get('binary') or 'no nft binary'}: {n.get('detail', '')}".strip(),
                    "nft mode cannot run", "apt install nftables (and a kernel with nf_tables)",
                    blocks=("nft",))]


# -- interface --------------------------------------------------------------------------

def _flags(iface: dict[str, Any]) -> list[str] | None:
    xf = iface.get("xdp_features") or {}
    return xf.get("flags") if isinstance(xf, dict) and xf.get("available") else None


def _kind(iface: dict[str, Any]) -> str | None:
    link = iface.get("link") or {}
    return link.get("kind") if not _error(link) else None


def native_support(ctx: Context, iface: dict[str, Any]) -> tuple[bool | None, str]:
    """Whether the interface runs XDP in its driver, and how the doctor knows."""
    name = iface.get("name", "?")
    kind = _kind(iface)
    driver = iface.get("driver") if isinstance(iface.get("driver"), str) else None
    flags = _flags(iface)
    if kind == "bond":
        return None, "a bond: native through its slaves"
    if flags is not None:
        return "basic" in flags, (f"xdp-features of {name}: {', '.join(flags) or 'none'} "
                                  "(netlink NETDEV_A_DEV_XDP_FEATURES)")
    if kind in drivers.NEVER_NATIVE:
        return False, f"{name} is a {kind} device: no driver-mode XDP"
    known = drivers.DRIVERS.get(driver or "")
    if known is None:
        return None, f"driver {driver or 'unknown'}: not in the doctor's table ({drivers.SOURCE})"
    has = ctx.has(known.native_since)
    return has, (f"driver {driver}: native XDP since {v(known.native_since)} ({drivers.SOURCE}); "
                 f"kernel {ctx.host.get('kernel_release', '?')}")


def iface_driver(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    name = iface["name"]
    driver = iface.get("driver")
    out = []
    native, how = native_support(ctx, iface)
    kind = _kind(iface)
    if kind == "bond":
        out.extend(_bond(ctx, iface))
    elif native:
        out.append(Finding("iface.native_xdp", OK, how, "packets are decided in the driver, "
                           "before an sk_buff exists"))
    elif native is None:
        out.append(Finding("iface.native_xdp", WARN, how,
                           "unknown until tried: `up --mode auto` tries native and falls back "
                           "to generic", "run `shieldwall up --mode native` once to find out"))
    else:
        out.append(Finding("iface.native_xdp", FAIL, how,
                           "no native mode: generic mode runs after the sk_buff is allocated, "
                           "so a flood still costs an allocation per packet",
                           "a NIC/driver with native XDP (virtio_net, ena, mlx5, i40e, ice, "
                           "ixgbe, bnxt_en, ...), or a newer kernel for this driver",
                           blocks=("native",)))
    flags = _flags(iface)
    if flags is not None:
        have = [f for f in ("redirect", "ndo_xmit", "xsk_zerocopy", "rx_sg") if f in flags]
        out.append(Finding("iface.xdp_actions", OK,
                           f"xdp-features of {name}: redirect {'yes' if 'redirect' in flags else 'no'}, "
                           f"redirect target {'yes' if 'ndo_xmit' in flags else 'no'}, zero-copy "
                           f"{'yes' if 'xsk_zerocopy' in flags else 'no'}, multi-buffer "
                           f"{'yes' if 'rx_sg' in flags else 'no'}",
                           "shieldwall needs only XDP_PASS/DROP/TX (basic)"
                           + ("" if have else "; no redirect or zero-copy here"), ""))
    else:
        xf = iface.get("xdp_features") or {}
        out.append(Finding("iface.xdp_actions", OK,
                           f"no xdp-features attribute ({xf.get('why') or _error(xf) or 'unknown'}); "
                           f"driver {driver}", "redirect and zero-copy support unknown; "
                           "shieldwall needs only XDP_PASS/DROP/TX", ""))
    return out


def _bond(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    slaves = (iface.get("link") or {}).get("slaves") or []
    verdicts = []
    for s in slaves:
        facts = ctx.related.get(s)
        native, how = native_support(ctx, facts) if facts else (None, "not recorded")
        verdicts.append((s, native, how))
    where = f"{iface['name']} is a bond of {', '.join(slaves) or 'no slaves'}"
    if not ctx.has(needs.BOND_XDP_SINCE):
        return [Finding("iface.native_xdp", FAIL, where + f"; kernel {ctx.host.get('kernel_release')} "
                        f"has no bond XDP (5.15)", "XDP on the bond itself runs generic only",
                        f"attach shieldwall to each slave ({', '.join(slaves)}) instead, or a "
                        "kernel of 5.15 or later", blocks=("native",))]
    bad = [s for s, native, _ in verdicts if native is False]
    unknown = [s for s, native, _ in verdicts if native is None]
    if bad or not slaves:
        return [Finding("iface.native_xdp", FAIL, where + "; without native XDP: "
                        + (", ".join(bad) or "no slaves"),
                        "the bond refuses native XDP unless every slave supports it",
                        "attach to the slaves that do, or replace those that do not",
                        blocks=("native",))]
    if unknown:
        return [Finding("iface.native_xdp", WARN, where + "; unknown: " + ", ".join(unknown),
                        "native XDP on the bond works only if every slave supports it",
                        "run the doctor on each slave")]
    return [Finding("iface.native_xdp", OK, where + "; every slave runs native XDP "
                    "(bond XDP since 5.15)", "the bond installs the program on each slave")]


def channels(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    ch = iface.get("channels")
    cpus = ctx.host.get("cpus") or 0
    driver = iface.get("driver")
    out = []
    if not isinstance(ch, dict) or _error(ch):
        out.append(Finding("iface.channels", OK, f"no channel counts ({_error(ch) or 'not reported'})",
                           "the driver has no queues to spread", ""))
        return out
    current = ch.get("combined_count") or ch.get("rx_count") or 0
    maximum = ch.get("max_combined") or ch.get("max_rx") or 0
    where = f"ethtool -l: {current} queue(s) in use of {maximum}; {cpus} CPU(s)"
    if driver == "veth":
        out.append(Finding("iface.channels", OK, where, "veth queues are software: XDP runs on "
                           "the CPU of the sender", ""))
    elif current and cpus and current < cpus:
        out.append(Finding("iface.channels", WARN, where,
                           f"receive work spreads over {current} CPU(s) only: a flood saturates "
                           "them while the others idle",
                           f"ethtool -L {iface['name']} combined {min(cpus, maximum or cpus)}"
                           if maximum > current else "a plan/NIC with more queues"))
    else:
        out.append(Finding("iface.channels", OK, where, "a queue per CPU"))
    if driver == "virtio_net":
        out.append(_virtio_queues(ctx, iface, current, maximum, cpus))
    return out


def _virtio_queues(ctx: Context, iface: dict[str, Any], current: int, maximum: int,
                   cpus: int) -> Finding:
    """virtio-net gives XDP_TX a TX queue per CPU of its own, taken from the queue pairs
    the stack does not use; with too few, it shares the stack's under a lock (5.13+)
    or refuses the program (before)."""
    where = (f"virtio_net: {current} queue pair(s) in use, {maximum} offered by the "
             f"hypervisor, {cpus} vCPU(s); XDP_TX needs {current} + {cpus} = {current + cpus}")
    if maximum >= current + cpus:
        return Finding("iface.virtio_queues", OK, where, "XDP_TX (SYN-ACKs from the syn stage) "
                       "gets lock-free queues of its own")
    if ctx.has((5, 13)):
        return Finding("iface.virtio_queues", WARN, where,
                       "native XDP attaches, but XDP_TX shares the stack's TX queues under a "
                       "lock: the syn stage's SYN-ACKs contend with all other traffic",
                       f"a VM with at least {2 * cpus} queue pairs (2 x vCPUs: libvirt "
                       f"<driver queues='{2 * cpus}'/>, or the provider's multiqueue option), "
                       f"then ethtool -L {iface['name']} combined {cpus}")
    return Finding("iface.virtio_queues", FAIL, where,
                   "native XDP is refused (ENOMEM: too few TX queues) on kernels before 5.13",
                   f"a VM with at least {2 * cpus} queue pairs, or a kernel of 5.13 or later",
                   blocks=("native",))


def _feature(iface: dict[str, Any], name: str) -> dict[str, Any] | None:
    f = iface.get("features")
    if not isinstance(f, dict) or _error(f):
        return None
    return f.get(name)


def offloads(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    name, driver = iface["name"], iface.get("driver")
    out = []
    lro, gro_hw = _feature(iface, "rx-lro"), _feature(iface, "rx-gro-hw")
    if lro is None and gro_hw is None:
        return [Finding("iface.lro", WARN, "ethtool -k unreadable", "unknown", "")]
    on = [(label, f) for label, f in (("large-receive-offload", lro), ("rx-gro-hw", gro_hw))
          if f and f["on"]]
    where = "ethtool -k: " + ", ".join(
        f"{label} {'on' if f and f['on'] else 'off'}{' [fixed]' if f and f['fixed'] else ''}"
        for label, f in (("large-receive-offload", lro), ("rx-gro-hw", gro_hw)) if f)
    if not on:
        return [Finding("iface.lro", OK, where, "frames arrive as the wire carried them")]
    fixed = [label for label, f in on if f["fixed"]]
    if driver in _SELF_CLEARING and not fixed:
        return [Finding("iface.lro", OK, where, f"{driver} turns these offloads off itself when "
                        "XDP attaches")]
    if fixed:
        return [Finding("iface.lro", FAIL, where,
                        "native XDP is refused while the host merges segments and the guest "
                        "cannot turn it off (virtio_net: 'Can't set XDP while host is "
                        "implementing GRO_HW/CSUM'; other drivers: LRO is on)",
                        "ask the provider to offer VIRTIO_NET_F_CTRL_GUEST_OFFLOADS or to "
                        "disable guest TSO/LRO on the host side (QEMU: guest_tso4=off,"
                        "guest_tso6=off,guest_ecn=off,guest_ufo=off); otherwise generic mode",
                        blocks=("native",))]
    out.append(Finding("iface.lro", FAIL, where,
                       "the driver refuses native XDP while LRO/HW-GRO merge frames (generic "
                       "XDP turns LRO off by itself)",
                       f"ethtool -K {name} lro off rx-gro-hw off, then native mode works",
                       blocks=("native",)))
    return out


# Drivers that drop the offloads themselves when a program attaches (virtio_net when the
# hypervisor offers VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, bnxt_en always).
_SELF_CLEARING = {"virtio_net", "bnxt_en"}


def mtu(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    link = iface.get("link") or {}
    value = link.get("mtu") if not _error(link) else None
    if not value:
        return []
    driver = iface.get("driver") if isinstance(iface.get("driver"), str) else ""
    known = drivers.DRIVERS.get(driver)
    limit = known.single_buffer_mtu if known else 3498
    flags = _flags(iface)
    if flags is not None:
        frags = "rx_sg" in flags
        how = "xdp-features rx_sg " + ("yes" if frags else "no")
    elif known and known.frags_since:
        frags = bool(ctx.has(known.frags_since))
        how = f"{driver} multi-buffer XDP since {v(known.frags_since)}"
    else:
        frags = False
        how = f"{driver or 'driver'}: no multi-buffer XDP known"
    where = f"MTU {value} (rtnetlink); single-buffer XDP limit about {limit} on 4 KiB pages; {how}"
    if value <= limit:
        return [Finding("iface.mtu", OK, where, "every frame fits one buffer")]
    if frags and ctx.has((5, 18)):
        return [Finding("iface.mtu", OK, where, "frames above one page arrive as multi-buffer "
                        "frames, which shieldwall's programs (xdp.frags) accept")]
    return [Finding("iface.mtu", FAIL, where,
                    f"the driver refuses native XDP above MTU {limit} without multi-buffer "
                    "support", f"ip link set {iface['name']} mtu {min(limit, 1500)}, or a "
                    "driver/kernel with multi-buffer XDP; generic mode takes any MTU",
                    blocks=("native",))]


def rings(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    r = iface.get("rings")
    driver = iface.get("driver")
    if not isinstance(r, dict) or _error(r):
        return [Finding("iface.rings", OK, f"no ring sizes ({_error(r) or 'the driver has none'})",
                        "nothing to tune", "")]
    where = f"ethtool -g: rx {r.get('rx')}/{r.get('rx_max')}, tx {r.get('tx')}/{r.get('tx_max')}"
    if driver == "ena" and (r.get("tx") or 0) <= 1024:
        grow = (r.get("tx_max") or 0) > (r.get("tx") or 0)
        return [Finding("iface.rings", WARN, where,
                        "ENA's XDP_TX rings are the size of the TX ring (1024): SYN-ACKs the syn "
                        "stage sends with XDP_TX overflow them under a SYN flood, and native "
                        "XDP_TX/redirect can do worse than generic mode here",
                        (f"ethtool -G {iface['name']} tx {r.get('tx_max')}" if grow else
                         "an instance type/ENA driver with large LLQ (bigger TX rings)")
                        + "; or keep native for drops and let the stack answer SYNs")]
    if (r.get("rx") or 0) and r.get("rx_max") and r["rx"] < r["rx_max"] // 2:
        return [Finding("iface.rings", WARN, where, "a short RX ring drops bursts before XDP sees them",
                        f"ethtool -G {iface['name']} rx {r['rx_max']}")]
    return [Finding("iface.rings", OK, where, "rings are not the bottleneck")]


def vlan_offload(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    f = _feature(iface, "rx-vlan-hw-parse")
    if f is None:
        return []
    where = f"ethtool -k: rx-vlan-offload {'on' if f['on'] else 'off'}{' [fixed]' if f['fixed'] else ''}"
    if not f["on"]:
        return [Finding("iface.vlan_offload", OK, where, "VLAN tags stay in the frame where "
                        "the parser reads them")]
    return [Finding("iface.vlan_offload", WARN, where,
                    "the NIC strips 802.1Q tags into metadata XDP does not see: tagged frames "
                    "are still parsed (no bypass), but policy rules on `vlan` never match",
                    "nothing if the policy has no `vlan` rules; otherwise "
                    + ("a driver that can keep the tag" if f["fixed"]
                       else f"ethtool -K {iface['name']} rxvlan off"))]


def topology(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    link = iface.get("link") or {}
    if _error(link):
        return [Finding("iface.topology", WARN, f"rtnetlink: {_error(link)}", "unknown", "")]
    name, kind = iface["name"], link.get("kind")
    if kind == "vlan" and link.get("lower"):
        lower = link["lower"]["name"]
        return [Finding("iface.topology", FAIL, f"{name} is VLAN {link.get('vlan_id')} on {lower} (rtnetlink)",
                        "XDP on a VLAN device runs generic only, after the tag is removed, "
                        "and sees only that VLAN's traffic",
                        f"attach shieldwall to {lower}: it parses 802.1Q itself, and `vlan` "
                        "rules select the VLAN", blocks=("native",))]
    if kind == "bond":
        return [Finding("iface.topology", OK, f"{name} is a bond of {', '.join(link.get('slaves') or [])}",
                        "attached to the bond, shieldwall sees every slave's traffic",
                        "attach to the bond, never to its slaves as well")]
    master = link.get("master")
    if master and master.get("kind") == "bond":
        return [Finding("iface.topology", WARN, f"{name} is a slave of bond {master['name']}",
                        "a program here sees this slave's share only, and the bond's own XDP "
                        "(if any) would own this hook",
                        f"attach to {master['name']} (kernel 5.15+) or to every slave alike")]
    uppers = link.get("uppers") or []
    evidence = f"{name}: {kind or 'physical'} device" + (
        f", under VLAN devices {', '.join(uppers)}" if uppers else "") + (
        f", port of {master['kind']} {master['name']}" if master else "")
    return [Finding("iface.topology", OK, evidence,
                    "shieldwall sees all of this device's traffic"
                    + (", VLANs included (tags parsed)" if uppers else ""))]


def classify_program(name: str | None) -> str:
    if not name:
        return "foreign"
    if name == "sw_root":
        return "shieldwall"
    if name == "xdp_dispatcher":
        return "libxdp"
    if name.startswith("cil_"):
        return "cilium"
    return "foreign"


_OWNERS = {"libxdp": "a libxdp dispatcher (xdp-loader, xdp-filter)", "cilium": "Cilium",
           "foreign": "another program"}


def xdp_programs(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    x = iface.get("xdp") or {}
    if _error(x):
        return [Finding("iface.xdp_programs", WARN, f"XDP query failed: {_error(x)}", "unknown", "")]
    progs = x.get("programs") or []
    if not progs:
        return [Finding("iface.xdp_programs", OK, "no XDP program attached (bpf_xdp_query)",
                        "the hook is free")]
    where = "bpf_xdp_query: " + ", ".join(f"{p.get('name')} id {p.get('id')} ({p.get('mode')})" for p in progs)
    owners = {classify_program(p.get("name")) for p in progs}
    if owners == {"shieldwall"}:
        return [Finding("iface.xdp_programs", OK, where, "shieldwall is already attached",
                        "shieldwall status / reload")]
    owner = next(o for o in ("cilium", "libxdp", "foreign") if o in owners)
    remedy = {"libxdp": f"xdp-loader unload {iface['name']} --all (after checking what it ran), "
                        "or `up --force`",
              "cilium": "Cilium's XDP acceleration owns the hook: turn it off "
                        "(loadBalancer.acceleration=disabled) or use tc mode beside it",
              "foreign": "find its owner (bpftool net show), remove it, or `up --force`"}[owner]
    return [Finding("iface.xdp_programs", FAIL, where,
                    f"{_OWNERS[owner]} holds the XDP hook: `up` does not displace it without "
                    "--force, and native and generic XDP cannot both be attached; tc mode "
                    "(tcx) works beside it", remedy, blocks=XDP_MODES)]


def tcx_programs(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    t = iface.get("tcx") or {}
    parts = []
    for d in ("ingress", "egress"):
        progs = t.get(d)
        if isinstance(progs, list):
            parts.append(f"{d}: " + (", ".join(f"{p.get('name')} id {p.get('id')}" for p in progs) or "none"))
        else:
            parts.append(f"{d}: {_error(progs) or 'unknown'}")
    ingress = t.get("ingress") if isinstance(t.get("ingress"), list) else []
    foreign = [p for p in ingress if classify_program(p.get("name")) != "shieldwall"]
    where = "tcx (bpf_prog_query) " + "; ".join(parts)
    if foreign:
        return [Finding("iface.tcx", WARN, where, "other programs run at TC ingress: in tc mode "
                        "shieldwall's runs after them unless placed first",
                        "bpftool net show dev " + iface["name"])]
    return [Finding("iface.tcx", OK, where, "TC ingress is shieldwall's to use")]


_SOFTWARE = {"veth", "tun", "bond", "vlan", "macvlan", "ipvlan", "bridge", "dummy"}


def irq_spread(ctx: Context, iface: dict[str, Any]) -> list[Finding]:
    irqs = iface.get("irqs")
    if _error(irqs) or irqs is None:
        return [Finding("host.irq_spread", WARN, f"/proc/interrupts: {_error(irqs)}", "unknown", "")]
    if not irqs:
        if iface.get("driver") in _SOFTWARE or _kind(iface) in _SOFTWARE:
            return [Finding("host.irq_spread", OK, f"no queue interrupts of {iface['name']} in "
                            "/proc/interrupts", "a software device: XDP runs where the sender's "
                            "softirq runs")]
        return [Finding("host.irq_spread", WARN, f"no queue interrupts of {iface['name']} found "
                        "in /proc/interrupts", "unknown spread", "cat /proc/interrupts")]
    cpus = ctx.host.get("cpus") or len(irqs[0].get("counts") or [])
    serving = sorted({i for q in irqs for i, c in enumerate(q.get("counts") or []) if c})
    affinity = sorted({q.get("affinity") for q in irqs if q.get("affinity")})
    where = (f"/proc/interrupts: {len(irqs)} receive queue IRQ(s) "
             f"({', '.join(q['name'] for q in irqs[:4])}{', ...' if len(irqs) > 4 else ''}) "
             f"served by CPU {', '.join(map(str, serving)) or 'none yet'} of {cpus}"
             + (f"; affinity {', '.join(affinity)}" if affinity else ""))
    if cpus > 1 and len(serving) <= 1 and len(irqs) <= 1:
        return [Finding("host.irq_spread", WARN, where,
                        "one CPU takes every packet of the interface: XDP's capacity is one "
                        "core's, whatever the machine has", "more queues (see iface.channels)")]
    if cpus > 1 and len(serving) <= 1:
        return [Finding("host.irq_spread", WARN, where, "every queue's interrupts land on one CPU",
                        "spread them: irqbalance, or echo CPU > /proc/irq/N/smp_affinity_list")]
    return [Finding("host.irq_spread", OK, where, "receive work spreads over CPUs")]


HOST_CHECKS: list[Callable[[Context], list[Finding]]] = [
    privileges, kernel_version, kernel_features, btf, jit, unprivileged, bpffs, memory, prog_types,
    map_types, helpers, steal, nft,
]
IFACE_CHECKS: list[Callable[[Context, dict[str, Any]], list[Finding]]] = [
    iface_driver, channels, offloads, mtu, rings, vlan_offload, topology, xdp_programs,
    tcx_programs, irq_spread,
]


def run(ctx: Context) -> list[Finding]:
    findings = [f for check in HOST_CHECKS for f in check(ctx)]
    if ctx.iface is not None:
        findings += [f for check in IFACE_CHECKS for f in check(ctx, ctx.iface)]
    return findings
