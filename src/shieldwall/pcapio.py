"""Reading and writing capture files: classic pcap and pcapng, no third-party code.

A damaged file fails with a PcapError that names the file, the byte offset and what is
wrong there, so a bad capture handed to a tool is diagnosed without a hex editor.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
# Names for the link types people are likely to capture by mistake (e.g. `tcpdump -i any`).
LINKTYPE_NAMES = {
    0: "NULL",
    1: "ETHERNET",
    101: "RAW",
    105: "IEEE802_11",
    113: "LINUX_SLL",
    127: "IEEE802_11_RADIOTAP",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}

# Larger than any real snapshot length (tcpdump's default): a bigger record length means
# the file is corrupt, and trusting it would mean reading garbage or allocating gigabytes.
MAX_CAPLEN = 262144

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D
PCAP_HEADER = struct.Struct("IHHiIII")  # magic, version, thiszone, sigfigs, snaplen, network
PCAP_RECORD = struct.Struct("IIII")  # ts_sec, ts_frac, caplen, orig_len

PCAPNG_SHB = 0x0A0D0D0A  # the same in either byte order
PCAPNG_IDB = 1
PCAPNG_SPB = 3
PCAPNG_EPB = 6
PCAPNG_BYTE_ORDER_MAGIC = 0x1A2B3C4D
PCAPNG_MIN_BLOCK = 12  # type, length, trailing length
PCAPNG_MIN_SHB = 28  # plus byte-order magic, version, section length
IDB_FIXED = struct.Struct("HHI")  # linktype, reserved, snaplen
EPB_FIXED = struct.Struct("IIIII")  # interface, ts high, ts low, caplen, orig_len
SPB_FIXED = struct.Struct("I")  # orig_len
OPT_END, OPT_IF_TSRESOL, OPT_IF_TSOFFSET = 0, 9, 14


@dataclass(frozen=True)
class Frame:
    index: int  # position in the file, from 0
    data: bytes
    orig_len: int  # length on the wire; more than len(data) when the capture cut it
    linktype: int
    timestamp: float  # seconds since the epoch; 0.0 when the file records none (pcapng SPB)


class PcapError(Exception):
    """A capture file that cannot be read; str() is one line naming file, offset and problem."""

    def __init__(
        self, path: str | os.PathLike[str], offset: int, problem: str, detail: str = ""
    ) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.problem = problem
        self.detail = detail
        message = f"{self.path}: {problem} at byte {offset}"
        super().__init__(f"{message} ({detail})" if detail else message)


def read_frames(path: str | os.PathLike[str]) -> list[Frame]:
    """Every frame of a pcap or pcapng file, in file order. Only Ethernet is supported."""
    source = _Source(path, Path(path).read_bytes())
    if not source.data:
        raise source.error(0, "empty file")
    head = source.take(0, 4, "file header")
    if struct.unpack("<I", head)[0] == PCAPNG_SHB:
        return _read_pcapng(source)
    for endian in "<>":
        magic = struct.unpack(endian + "I", head)[0]
        if magic in (PCAP_MAGIC_USEC, PCAP_MAGIC_NSEC):
            return _read_pcap(source, endian, nanoseconds=magic == PCAP_MAGIC_NSEC)
    raise source.error(0, "not a pcap or pcapng file", f"unknown magic 0x{bytes(head).hex()}")


def write_pcap(
    path: str | os.PathLike[str], frames: Iterable[bytes], linktype: int = LINKTYPE_ETHERNET
) -> None:
    """Write frames as a little-endian microsecond pcap, uncut, all with timestamp 0."""
    with open(path, "wb") as out:
        writer = PcapWriter(out, linktype, MAX_CAPLEN, nanoseconds=False)
        for index, frame in enumerate(frames):
            if len(frame) > MAX_CAPLEN:
                raise ValueError(f"frame {index} is {len(frame)} bytes, more than {MAX_CAPLEN}")
            writer.write(frame)


class PcapWriter:
    """Frames appended to a little-endian pcap stream as they come: each with its time
    and, when the capture kept only its first bytes, its length on the wire."""

    def __init__(self, out: BinaryIO, linktype: int = LINKTYPE_ETHERNET,
                 snaplen: int = MAX_CAPLEN, nanoseconds: bool = True) -> None:
        self.out = out
        self.scale = 10**9 if nanoseconds else 10**6
        magic = PCAP_MAGIC_NSEC if nanoseconds else PCAP_MAGIC_USEC
        out.write(struct.pack("<" + PCAP_HEADER.format, magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, data: bytes, timestamp: float = 0.0, orig_len: int | None = None) -> None:
        whole = round(timestamp * self.scale)
        sec, frac = divmod(whole, self.scale)
        length = max(orig_len if orig_len is not None else len(data), len(data))
        self.out.write(struct.pack("<" + PCAP_RECORD.format, sec, frac, len(data), length))
        self.out.write(data)


class _Source:
    """The file's bytes plus the bounds checks that turn overruns into PcapErrors."""

    def __init__(self, path: str | os.PathLike[str], data: bytes) -> None:
        self.path = path
        self.data = memoryview(data)

    def error(self, offset: int, problem: str, detail: str = "") -> PcapError:
        return PcapError(self.path, offset, problem, detail)

    def take(
        self, start: int, size: int, what: str, *, at: int | None = None, claimed: str = ""
    ) -> memoryview:
        """size bytes from start, or a 'truncated <what>' error reported at `at` (default start).

        claimed names where size came from (e.g. "header says") for the error message.
        """
        remain = len(self.data) - start
        if size > remain:
            wanted = f"{claimed} {size} bytes" if claimed else f"{size} bytes needed"
            at = start if at is None else at
            raise self.error(at, f"truncated {what}", f"{wanted}, {remain} remain")
        return self.data[start : start + size]

    def check_linktype(self, offset: int, linktype: int, where: str = "") -> None:
        if linktype != LINKTYPE_ETHERNET:
            name = LINKTYPE_NAMES.get(linktype, "unknown")
            raise self.error(
                offset,
                f"unsupported link type {linktype} ({name}){where}",
                f"only Ethernet, link type {LINKTYPE_ETHERNET}, is supported",
            )

    def check_caplen(self, offset: int, caplen: int) -> None:
        if caplen > MAX_CAPLEN:
            raise self.error(
                offset,
                "implausible packet length",
                f"header says {caplen} bytes, the limit is {MAX_CAPLEN}",
            )


def _read_pcap(source: _Source, endian: str, nanoseconds: bool) -> list[Frame]:
    header = struct.Struct(endian + PCAP_HEADER.format)
    record = struct.Struct(endian + PCAP_RECORD.format)
    fields = header.unpack(source.take(0, header.size, "pcap global header"))
    # The upper bits of the link-type field carry FCS information, not the type.
    linktype = fields[-1] & 0xFFFF
    source.check_linktype(0, linktype)
    tick = 1e-9 if nanoseconds else 1e-6

    frames: list[Frame] = []
    offset = header.size
    while offset < len(source.data):
        raw_record = source.take(offset, record.size, "packet record header")
        ts_sec, ts_frac, caplen, orig_len = record.unpack(raw_record)
        source.check_caplen(offset, caplen)
        data = source.take(
            offset + record.size, caplen, "packet record", at=offset, claimed="header says"
        )
        frames.append(Frame(len(frames), bytes(data), orig_len, linktype, ts_sec + ts_frac * tick))
        offset += record.size + caplen
    return frames


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    ticks_per_second: int = 1_000_000
    offset_seconds: int = 0


class _Section:
    """State that a pcapng section header resets: byte order and the interface table."""

    def __init__(self, endian: str) -> None:
        self.endian = endian
        self.interfaces: list[_Interface] = []

    def unpack(self, layout: struct.Struct, buf: memoryview, offset: int = 0) -> tuple:
        return struct.unpack_from(self.endian + layout.format, buf, offset)


def _read_pcapng(source: _Source) -> list[Frame]:
    frames: list[Frame] = []
    section: _Section | None = None
    offset = 0
    while offset < len(source.data):
        if struct.unpack("<I", source.take(offset, 4, "pcapng block header"))[0] == PCAPNG_SHB:
            section = _Section(_section_byte_order(source, offset))
        assert section is not None  # read_frames only comes here when the file starts with an SHB
        block_type, length, body = _next_block(source, section, offset)
        if block_type == PCAPNG_IDB:
            section.interfaces.append(_interface(source, section, offset, body))
        elif block_type in (PCAPNG_EPB, PCAPNG_SPB):
            frames.append(_packet(source, section, offset, block_type, body, len(frames)))
        # Anything else (statistics, name resolution, custom blocks) carries no packets.
        offset += length
    return frames


def _section_byte_order(source: _Source, offset: int) -> str:
    magic = bytes(source.take(offset + 8, 4, "section header block", at=offset))
    for endian in "<>":
        if struct.unpack(endian + "I", magic)[0] == PCAPNG_BYTE_ORDER_MAGIC:
            return endian
    raise source.error(offset, "bad pcapng byte-order magic", f"0x{magic.hex()}")


def _next_block(
    source: _Source, section: _Section, offset: int
) -> tuple[int, int, memoryview]:
    """The block at offset, its lengths checked: (type, length, body between the lengths)."""
    block_type, length = struct.unpack(
        section.endian + "II", source.take(offset, 8, "pcapng block header")
    )
    minimum = PCAPNG_MIN_SHB if block_type == PCAPNG_SHB else PCAPNG_MIN_BLOCK
    if length < minimum:
        raise source.error(offset, "pcapng block too small", f"length {length}, minimum {minimum}")
    if length % 4:
        raise source.error(offset, "pcapng block length not a multiple of 4", f"length {length}")
    block = source.take(offset, length, "pcapng block", claimed="block header says")
    (trailer,) = struct.unpack_from(section.endian + "I", block, length - 4)
    if trailer != length:
        raise source.error(
            offset,
            "pcapng block length mismatch",
            f"leading length {length}, trailing length {trailer}",
        )
    return block_type, length, block[8 : length - 4]


def _interface(source: _Source, section: _Section, offset: int, body: memoryview) -> _Interface:
    if len(body) < IDB_FIXED.size:
        raise source.error(offset, "truncated interface description block")
    linktype, _, snaplen = section.unpack(IDB_FIXED, body)
    interface = _Interface(linktype, snaplen)
    for code, value in _options(source, section, offset, body[IDB_FIXED.size :]):
        if code == OPT_IF_TSRESOL and len(value) >= 1:
            # High bit set: a power of two, else a power of ten, of ticks per second.
            exponent = value[0] & 0x7F
            interface.ticks_per_second = 2**exponent if value[0] & 0x80 else 10**exponent
        elif code == OPT_IF_TSOFFSET and len(value) >= 8:
            (interface.offset_seconds,) = struct.unpack_from(section.endian + "q", value)
    return interface


def _options(
    source: _Source, section: _Section, offset: int, buf: memoryview
) -> Iterable[tuple[int, memoryview]]:
    """(code, value) of each option in buf, up to the end-of-options marker."""
    pos = 0
    while pos + 4 <= len(buf):
        code, length = struct.unpack_from(section.endian + "HH", buf, pos)
        if code == OPT_END:
            return
        if pos + 4 + length > len(buf):
            raise source.error(
                offset, "pcapng option overruns its block", f"option {code}, length {length}"
            )
        yield code, buf[pos + 4 : pos + 4 + length]
        pos += 4 + (length + 3) // 4 * 4


def _packet(
    source: _Source, section: _Section, offset: int, block_type: int, body: memoryview, index: int
) -> Frame:
    """The frame in an enhanced (EPB) or simple (SPB) packet block."""
    fixed, name = (EPB_FIXED, "enhanced") if block_type == PCAPNG_EPB else (SPB_FIXED, "simple")
    name += " packet block"
    if len(body) < fixed.size:
        raise source.error(offset, f"truncated {name}")
    room = len(body) - fixed.size
    if block_type == PCAPNG_EPB:
        interface_id, ts_high, ts_low, caplen, orig_len = section.unpack(fixed, body)
        ticks: int | None = (ts_high << 32) | ts_low
    else:
        # An SPB belongs to interface 0, has no timestamp and no captured length.
        interface_id, ticks = 0, None
        (orig_len,) = section.unpack(fixed, body)

    if interface_id >= len(section.interfaces):
        raise source.error(
            offset,
            f"{name} references unknown interface {interface_id}",
            f"the section describes {len(section.interfaces)}",
        )
    interface = section.interfaces[interface_id]
    source.check_linktype(offset, interface.linktype, f" on interface {interface_id}")

    if ticks is None:
        # The data is padded to 4 bytes, so the packet is the shortest of these.
        caplen = min(orig_len, room, interface.snaplen or room)
        timestamp = 0.0
    else:
        timestamp = ticks / interface.ticks_per_second + interface.offset_seconds
    source.check_caplen(offset, caplen)
    if caplen > room:
        raise source.error(
            offset, f"packet data overruns its {name}", f"captured length {caplen}, room for {room}"
        )
    data = bytes(body[fixed.size : fixed.size + caplen])
    return Frame(index, data, orig_len, interface.linktype, timestamp)
