"""The lab: a client/attacker namespace wired to a protected server by one veth.

    sw-outside                                sw-server
    sw-out0  192.0.2.2   (client)    <-->     sw-srv0  192.0.2.1        (XDP here)
             192.0.2.66  (attacker)                    2001:db8:0:1::1
             2001:db8:0:1::2 / ::66

Those are the names of the default lab, the one `shieldwall lab up` gives a user. Labs
that a run builds for itself (tests, the demo, the benchmark) take names of their own,
LabTopology.unique() (`sw-<token>-outside`, `sw-<token>-out0`, ...), so that any number
of them and the user's lab coexist and each is torn down without touching the others.

LabTopology holds these facts (and the MACs and ifindexes read back after creation) so
tests, the traffic generator and the CLI agree on them. What runs in the lab is
elsewhere: servers.py (inside the server namespace), probes.py (traffic from outside).
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..dataplane.bpffs import remove_netns_pins
from ..kernel.names import check_ifname
from ..kernel.netns import NamespaceError, check_name
from . import netns as ns
from .netns import LabError

LAB_PREFIX = "sw-"


@dataclass(frozen=True)
class LabTopology:
    outside_ns: str = "sw-outside"
    server_ns: str = "sw-server"
    outside_if: str = "sw-out0"
    server_if: str = "sw-srv0"
    server_v4: str = "192.0.2.1"
    client_v4: str = "192.0.2.2"
    attacker_v4: str = "192.0.2.66"
    server_v6: str = "2001:db8:0:1::1"
    client_v6: str = "2001:db8:0:1::2"
    attacker_v6: str = "2001:db8:0:1::66"
    v4_prefix: int = 24
    v6_prefix: int = 64
    mtu: int = 1500
    # Known only once the lab exists (see lab_up); ifindexes are per namespace.
    server_mac: str = ""
    outside_mac: str = ""
    server_ifindex: int = 0
    outside_ifindex: int = 0

    def __post_init__(self) -> None:
        for name in (self.outside_if, self.server_if):
            check_ifname(name)
        for name in self.namespaces:
            try:
                check_name(name)
            except NamespaceError as exc:
                raise ValueError(str(exc)) from None

    @classmethod
    def unique(cls, prefix: str = LAB_PREFIX, **facts: Any) -> LabTopology:
        """A topology named for one run: namespaces `<prefix><token>-outside` and
        `-server`, interfaces `<prefix><token>-out0` and `-srv0`, with a random token no
        existing namespace carries. Other fields (addresses, MTU) come from `facts`."""
        taken = ns.list_netns(prefix)
        while True:
            stem = f"{prefix}{secrets.token_hex(3)}-"
            if not any(name.startswith(stem) for name in taken):
                break
        return cls(outside_ns=f"{stem}outside", server_ns=f"{stem}server",
                   outside_if=f"{stem}out0", server_if=f"{stem}srv0", **facts)

    @property
    def namespaces(self) -> tuple[str, str]:
        return (self.outside_ns, self.server_ns)

    def server_cidrs(self) -> list[str]:
        return [f"{self.server_v4}/{self.v4_prefix}", f"{self.server_v6}/{self.v6_prefix}"]

    def outside_cidrs(self) -> list[str]:
        # The client comes first, so its IPv4 address is the primary one and the default
        # source; the IPv6 attacker address is kept out of source selection in _build.
        return [
            f"{self.client_v4}/{self.v4_prefix}",
            f"{self.attacker_v4}/{self.v4_prefix}",
            f"{self.client_v6}/{self.v6_prefix}",
            f"{self.attacker_v6}/{self.v6_prefix}",
        ]

    def attacker_cidrs(self) -> list[str]:
        return [f"{self.attacker_v4}/{self.v4_prefix}", f"{self.attacker_v6}/{self.v6_prefix}"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_TOPOLOGY = LabTopology()


# --- building and tearing down ----------------------------------------------------


def _ends(topo: LabTopology) -> list[tuple[str, str, list[str]]]:
    """(namespace, interface, addresses) for each end of the veth."""
    return [
        (topo.outside_ns, topo.outside_if, topo.outside_cidrs()),
        (topo.server_ns, topo.server_if, topo.server_cidrs()),
    ]


def _problems(topo: LabTopology) -> list[str]:
    """What keeps the lab from being usable; empty when it is healthy."""
    problems = []
    for netns, ifname, cidrs in _ends(topo):
        if not ns.netns_exists(netns):
            problems.append(f"namespace {netns} missing")
            continue
        link = ns.link_show(netns, ifname)
        if link is None:
            problems.append(f"{ifname} missing in {netns}")
            continue
        if link.get("operstate") != "UP":
            problems.append(f"{ifname} is {link.get('operstate')}, not UP")
        if link.get("mtu") != topo.mtu:
            problems.append(f"{ifname} has MTU {link.get('mtu')}, not {topo.mtu}")
        addrs = ns.link_addresses(netns, ifname)
        have = {_cidr(a) for a in addrs}
        problems += [f"{cidr} missing on {ifname}" for cidr in cidrs if cidr not in have]
        problems += [f"{_cidr(a)} tentative on {ifname}" for a in addrs if a.get("tentative")]
    return problems


def _cidr(addr_info: dict[str, Any]) -> str:
    return str(ipaddress.ip_interface(f"{addr_info['local']}/{addr_info['prefixlen']}"))


def _build(topo: LabTopology, created: list[str]) -> None:
    """Builds the lab, appending each namespace to `created` as soon as it exists: one
    that could not be created (its name taken meanwhile) is someone else's."""
    for netns in topo.namespaces:
        ns.create_netns(netns)
        created.append(netns)
        # Before the veth exists, so its ends inherit "default" and never run DAD/RS.
        for scope in ("all", "default"):
            ns.disable_ipv6_dad_ra(netns, scope)
    ns.create_veth_pair(topo.outside_if, topo.outside_ns, topo.server_if, topo.server_ns, topo.mtu)
    for netns, ifname, cidrs in _ends(topo):
        ns.disable_ipv6_dad_ra(netns, ifname)
        # GRO turns on the veth's NAPI path, which is what lets it receive XDP frames
        # (XDP_TX from the peer, bpf_redirect from the traffic generator) even when no
        # XDP program is attached to it. Without tx checksum offload / TSO the XDP
        # program sees finished, MTU-sized packets as from a real wire. Best effort.
        ns.set_offloads(netns, ifname, gro=True, tx=False, tso=False, gso=False)
        for cidr in cidrs:
            # Traffic from the attacker addresses is always asked for explicitly.
            ns.add_address(netns, ifname, cidr, preferred=cidr not in topo.attacker_cidrs())
    for netns, ifname, _ in _ends(topo):
        ns.set_link_up(netns, ifname)
    # The outside end stands for the wire: it must receive what the server's XDP
    # answers with XDP_TX (SYN cookies), which veth delivers only to an XDP program.
    from .peer import attach_pass
    attach_pass(topo.outside_ns, topo.outside_if)


def _wait_healthy(topo: LabTopology, timeout: float = 5.0) -> None:
    # Carrier/operstate changes are applied asynchronously by the kernel's linkwatch.
    deadline = time.monotonic() + timeout
    while problems := _problems(topo):
        if time.monotonic() > deadline:
            raise LabError("lab did not come up: " + "; ".join(problems))
        time.sleep(0.05)


def _read_back(topo: LabTopology) -> LabTopology:
    """The topology with the MACs and ifindexes the kernel assigned."""
    server = ns.link_show(topo.server_ns, topo.server_if) or {}
    outside = ns.link_show(topo.outside_ns, topo.outside_if) or {}
    return replace(
        topo,
        server_mac=server.get("address", ""),
        outside_mac=outside.get("address", ""),
        server_ifindex=server.get("ifindex", 0),
        outside_ifindex=outside.get("ifindex", 0),
    )


def lab_up(topo: LabTopology = DEFAULT_TOPOLOGY) -> LabTopology:
    """Create the lab, or return the existing one if it is healthy.

    A partial or broken lab of this topology's names (e.g. left by a crash) is torn down
    and rebuilt; anything attached to the old interfaces, XDP programs included, goes
    with it. A build that fails removes what it created, and only that.
    """
    if not _problems(topo):
        return _read_back(topo)
    lab_down(topo)
    created: list[str] = []
    try:
        _build(topo, created)
        _wait_healthy(topo)
    except BaseException:
        _remove(created)
        raise
    return _read_back(topo)


def lab_down(topo: LabTopology = DEFAULT_TOPOLOGY) -> None:
    """Remove the topology's own namespaces; never fails if they are gone, and never
    touches any other namespace (another lab, a test run, the user's own).

    Deleting a namespace destroys the veth end inside it and so the whole pair.
    Processes left inside (servers from a crashed run) are killed, so the namespaces
    are really freed instead of lingering unnamed.
    """
    _remove(topo.namespaces)


def _remove(namespaces: Iterable[str]) -> None:
    errors = []
    for name in sorted(set(namespaces)):
        try:
            ns.delete_netns(name)
            # The interfaces went with the namespace; their pinned pipelines must too.
            remove_netns_pins(name)
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))


def lab_status(topo: LabTopology = DEFAULT_TOPOLOGY) -> dict[str, Any]:
    """What exists: namespaces, links (state, MAC, addresses, offloads) and XDP on the
    server interface. JSON-serialisable."""
    links: dict[str, Any] = {}
    for netns, ifname, _ in _ends(topo):
        link = ns.link_show(netns, ifname) if ns.netns_exists(netns) else None
        if link is None:
            links[ifname] = {"netns": netns, "present": False}
            continue
        links[ifname] = {
            "netns": netns,
            "present": True,
            "state": link.get("operstate"),
            "mtu": link.get("mtu"),
            "mac": link.get("address"),
            "ifindex": link.get("ifindex"),
            "addresses": [_cidr(a) for a in ns.link_addresses(netns, ifname)
                          if a.get("scope") == "global"],
            "offloads": ns.get_offloads(netns, ifname),
            "xdp": ns.xdp_attachment(link),
        }
    server_xdp = links[topo.server_if].get("xdp")
    problems = _problems(topo)
    return {
        "healthy": not problems,
        "problems": problems,
        "namespaces": {name: ns.netns_exists(name) for name in topo.namespaces},
        "links": links,
        "xdp_attached": server_xdp is not None,
        "xdp": server_xdp,
    }


@contextmanager
def lab(topo: LabTopology | None = None) -> Iterator[LabTopology]:
    """A lab for the duration of a block, torn down afterwards whatever happens.

    Without a topology the lab gets names of its own (LabTopology.unique()): a
    throw-away lab must neither adopt nor tear down one that somebody else has up.
    """
    if topo is None:
        topo = LabTopology.unique()
    try:
        yield lab_up(topo)
    finally:
        lab_down(topo)
