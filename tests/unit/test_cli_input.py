"""Bad input the command line refuses before it needs any privilege."""

from __future__ import annotations

from pathlib import Path

import pytest

from shieldwall.cli import _config, build_parser
from shieldwall.paths import REPO_ROOT
from shieldwall.pcapio import write_pcap

from ..helpers import closed_stdout, shieldwall

EXAMPLES = REPO_ROOT / "examples"


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


# --- a forgotten --config -------------------------------------------------------------


@pytest.mark.parametrize("command", ["up", "reload"])
def test_a_policy_change_without_a_policy_is_refused(command):
    # Refused before privilege, the lock or the interface are looked at: an absent
    # interface would otherwise be the complaint.
    out = shieldwall(command, "--iface", "sw-absent0")
    assert out.returncode == 2
    assert f"{command} needs --config" in out.stderr and "--allow-empty" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["up", "reload"])
def test_allow_empty_is_what_asks_for_pass_all(command):
    args = build_parser().parse_args([command, "--iface", "eth9", "--allow-empty"])
    assert args.allow_empty and _config(args).pipeline.chain == ()


# --- no traceback reaches a user ------------------------------------------------------

HEADER = "version: 1\ndefault_action: pass\n"


def rule(match: str) -> str:
    return HEADER + f"rules:\n  - name: r\n    match: {match}\n    action: drop\n"


def one_line_refusal(out) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[:500])
    assert "Traceback" not in out.stderr and "Exception" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, out.stderr[:500]
    return lines[0]


@pytest.mark.parametrize("match,said", [
    ("{dport: 1.0e+400}", "got a float (inf)"),
    ("{dport: 1e400}", "'1e400' is not a port"),
    ("{dport: " + "9" * 5000 + "}", "a number of 5000 characters"),
    ("{dport: " + "9" * 4000 + "}", "a number of 4000 characters"),
    ("{dport: '" + "9" * 5000 + "'}", "is too large for a port"),
    ("{dport: '1-" + "9" * 5000 + "'}", "is too large for a port"),
    ("{src: " + "1" * 5000 + "}", "a number of 5000 characters"),
])
def test_huge_numbers(tmp_path: Path, match, said):
    (tmp_path / "p.yaml").write_text(rule(match))
    line = one_line_refusal(shieldwall("check", "--config", str(tmp_path / "p.yaml")))
    assert said in line


@pytest.mark.parametrize("text", [
    "version: " + "[" * 100_000 + "]" * 100_000,
    HEADER + "rules: " + "{a: " * 100_000 + "}" * 100_000,
    HEADER + "rules:\n" + "".join(f"{' ' * i}- \n" for i in range(2000)),
])
def test_deep_nesting(tmp_path: Path, text):
    (tmp_path / "p.yaml").write_text(text)
    line = one_line_refusal(shieldwall("check", "--config", str(tmp_path / "p.yaml")))
    assert "nested more than 64 levels deep" in line


def test_nesting_a_policy_needs_is_fine(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(rule("{src: [[192.0.2.1]]}"))  # wrong, but not deep
    out = shieldwall("check", "--config", str(tmp_path / "p.yaml"))
    assert out.returncode == 2 and "nested" not in out.stderr



@pytest.mark.parametrize("args", [("check", "--config", str(EXAMPLES / "basic.yaml")),
                                  ("--help",), ("--version",), ("check", "--help")])
def test_a_closed_pipe_at_the_last_flush(args):
    # Small outputs stay in the buffer until the end: the pipe is found closed when it
    # is flushed, which used to be the interpreter's exit ("Exception ignored", 120).
    out = closed_stdout(*args)
    assert out.returncode == 0 and out.stderr == ""

