"""Capture file reading and writing, including how damaged files are reported."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from shieldwall.pcapio import MAX_CAPLEN, Frame, PcapError, read_frames, write_pcap

FRAMES = [
    bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP() / UDP(dport=n))
    for n in range(1, 4)
] + [bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IPv6() / UDP())]


# --- hand-built files ------------------------------------------------------------------


def classic(
    records: list[tuple[int, int, bytes]],
    endian: str = "<",
    magic: int = 0xA1B2C3D4,
    linktype: int = 1,
) -> bytes:
    """A classic pcap of (seconds, fraction, data) records."""
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data)) + data
    return out


def pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def block(endian: str, block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack(endian + "II", block_type, length) + body + struct.pack(endian + "I", length)


def shb(endian: str) -> bytes:
    return block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(endian: str, linktype: int = 1, snaplen: int = 0, tsresol: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options = struct.pack(endian + "HH", 9, 1) + pad4(bytes([tsresol]))
        options += struct.pack(endian + "HH", 0, 0)
    return block(endian, 1, struct.pack(endian + "HHI", linktype, 0, snaplen) + options)


def epb(endian: str, data: bytes, interface: int = 0, ticks: int = 0) -> bytes:
    fixed = struct.pack(
        endian + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)
    )
    return block(endian, 6, fixed + pad4(data))


def spb(endian: str, data: bytes) -> bytes:
    return block(endian, 3, struct.pack(endian + "I", len(data)) + pad4(data))


def write(tmp_path: Path, content: bytes, name: str = "capture.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


# --- reading and writing ---------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    write_pcap(path, FRAMES)
    frames = read_frames(path)
    assert [f.data for f in frames] == FRAMES
    assert [f.index for f in frames] == list(range(len(FRAMES)))
    assert all(f.linktype == 1 and f.orig_len == len(f.data) for f in frames)


def test_round_trip_empty(tmp_path: Path) -> None:
    path = tmp_path / "out.pcap"
    write_pcap(path, [])
    assert read_frames(path) == []


def test_write_refuses_oversized_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frame 1"):
        write_pcap(tmp_path / "out.pcap", [b"x", bytes(MAX_CAPLEN + 1)])


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("magic, fraction", [(0xA1B2C3D4, 250_000), (0xA1B23C4D, 250_000_000)])
def test_classic_byte_orders_and_resolutions(
    tmp_path: Path, endian: str, magic: int, fraction: int
) -> None:
    path = write(tmp_path, classic([(100, fraction, FRAMES[0])], endian, magic))
    assert read_frames(path) == [Frame(0, FRAMES[0], len(FRAMES[0]), 1, 100.25)]


def test_classic_keeps_the_original_length(tmp_path: Path) -> None:
    record = struct.pack("<IIII", 0, 0, 20, 1514) + FRAMES[0][:20]
    path = write(tmp_path, classic([]) + record)
    (frame,) = read_frames(path)
    assert (len(frame.data), frame.orig_len) == (20, 1514)


def test_pcapng_from_scapy(tmp_path: Path) -> None:
    scapy_utils = pytest.importorskip("scapy.utils")
    path = tmp_path / "scapy.pcapng"
    writer = scapy_utils.PcapNgWriter(str(path))
    for data in FRAMES:
        writer.write(Ether(data))
    writer.close()
    frames = read_frames(path)
    assert [f.data for f in frames] == FRAMES
    assert all(f.linktype == 1 and f.timestamp > 0 for f in frames)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_hand_built(tmp_path: Path, endian: str) -> None:
    content = shb(endian) + idb(endian) + epb(endian, FRAMES[0], ticks=1_500_000)
    frames = read_frames(write(tmp_path, content, "capture.pcapng"))
    assert frames == [Frame(0, FRAMES[0], len(FRAMES[0]), 1, 1.5)]


@pytest.mark.parametrize("tsresol, ticks", [(9, 2_500_000_000), (0x80 | 10, 2560)])
def test_pcapng_timestamp_resolution(tmp_path: Path, tsresol: int, ticks: int) -> None:
    content = shb("<") + idb("<", tsresol=tsresol) + epb("<", FRAMES[0], ticks=ticks)
    (frame,) = read_frames(write(tmp_path, content, "capture.pcapng"))
    assert frame.timestamp == 2.5


def test_pcapng_sections_blocks_and_interfaces(tmp_path: Path) -> None:
    unknown = block("<", 0x0BADC0DE, b"what")
    content = (
        shb("<") + idb("<") + idb("<") + unknown + epb("<", FRAMES[0], interface=1)
        # A new section has its own byte order and its own interface table.
        + shb(">") + idb(">", snaplen=30) + spb(">", FRAMES[1]) + epb(">", FRAMES[2])
    )
    frames = read_frames(write(tmp_path, content, "capture.pcapng"))
    assert [f.index for f in frames] == [0, 1, 2]
    # The SPB is cut at the interface's snapshot length and has no timestamp.
    assert [f.data for f in frames] == [FRAMES[0], FRAMES[1][:30], FRAMES[2]]
    assert (frames[1].orig_len, frames[1].timestamp) == (len(FRAMES[1]), 0.0)


# --- damaged files ---------------------------------------------------------------------


def fails(path: Path, offset: int, *fragments: str) -> PcapError:
    with pytest.raises(PcapError) as caught:
        read_frames(path)
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert f" at byte {offset}" in message
    assert error.offset == offset
    for fragment in fragments:
        assert fragment in message
    return error


GOOD = classic([(0, 0, FRAMES[0]), (0, 0, FRAMES[1])])
SECOND_RECORD = 24 + 16 + len(FRAMES[0])


def test_empty_file(tmp_path: Path) -> None:
    fails(write(tmp_path, b""), 0, "empty file")


def test_unknown_magic(tmp_path: Path) -> None:
    fails(write(tmp_path, b"GIF89a" + bytes(40)), 0, "not a pcap or pcapng file", "0x47494638")


def test_too_short_for_a_magic(tmp_path: Path) -> None:
    fails(write(tmp_path, b"\xd4\xc3"), 0, "truncated file header", "4 bytes needed, 2 remain")


def test_truncated_global_header(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD[:10])
    fails(path, 0, "truncated pcap global header", "24 bytes needed, 10 remain")


def test_truncated_record_header(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD[: SECOND_RECORD + 5])
    fails(path, SECOND_RECORD, "truncated packet record header", "16 bytes needed, 5 remain")


def test_truncated_record_data(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD[:-3])
    error = fails(path, SECOND_RECORD, "truncated packet record")
    remain = len(FRAMES[1]) - 3
    assert str(error) == (
        f"{path}: truncated packet record at byte {SECOND_RECORD} "
        f"(header says {len(FRAMES[1])} bytes, {remain} remain)"
    )


def test_absurd_caplen(tmp_path: Path) -> None:
    record = struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 60) + bytes(60)
    path = write(tmp_path, classic([]) + record)
    fails(path, 24, "implausible packet length", str(0x7FFFFFFF), str(MAX_CAPLEN))


def test_unsupported_linktype(tmp_path: Path) -> None:
    fails(write(tmp_path, classic([], linktype=113)), 0, "link type 113 (LINUX_SLL)", "Ethernet")


def test_pcapng_unsupported_linktype(tmp_path: Path) -> None:
    content = shb("<") + idb("<", linktype=101) + epb("<", FRAMES[0])
    path = write(tmp_path, content, "capture.pcapng")
    fails(path, len(shb("<")) + len(idb("<")), "link type 101 (RAW) on interface 0")


NG_HEAD = shb("<") + idb("<")


def test_pcapng_length_mismatch(tmp_path: Path) -> None:
    bad = bytearray(epb("<", FRAMES[0]))
    bad[-4:] = struct.pack("<I", len(bad) + 4)
    path = write(tmp_path, NG_HEAD + bytes(bad), "capture.pcapng")
    fails(path, len(NG_HEAD), "block length mismatch", f"leading length {len(bad)}")


def test_pcapng_block_too_small(tmp_path: Path) -> None:
    path = write(tmp_path, NG_HEAD + struct.pack("<III", 6, 8, 8), "capture.pcapng")
    fails(path, len(NG_HEAD), "pcapng block too small", "length 8, minimum 12")


def test_pcapng_section_header_too_small(tmp_path: Path) -> None:
    tiny_shb = struct.pack("<III", 0x0A0D0D0A, 16, 0x1A2B3C4D) + struct.pack("<I", 16)
    fails(write(tmp_path, tiny_shb, "capture.pcapng"), 0, "too small", "minimum 28")


def test_pcapng_length_not_multiple_of_4(tmp_path: Path) -> None:
    path = write(tmp_path, NG_HEAD + struct.pack("<II", 6, 33) + bytes(25), "capture.pcapng")
    fails(path, len(NG_HEAD), "not a multiple of 4", "length 33")


def test_pcapng_truncated_block(tmp_path: Path) -> None:
    whole = epb("<", FRAMES[0])
    path = write(tmp_path, NG_HEAD + whole[:40], "capture.pcapng")
    fails(path, len(NG_HEAD), "truncated pcapng block", f"block header says {len(whole)} bytes")


def test_pcapng_unknown_interface(tmp_path: Path) -> None:
    path = write(tmp_path, NG_HEAD + epb("<", FRAMES[0], interface=3), "capture.pcapng")
    fails(path, len(NG_HEAD), "references unknown interface 3", "the section describes 1")


def test_pcapng_interfaces_do_not_outlive_their_section(tmp_path: Path) -> None:
    content = NG_HEAD + shb("<") + epb("<", FRAMES[0])
    path = write(tmp_path, content, "capture.pcapng")
    fails(path, len(NG_HEAD) + len(shb("<")), "unknown interface 0", "describes 0")


def test_pcapng_bad_byte_order_magic(tmp_path: Path) -> None:
    bad = bytearray(shb("<"))
    bad[8:12] = b"\x00\x11\x22\x33"
    fails(write(tmp_path, bytes(bad), "capture.pcapng"), 0, "byte-order magic", "0x00112233")


def test_pcapng_packet_data_overruns_its_block(tmp_path: Path) -> None:
    bad = bytearray(epb("<", FRAMES[0]))
    bad[20:24] = struct.pack("<I", len(FRAMES[0]) + 100)  # captured length
    path = write(tmp_path, NG_HEAD + bytes(bad), "capture.pcapng")
    fails(path, len(NG_HEAD), "packet data overruns its enhanced packet block")
