"""Driver facts about an interface, through the ethtool ioctl (works in any netns,
unlike /sys/class/net, which shows the namespace sysfs was mounted in)."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO_SIZE = 196  # struct ethtool_drvinfo: cmd, driver[32], version[32], …


def driver_name(iface: str) -> str | None:
    """The driver behind the interface (veth, virtio_net, ena, …), or None if unknown."""
    drvinfo = ctypes.create_string_buffer(struct.pack("I", ETHTOOL_GDRVINFO), _DRVINFO_SIZE)
    ifreq = struct.pack("16sP", iface.encode()[:15], ctypes.addressof(drvinfo))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
        except OSError:
            return None
    return drvinfo.raw[4:36].split(b"\0", 1)[0].decode() or None
