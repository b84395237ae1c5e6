"""A throw-away network lab in namespaces for trying shieldwall on real traffic."""

from .netns import LabError, enter_netns, run
from .probes import ping, tcp_banner, tcp_connect, udp_roundtrip
from .servers import LabServer, start_tcp_server, start_udp_echo
from .topology import DEFAULT_TOPOLOGY, LabTopology, lab, lab_down, lab_status, lab_up

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
