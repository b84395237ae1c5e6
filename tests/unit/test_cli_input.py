"""Bad input the command line refuses before it needs any privilege."""

from __future__ import annotations

from pathlib import Path

from shieldwall.pcapio import write_pcap

from ..helpers import shieldwall


def test_corrupt_and_truncated_pcap(tmp_path: Path):
    good = tmp_path / "good.pcap"
    write_pcap(good, [b"\x02" * 12 + b"\x08\x06" + b"\x00" * 28])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good.read_bytes()[:-5])
    out = shieldwall("verdict", "--pcap", str(cut))
    assert out.returncode == 2 and "cut.pcap" in out.stderr and "truncated" in out.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture")
    out = shieldwall("verdict", "--pcap", str(junk))
    assert out.returncode == 2 and "junk.pcap" in out.stderr
