"""The lab's attacks, as data: each one a few templates for the kernel-speed generator
(trafgen.py, random mode) and which of their fields it draws afresh for every frame.

Spoofed sources come from the documentation ranges, never the lab's own 192.0.2.0/24
(where the client and the server live). IPv4 documentation space outside it is only
512 addresses, so the many-source floods draw most of their sources from IPv6
(2001:db8::/32 has 96 free bits); that the frames cannot leave the lab is said in
docs/results.md ("Attack scenarios").

One definition each; `templates()` turns a definition into frames for a lab.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from .. import abi
from ..model.parse import ETH_HLEN
from .topology import LabTopology
from .trafgen import TrafficGenerator, SendResult, Template

HTTP_PORT = 80      # the lab client's web requests and TCP connects
UDP_PORT = 53       # the lab client's UDP queries (an echo server stands in for DNS)
FRAME = abi.SW_GEN_HDR_MAX  # bytes: every template is this long, what the generator writes

SPOOF_V4_A = "198.51.100.0/24"
SPOOF_V4_B = "203.0.113.0/24"
SPOOF_V6 = "2001:db8:5::/48"
HEAVY_SOURCE = "203.0.113.7/32"
# 2^80 sources spread over 65,536 /64s: at 3 Mpps each /64 sends under 50 pps.
SLOW_SOURCES = "2001:db8:5100::/48"


@dataclass(frozen=True)
class Part:
    """One template: what it is (kind), where its sources come from (a prefix whose
    host bits the generator draws per frame; a /32 or /128 is one source) and where it
    goes (dport None: a port drawn per frame)."""

    kind: str            # syn, ack, udp, icmp, fragment-first, fragment-later,
                         # icmp-forged-unreach, icmp-forged-frag, icmp-forged-too-big,
                         # reflected, reflected-first
    sources: str
    dport: int | None = None
    sport: int | None = None  # reflected: the reflector's service port
    size: int = 0             # the frame's length, when longer than FRAME
    # TCP: the options a real stack's handshake carries (MSS, SACK, timestamps, window
    # scale), so a SYN takes a SYN cookie's slowest path: every option encoded.
    handshake: bool = False


@dataclass(frozen=True)
class Attack:
    name: str
    what: str
    parts: tuple[Part, ...]  # drawn with equal weight per frame (repeat one to weigh it)


def _many(kind: str, dport: int | None = None, handshake: bool = False) -> tuple[Part, ...]:
    """A random-source flood: both IPv4 documentation /24s outside the lab's own, and
    twice the IPv6 /48, which holds the millions of sources."""
    return tuple(Part(kind, prefix, dport, handshake)
                 for prefix in (SPOOF_V4_A, SPOOF_V4_B, SPOOF_V6, SPOOF_V6))


ATTACKS = {a.name: a for a in (
    Attack("syn", "SYN flood from random spoofed sources to the web port",
           _many("syn", HTTP_PORT)),
    Attack("ack", "ACK flood from random spoofed sources to the web port",
           _many("ack", HTTP_PORT)),
    Attack("syn-spoofed", "SYN flood from random spoofed sources and ports to the web port, "
           "each SYN with a real stack's options (MSS, SACK, timestamps, window scale)",
           _many("syn", HTTP_PORT, handshake=True)),
    Attack("syn-cookie-replay", "the handshake's last step forged: ACKs with timestamps and "
           "a cookie-like ack number from random spoofed sources and ports to the web port",
           _many("ack", HTTP_PORT, handshake=True)),
    Attack("udp", "UDP flood from random spoofed sources to random ports",
           _many("udp")),
    Attack("heavy", "one heavy-hitter source sending UDP to the served UDP port",
           (Part("udp", HEAVY_SOURCE, UDP_PORT),)),
    Attack("slow", "UDP to the served port from 2^80 sources in a /48, each far under "
           "100 pps", (Part("udp", SLOW_SOURCES, UDP_PORT),)),
    Attack("icmp", "ICMP echo flood from random spoofed sources", _many("icmp")),
    Attack("fragments", "IPv4 fragment flood (first and later fragments, a new "
           "datagram each) from random spoofed sources",
           (Part("fragment-first", SPOOF_V4_A), Part("fragment-later", SPOOF_V4_A),
            Part("fragment-first", SPOOF_V4_B), Part("fragment-later", SPOOF_V4_B))),
    Attack("icmp-flood", "ICMP and ICMPv6 echo requests from random spoofed sources, and a "
           "share of forged errors (destination unreachable, fragmentation needed, packet "
           "too big) embedding a header of no flow of the server",
           (*_many("icmp"), Part("icmp-forged-unreach", SPOOF_V4_A),
            Part("icmp-forged-frag", SPOOF_V4_B), Part("icmp-forged-too-big", SPOOF_V6))),
    Attack("mixed", "one of each: SYN, ACK, UDP, ICMP, fragments, the heavy hitter and "
           "the slow sources", (
               Part("syn", SPOOF_V4_A, HTTP_PORT), Part("ack", SPOOF_V6, HTTP_PORT),
               Part("udp", SPOOF_V4_B), Part("icmp", SPOOF_V6),
               Part("fragment-later", SPOOF_V4_A), Part("udp", HEAVY_SOURCE, UDP_PORT),
               Part("udp", SLOW_SOURCES, UDP_PORT))),
)}




# Reflected floods: replies the host never asked for, from a service's port, as big as
# the service makes them. The payloads fit in the bytes the generator writes per frame
# (FRAME); the rest of a frame is zeros.
DNS_PORT, NTP_PORT, MEMCACHED_PORT = 53, 123, 11211
DNS_REPLY_FRAME, NTP_REPLY_FRAME, MEMCACHED_REPLY_FRAME = 1200, 482, 1400


def _reflected(port: int, size: int, fragments: bool = False) -> tuple[Part, ...]:
    """Replies from `port` of many spoofed reflectors to random ports of the host;
    with fragments, first and later fragments of big replies (IPv4) join them."""
    parts = tuple(Part("reflected", src, sport=port, size=size)
                  for src in (SPOOF_V4_A, SPOOF_V4_B, SPOOF_V6, SPOOF_V6))
    if fragments:
        parts += (Part("reflected-first", SPOOF_V4_A, sport=port, size=size),
                  Part("fragment-later", SPOOF_V4_B))
    return parts


ATTACKS.update({a.name: a for a in (
    Attack("dns-amplification", "DNS replies of 1,200 bytes from port 53 of random spoofed "
           "resolvers, with first and later fragments of bigger ones",
           _reflected(DNS_PORT, DNS_REPLY_FRAME, fragments=True)),
    Attack("ntp-amplification", "NTP replies of 482 bytes (a monlist's) from port 123 of "
           "random spoofed servers", _reflected(NTP_PORT, NTP_REPLY_FRAME)),
    Attack("memcached-amplification", "memcached replies of 1,400 bytes from port 11211 of "
           "random spoofed servers", _reflected(MEMCACHED_PORT, MEMCACHED_REPLY_FRAME)),
)})


def attack(name: str) -> Attack:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; one of: {', '.join(ATTACKS)}") from None


# --- frames ------------------------------------------------------------------------

# The fields drawn per frame besides the source: the source port of TCP and UDP (a
# real flood's sockets), the destination port where the part names none, and the
# IPv4 identification of fragments (each fragment starts a datagram of its own). The
# checksums are made right again, as a real flood's are: a receiving stack verifies
# them, and a frame it drops for a bad checksum would load nothing.
_PORTS = abi.SW_GEN_RW_SPORT | abi.SW_GEN_RW_CSUM
# Where the transport checksum sits in the transport header, for those that cover
# the source address (ICMPv4's does not).
_L4_CSUM = {"syn": 16, "ack": 16, "udp": 6, "icmp6": 2}


def _layers(part: Part, dst4: str, dst6: str):
    """The IP packet of a part, its source the prefix's first address, the fields to
    draw per frame, and where its transport checksum is (0: none to keep right)."""
    net = ipaddress.ip_network(part.sources)
    v6 = net.version == 6
    ip = IPv6(src=str(net.network_address), dst=dst6) if v6 else \
        IP(src=str(net.network_address), dst=dst4)
    dport = part.dport if part.dport is not None else 1
    drawn = _PORTS | (0 if part.dport is not None else abi.SW_GEN_RW_DPORT)
    if part.kind in ("syn", "ack"):
        syn = part.kind == "syn"
        tcp = TCP(sport=1, dport=dport, flags="S" if syn else "A", seq=1, ack=0 if syn else 1)
        if part.handshake:
            # A cookie-like ack (a forged cookie is a 32-bit guess), and the timestamp
            # echo the cookie's options would ride in.
            tcp.seq, tcp.ack = (0x1D2C3B4A, 0) if syn else (0x1D2C3B4B, 0x6A5B4C3E)
            tcp.window = 64240 if syn else 502
            tcp.options = ([("MSS", 1460), ("SAckOK", b""), ("Timestamp", (0x11223344, 0)),
                            ("NOP", None), ("WScale", 7)] if syn else
                           [("NOP", None), ("NOP", None), ("Timestamp", (0x11223345, 0x6A5B4C00))])
        return ip / tcp, drawn, _L4_CSUM["syn"]
    if part.kind == "udp":
        return ip / UDP(sport=1, dport=dport), drawn, _L4_CSUM["udp"]
    if part.kind == "icmp":
        if v6:
            return ip / ICMPv6EchoRequest(), abi.SW_GEN_RW_CSUM, _L4_CSUM["icmp6"]
        return ip / ICMP(type=8), abi.SW_GEN_RW_CSUM, 0
    if part.kind.startswith("icmp-forged"):
        return _forged_error(part.kind, ip, dst4, dst6)
    if part.kind.startswith("fragment") and not v6:
        # A first fragment's UDP checksum covers a datagram that never completes.
        if part.kind == "fragment-first":
            ip.flags, ip.frag = "MF", 0
            return ip / UDP(sport=1, dport=dport), drawn | abi.SW_GEN_RW_IPID, 0
        ip.proto, ip.flags, ip.frag = 17, "MF", 185  # 1480 bytes in: a later one
        return ip, abi.SW_GEN_RW_IPID | abi.SW_GEN_RW_CSUM, 0
    if part.kind in ("reflected", "reflected-first") and part.sport is not None:
        udp = UDP(sport=part.sport, dport=1) / _reply_payload(part.sport)
        drawn = abi.SW_GEN_RW_DPORT | abi.SW_GEN_RW_CSUM
        if part.kind == "reflected-first" and not v6:
            # The IPv4 header's checksum kept right; the UDP one covers a datagram
            # that never completes.
            ip.flags, ip.frag = "MF", 0
            return ip / udp, drawn | abi.SW_GEN_RW_IPID, 0
        if part.kind == "reflected":
            return ip / udp, drawn, _L4_CSUM["udp"]
    raise ValueError(f"no template for {part.kind} from {part.sources}")


# What a forged error claims the server sent: a UDP query to a peer, from a port no
# socket of the server holds (its embedded header is junk to the server).
_FORGED_PEER = {4: "198.51.100.250", 6: "2001:db8:5::250"}


def _forged_error(kind: str, ip, dst4: str, dst6: str):
    """An ICMP error about a packet the server never sent; only the outer source is
    drawn per frame (ICMPv4's checksum does not cover it, ICMPv6's is made right)."""
    if kind == "icmp-forged-too-big":
        inner = IPv6(src=dst6, dst=_FORGED_PEER[6]) / UDP(sport=33333, dport=UDP_PORT)
        return (ip / ICMPv6PacketTooBig(mtu=1280) / Raw(bytes(inner)[:48]), abi.SW_GEN_RW_CSUM,
                _L4_CSUM["icmp6"])
    inner = IP(src=dst4, dst=_FORGED_PEER[4]) / UDP(sport=33333, dport=UDP_PORT)
    head = ICMP(type=3, code=4, nexthopmtu=576) if kind == "icmp-forged-frag" else ICMP(type=3, code=3)
    return ip / head / Raw(bytes(inner)[:28]), abi.SW_GEN_RW_CSUM, 0


def _reply_payload(port: int) -> bytes:
    """The start of a reply of the service on `port`, as reflectors send them."""
    if port == DNS_PORT:
        # id 0x5353, a response with an answer: ANY example.org
        return bytes.fromhex("535381800001000100000000076578616d706c65036f726700ff0001")
    if port == NTP_PORT:
        return bytes([0x17, 0x00, 0x03, 0x2a])  # mode 7, monlist, as in the NTP floods
    return b"VALUE sw 0 1000000\r\n"


def template(part: Part, topo: LabTopology) -> Template:
    packet, rewrite, l4_csum = _layers(part, topo.server_v4, topo.server_v6)
    eth = Ether(dst=topo.server_mac, src=topo.outside_mac) / packet
    # Zeros up to FRAME (or the part's size), as payload: scapy's lengths and checksums
    # cover them. A handshake segment carries none (the zeros trail the IP packet, as an
    # Ethernet pad does): a SYN cookie answers it with a frame of its own length.
    pad = bytes(max(FRAME, part.size) - len(eth))
    frame = bytes(eth) + pad if part.handshake else bytes(eth / Raw(pad))
    net = ipaddress.ip_network(part.sources)
    family, l4 = ((abi.SW_FAMILY_IPV6, ETH_HLEN + 40) if net.version == 6
                  else (abi.SW_FAMILY_IPV4, ETH_HLEN + 20))
    return Template(frame, ETH_HLEN, l4, family, net.max_prefixlen - net.prefixlen,
                    rewrite=rewrite, l4_csum=l4_csum)


def templates(a: Attack, topo: LabTopology) -> list[Template]:
    return [template(part, topo) for part in a.parts]


# --- running one -------------------------------------------------------------------

MAX_SECONDS = 600


def check_run(rate: int | None, seconds: float) -> None:
    """A clear word about an impossible run, before anything is started."""
    if rate is not None and rate <= 0:
        raise ValueError(f"--rate must be a positive number of packets per second, not {rate}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"--seconds must be above 0 and at most {MAX_SECONDS}, not {seconds:g}")


def run_attack(a: Attack, topo: LabTopology, seconds: float, rate: int | None = None) -> SendResult:
    """Floods the lab's server end for `seconds` at `rate` frames a second (None: as
    fast as the generator goes); stops by itself."""
    check_run(rate, seconds)
    with TrafficGenerator(topo.outside_ns, topo.outside_if) as gen:
        gen.random(templates(a, topo))
        return gen.send_for(seconds, rate)


def describe(result: SendResult, a: Attack, topo: LabTopology) -> str:
    return (f"{a.name}: {a.what}\n  sent {result.sent:,} frames to {topo.server_if} in "
            f"{topo.server_ns} in {result.seconds:.2f} s ({result.mpps:.3f} Mpps)")
