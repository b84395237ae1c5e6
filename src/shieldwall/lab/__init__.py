"""A throw-away network lab in namespaces for trying shieldwall on real traffic."""

from .netns import LabError, enter_netns, run
from .topology import (
    DEFAULT_TOPOLOGY,
    LabServer,
    LabTopology,
    lab,
    lab_down,
    lab_status,
    lab_up,
    ping,
    start_tcp_server,
    start_udp_echo,
    tcp_banner,
    tcp_connect,
    udp_roundtrip,
)

__all__ = [
    "DEFAULT_TOPOLOGY",
    "LabError",
    "LabServer",
    "LabTopology",
    "enter_netns",
    "lab",
    "lab_down",
    "lab_status",
    "lab_up",
    "ping",
    "run",
    "start_tcp_server",
    "start_udp_echo",
    "tcp_banner",
    "tcp_connect",
    "udp_roundtrip",
]
