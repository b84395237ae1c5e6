"""Everything the doctor knows of a host comes through here.

`Facts` is the one layer between the checks and the machine: `LiveFacts` reads this
host (procfs, sysfs, ethtool, rtnetlink, generic netlink, libbpf's probes), `Recorded`
answers the same questions from a JSON profile. Every answer is plain JSON data, so a
live reading can be saved (`shieldwall doctor --record FILE`) and replayed in tests.

A reader that fails says so in its answer ({"error": "..."}) instead of raising: one
unreadable fact must not keep the doctor from judging the others.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from . import needs

SYSCTLS = ("net/core/bpf_jit_enable", "net/core/bpf_jit_harden",
           "kernel/unprivileged_bpf_disabled")
BTF_DIR = Path("/sys/kernel/btf")
KFUNCS = {"bpf_xdp_ct_lookup": ("vmlinux", "nf_conntrack")}
# ethtool feature names (ethtool -k shows the long ones: large-receive-offload, …)
FEATURES = ("rx-lro", "rx-gro-hw", "rx-vlan-hw-parse", "rx-vlan-stag-hw-parse", "rx-gro")
XDP_ACT = ("basic", "redirect", "ndo_xmit", "xsk_zerocopy", "hw_offload", "rx_sg", "ndo_xmit_sg")


class UnknownInterface(ValueError):
    """The interface asked about does not exist (in this network namespace)."""


class Facts:
    """What a host is: `host()` for the kernel and machine, `interface(name)` for one
    interface. Both return plain JSON data."""

    def host(self) -> dict[str, Any]:
        raise NotImplementedError

    def interface(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def record(self, iface: str | None = None) -> dict[str, Any]:
        """The facts as a profile: what `Recorded` loads."""
        interfaces = {}
        if iface:
            first = self.interface(iface)
            interfaces[iface] = first
            # The doctor judges a bond by its slaves and a VLAN by its lower device.
            for other in related_interfaces(first):
                try:
                    interfaces[other] = self.interface(other)
                except UnknownInterface:
                    pass
        return {"host": self.host(), "interfaces": interfaces}


def related_interfaces(facts: dict[str, Any]) -> list[str]:
    link = facts.get("link") or {}
    names = list(link.get("slaves") or [])
    if link.get("lower"):
        names.append(link["lower"]["name"])
    return names


class Recorded(Facts):
    """Facts from a profile: {"host": {...}, "interfaces": {name: {...}}}, optionally
    wrapped as {"facts": ...} beside a description and the expected findings."""

    def __init__(self, data: dict[str, Any]):
        self.data = data.get("facts", data)

    @classmethod
    def load(cls, path: str | Path) -> "Recorded":
        return cls(json.loads(Path(path).read_text()))

    def host(self) -> dict[str, Any]:
        return self.data["host"]

    def interface(self, name: str) -> dict[str, Any]:
        try:
            return self.data["interfaces"][name]
        except KeyError:
            raise UnknownInterface(f"no interface named {name!r} in this profile") from None


def _safely(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception as exc:  # a fact that cannot be read is itself a fact
        return {"error": f"{type(exc).__name__}: {exc}"}


class LiveFacts(Facts):
    """This host, read now. `steal_seconds` is how long the steal-time sample lasts;
    `sleep` is injectable so tests need not wait."""

    def __init__(self, steal_seconds: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                 proc: Path = Path("/proc"), netns: str | None = None):
        self.steal_seconds = steal_seconds
        self.sleep = sleep
        self.proc = proc
        # Interfaces are read inside this namespace; the host's facts outside it, since
        # some (net.core.bpf_jit_*) exist only in the initial network namespace.
        self.netns = netns
        if netns:
            from ..kernel.netns import NETNS_RUN_DIR, NamespaceError, check_name
            if not (NETNS_RUN_DIR / check_name(netns)).exists():
                raise NamespaceError(f"network namespace {netns!r} does not exist")

    # -- host -------------------------------------------------------------------------
    def host(self) -> dict[str, Any]:
        return {
            "kernel_release": os.uname().release,
            "euid": os.geteuid(),
            "btf": _safely(btf),
            "sysctl": self._sysctls(),
            "bpffs": _safely(lambda: bpffs_mounts(self.proc / "mounts")),
            "memlock": _safely(memlock),
            "cpus": os.cpu_count(),
            "probes": _safely(probes),
            "kfuncs": _safely(kfuncs),
            "steal": _safely(lambda: steal(self.proc / "stat", self.steal_seconds, self.sleep)),
            "nft": _safely(nft),
        }

    def _sysctls(self) -> dict[str, Any]:
        """Read where the command started when this thread has entered another namespace
        (as `up --netns` has): net.core.bpf_jit_* exist only in the initial one."""
        def read() -> dict[str, Any]:
            return {name: _safely(lambda n=name: _read(self.proc / "sys" / n)) for name in SYSCTLS}
        found = read()
        if all(not isinstance(v, dict) for v in found.values()) or self.proc != Path("/proc"):
            return found
        try:
            from ..kernel.netns import starting_netns
            with starting_netns():
                return read()
        except OSError:
            return found

    # -- interface --------------------------------------------------------------------
    def interface(self, name: str) -> dict[str, Any]:
        if self.netns:
            from ..kernel.netns import enter_netns
            with enter_netns(self.netns):
                return self._interface(name)
        return self._interface(name)

    def _interface(self, name: str) -> dict[str, Any]:
        where = f"network namespace {self.netns!r}" if self.netns else "this network namespace"
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            raise UnknownInterface(f"no interface named {name!r} in {where}") from None
        from ..kernel.ethtool import driver_name
        link = _safely(lambda: link_facts(index))
        parent = link.get("parent_dev") if isinstance(link, dict) else None
        return {
            "name": name,
            "ifindex": index,
            "driver": _safely(lambda: driver_name(name)),
            "link": link,
            "xdp_features": _safely(lambda: xdp_features(index)),
            **_safely(lambda: ethtool_facts(name)),
            "xdp": _safely(lambda: xdp_attached(index)),
            "tcx": {d: _safely(lambda d=d: tcx_attached(index, d)) for d in ("ingress", "egress")},
            "irqs": _safely(lambda: queue_irqs(self.proc, name, parent)),
        }


def _read(path: Path) -> str:
    return path.read_text().strip()


# -- kernel and BPF ---------------------------------------------------------------------

def btf() -> dict[str, Any]:
    path = BTF_DIR / "vmlinux"
    return {"path": str(path), "present": path.is_file(),
            "bytes": path.stat().st_size if path.is_file() else 0}


def bpffs_mounts(mounts: Path) -> list[str]:
    return [line.split()[1] for line in mounts.read_text().splitlines()
            if len(line.split()) > 2 and line.split()[2] == "bpf"]


def memlock() -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    # Read, never raised: since 5.11 BPF memory is charged to the cgroup, and before
    # that raising the limit is the operator's decision, not a side effect of a check.
    unlimited = resource.RLIM_INFINITY
    return {"soft": None if soft == unlimited else soft, "hard": None if hard == unlimited else hard}


def probes() -> dict[str, Any]:
    from ..kernel import libbpf
    out: dict[str, Any] = {"source": "libbpf probe API (libbpf_probe_bpf_*)",
                           "prog_types": {}, "map_types": {}, "helpers": {}}
    for t in needs.PROG_TYPES + needs.OPTIONAL_PROG_TYPES:
        p = libbpf.probe_prog_type(t)
        out["prog_types"][t] = {"supported": p.supported, "errno": p.errno}
    for m in needs.MAP_TYPES:
        out["map_types"][m] = libbpf.probe_map_type(m).supported
    for t in needs.PROG_TYPES:
        out["helpers"][t] = {h: libbpf.probe_helper(t, h).supported for h in needs.helpers_for(t)}
    return out


def kfuncs() -> dict[str, bool | None]:
    """Whether each kfunc's name is in the kernel's BTF (kfuncs are found by BTF, not
    by helper id, so no helper probe can see them); None without BTF."""
    out: dict[str, bool | None] = {}
    for name, files in KFUNCS.items():
        paths = [BTF_DIR / f for f in files if (BTF_DIR / f).is_file()]
        out[name] = (any(b"\0" + name.encode() + b"\0" in p.read_bytes() for p in paths)
                     if paths else None)
    return out


def steal(stat: Path, seconds: float, sleep: Callable[[float], None]) -> dict[str, Any]:
    """Steal time over a short sample: the share of CPU time the hypervisor gave to
    other guests while this one wanted to run."""
    if seconds <= 0:  # a caller in a hurry (`up --mode auto`) skips the sample
        return {"seconds": 0, "skipped": True, "source": str(stat)}

    def sample() -> list[int]:
        fields = stat.read_text().splitlines()[0].split()
        return [int(v) for v in fields[1:]]
    before = sample()
    sleep(seconds)
    after = sample()
    delta = [a - b for a, b in zip(after, before)]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    total = sum(delta[:8])
    return {"seconds": seconds, "steal_ticks": delta[7] if len(delta) > 7 else 0,
            "total_ticks": total, "source": str(stat)}


def nft() -> dict[str, Any]:
    path = shutil.which("nft")
    if not path:
        return {"binary": None, "works": False, "detail": "no nft binary in PATH"}
    proc = subprocess.run([path, "list", "tables"], capture_output=True, text=True, timeout=10)
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    return {"binary": path, "version": version.stdout.strip(), "works": proc.returncode == 0,
            "detail": proc.stderr.strip()[:300]}


# -- interface --------------------------------------------------------------------------

def link_facts(index: int) -> dict[str, Any]:
    """From rtnetlink, which answers for the caller's network namespace (sysfs may show
    another one)."""
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        links = {l["index"]: l for l in ip.get_links()}
    me = links[index]

    def kind(link: Any) -> str | None:
        info = link.get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info else None

    def ref(i: int | None) -> dict[str, Any] | None:
        if not i or i not in links:
            return None
        return {"name": links[i].get_attr("IFLA_IFNAME"), "kind": kind(links[i])}

    my_kind = kind(me)
    out: dict[str, Any] = {
        "kind": my_kind,
        "mtu": me.get_attr("IFLA_MTU"),
        "max_mtu": me.get_attr("IFLA_MAX_MTU"),
        "rx_queues": me.get_attr("IFLA_NUM_RX_QUEUES"),
        "tx_queues": me.get_attr("IFLA_NUM_TX_QUEUES"),
        "parent_dev": me.get_attr("IFLA_PARENT_DEV_NAME"),
        "master": ref(me.get_attr("IFLA_MASTER")),
        # IFLA_LINK of a veth is its peer: only stacked devices have a lower one.
        "lower": ref(me.get_attr("IFLA_LINK")) if my_kind in ("vlan", "macvlan", "ipvlan") else None,
        "slaves": sorted(l.get_attr("IFLA_IFNAME") for l in links.values()
                         if l.get_attr("IFLA_MASTER") == index),
        "uppers": sorted(l.get_attr("IFLA_IFNAME") for l in links.values()
                         if l.get_attr("IFLA_LINK") == index and l["index"] != index
                         and kind(l) in ("vlan", "macvlan", "ipvlan")),
    }
    if my_kind == "vlan":
        data = me.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        out["vlan_id"] = data.get_attr("IFLA_VLAN_ID") if data else None
    return out


def ethtool_facts(name: str) -> dict[str, Any]:
    from pyroute2.ethtool import Ethtool
    out: dict[str, Any] = {}
    eth = Ethtool()
    try:
        out["channels"] = _safely(lambda: eth.get_channels(name)._asdict())
        out["rings"] = _safely(lambda: _rings(eth, name))
        out["features"] = _safely(lambda: _features(eth, name))
    finally:
        eth.close()
    return out


def _rings(eth: Any, name: str) -> dict[str, Any] | None:
    try:
        r = eth.get_rings(name)
    except Exception as exc:
        if "NotSupported" in type(exc).__name__ or getattr(exc, "errno", None) == errno.EOPNOTSUPP:
            return None  # the driver has no rings to report (veth, bond)
        raise
    return {k: getattr(r, k) for k in ("rx", "rx_max", "tx", "tx_max")}


def _features(eth: Any, name: str) -> dict[str, Any]:
    found = eth.get_features(name).features
    # "available" is ethtool's negation of [fixed]: whether the user may change it.
    return {n: {"on": bool(found[n].enable), "fixed": not found[n].available}
            for n in FEATURES if n in found}


def xdp_attached(index: int) -> dict[str, Any]:
    from ..kernel import libbpf, xdp
    state = xdp.query(index)
    programs = []
    for mode, prog_id in (("native", state.native_id), ("generic", state.generic_id),
                          ("offload", state.offload_id)):
        if prog_id:
            programs.append({"id": prog_id, "mode": mode, "name": libbpf.prog_name_by_id(prog_id)})
    return {"mode": state.mode, "programs": programs}


def tcx_attached(index: int, direction: str) -> list[dict[str, Any]]:
    from ..kernel import libbpf
    return [{"id": i, "name": libbpf.prog_name_by_id(i)}
            for i in libbpf.tcx_programs(index, direction == "ingress")]


def queue_irqs(proc: Path, name: str, parent: str | None) -> list[dict[str, Any]]:
    """The receive-queue interrupts of the interface, named after it (eth0-TxRx-0,
    i40e-eth0-TxRx-0, eth0-Tx-Rx-0) or after its device (virtio2-input.0,
    mlx5_comp0@pci:0000:3b:00.0)."""
    lines = (proc / "interrupts").read_text().splitlines()
    ncpus = len(lines[0].split())
    mine = re.compile(rf"(^|-){re.escape(name)}-")
    device = re.compile(rf"(^|[@:]){re.escape(parent)}(?![0-9])") if parent else None
    out = []
    for line in lines[1:]:
        fields = line.split()
        if not fields or not fields[0].rstrip(":").isdigit():
            continue
        action = fields[-1]
        if not (mine.search(action) or (device and device.search(action))):
            continue
        if any(word in action.lower() for word in ("config", "output", "async", "cmd", "pages")):
            continue
        irq = fields[0].rstrip(":")
        affinity = _safely(lambda: _read(proc / "irq" / irq / "effective_affinity_list"))
        out.append({"irq": int(irq), "name": action,
                    "counts": [int(v) for v in fields[1:1 + ncpus]],
                    "affinity": affinity if isinstance(affinity, str) else None})
    return out


# -- the xdp-features attribute (netdev generic netlink family, kernel 6.3+) ------------

NLMSG_ERROR = 2
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NETDEV_CMD_DEV_GET = 1
NETDEV_A_DEV_IFINDEX = 1
NETDEV_A_DEV_XDP_FEATURES = 3
NETDEV_A_DEV_XDP_ZC_MAX_SEGS = 4
NLM_F_REQUEST = 1


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out, pos = {}, 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("HH", data, pos)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return out


def _genl(sock: socket.socket, family: int, cmd: int, attrs: bytes) -> dict[int, bytes]:
    body = struct.pack("BBH", cmd, 1, 0) + attrs
    sock.send(struct.pack("IHHII", 16 + len(body), family, NLM_F_REQUEST, 1, 0) + body)
    reply = sock.recv(65536)
    _, kind = struct.unpack_from("IH", reply)
    if kind == NLMSG_ERROR:
        err = -struct.unpack_from("i", reply, 16)[0]
        raise OSError(err, os.strerror(err))
    return _attrs(reply[20:])


def xdp_features(index: int) -> dict[str, Any]:
    """The driver's own account of its XDP support, through generic netlink (the
    family answers for the caller's network namespace)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16) as sock:  # NETLINK_GENERIC
        sock.settimeout(5)
        try:
            family = _genl(sock, GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                           _attr(CTRL_ATTR_FAMILY_NAME, b"netdev\0"))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return {"available": False, "why": "no netdev generic netlink family (kernel before 6.3)"}
            raise
        family_id = struct.unpack("H", family[CTRL_ATTR_FAMILY_ID][:2])[0]
        dev = _genl(sock, family_id, NETDEV_CMD_DEV_GET,
                    _attr(NETDEV_A_DEV_IFINDEX, struct.pack("I", index)))
    if NETDEV_A_DEV_XDP_FEATURES not in dev:
        return {"available": False, "why": "the netdev family has no xdp-features attribute"}
    bits = struct.unpack("Q", dev[NETDEV_A_DEV_XDP_FEATURES][:8])[0]
    out: dict[str, Any] = {"available": True, "raw": bits,
                           "flags": [n for i, n in enumerate(XDP_ACT) if bits & (1 << i)],
                           "source": "netlink netdev family, NETDEV_A_DEV_XDP_FEATURES"}
    if NETDEV_A_DEV_XDP_ZC_MAX_SEGS in dev:
        out["zc_max_segs"] = struct.unpack("I", dev[NETDEV_A_DEV_XDP_ZC_MAX_SEGS][:4])[0]
    return out
