"""What the doctor knows of NIC drivers when the kernel cannot say (before 6.3, no
xdp-features attribute): the release that brought native XDP to each, and the largest
MTU a single-buffer XDP program accepts there.

Sources: bcc's docs/kernel-versions.md ("XDP" driver table) for the releases, and each
driver's XDP set-up code for the MTU limits (the headroom, skb_shared_info and, for
some, the VLAN and FCS room they keep out of a 4 KiB page).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "bcc docs/kernel-versions.md (XDP driver table), drivers' ndo_bpf code"


@dataclass(frozen=True)
class Driver:
    native_since: tuple[int, int]
    # The largest MTU a program without frags support may run under natively.
    single_buffer_mtu: int = 3498
    # The release that let the driver hand multi-buffer frames to an xdp.frags program,
    # None if it never does.
    frags_since: tuple[int, int] | None = None
    note: str = ""


DRIVERS: dict[str, Driver] = {
    "veth": Driver((4, 14), 3494, (5, 19)),
    "virtio_net": Driver((4, 10), 3506, (6, 3)),
    "tun": Driver((4, 14), 3506, None),
    "ena": Driver((5, 6), 3498, None, "AWS ENA: MTU above 3498 refuses XDP"),
    "mlx4_en": Driver((4, 8), 3498, None),
    "mlx5_core": Driver((4, 9), 3498, (6, 4)),
    "i40e": Driver((4, 13), 3046, (6, 4), "i40e keeps 3 KiB buffers for XDP"),
    "ice": Driver((5, 5), 3046, (6, 3)),
    "ixgbe": Driver((4, 12), 3046, None),
    "ixgbevf": Driver((4, 17), 3046, None),
    "igb": Driver((5, 10), 3046, None),
    "igc": Driver((5, 13), 3046, None),
    "bnxt_en": Driver((4, 11), 3498, (5, 19)),
    "qede": Driver((4, 10), 3498, None),
    "nfp": Driver((4, 10), 3498, None),
    "hv_netvsc": Driver((5, 6), 3498, None),
    "xen-netfront": Driver((5, 9), 3498, None),
    "gve": Driver((6, 4), 3498, None),
    "sfc": Driver((5, 5), 3498, None),
}

# Devices that have no driver-mode XDP of their own.
NEVER_NATIVE = {"bridge", "vlan", "macvlan", "ipvlan", "dummy", "ifb", "wireguard", "tunnel"}
