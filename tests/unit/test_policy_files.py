"""The files a policy reads: regular files only (a link to one is fine), bounded in size,
and their contents never echoed beyond a glimpse of a bad line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from shieldwall.policy.errors import PolicyError
from shieldwall.policy.load import MAX_POLICY_BYTES, load_policy
from shieldwall.policy.sets import MAX_REPORTED, MAX_SET_FILE_BYTES

from ..helpers import shieldwall

POLICY = """\
version: 1
default_action: pass
sets:
  listed: {type: prefix, files: [list.txt]}
rules:
  - {name: r, match: {src: "@listed"}, action: drop}
"""


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so that the policy is named as a user would name it


def issues(tmp_path: Path) -> list[str]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    with pytest.raises(PolicyError) as caught:
        load_policy(Path("policy.yaml"))
    return [str(issue) for issue in caught.value.issues]


def refusal(tmp_path: Path) -> str:
    found = issues(tmp_path)
    assert len(found) == 2 and found[1].endswith("set 'listed' is invalid"), found
    return found[0]


def test_a_link_to_a_regular_file_is_fine(tmp_path: Path):
    (tmp_path / "real.txt").write_text("192.0.2.0/24\n")
    (tmp_path / "list.txt").symlink_to(tmp_path / "real.txt")
    (tmp_path / "policy.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "policy.yaml")
    assert [str(n) for n in policy.sets["listed"].prefixes] == ["192.0.2.0/24"]


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    os.mkfifo(tmp_path / "list.txt")
    (tmp_path / "policy.yaml").write_text(POLICY)
    # In a process of its own: were the FIFO opened blocking, it would hang, not fail.
    out = shieldwall("check", "--config", str(tmp_path / "policy.yaml"))
    assert out.returncode == 2
    assert "cannot read list.txt: it is a FIFO, not a regular file" in out.stderr


def test_a_policy_that_is_a_fifo_or_a_device(tmp_path: Path):
    os.mkfifo(tmp_path / "fifo.yaml")
    out = shieldwall("check", "--config", str(tmp_path / "fifo.yaml"))
    assert out.returncode == 2 and "it is a FIFO, not a regular file" in out.stderr
    out = shieldwall("check", "--config", "/dev/zero")
    assert out.returncode == 2 and "it is a device, not a regular file" in out.stderr


def test_size_bounds_are_said(tmp_path: Path):
    with open(tmp_path / "list.txt", "wb") as f:
        f.truncate(MAX_SET_FILE_BYTES + 1)  # sparse: refused by its size, never read
    assert refusal(tmp_path).endswith(
        "cannot read list.txt: it is larger than 256 MiB, the limit")
    with open(tmp_path / "big.yaml", "wb") as f:
        f.truncate(MAX_POLICY_BYTES + 1)
    with pytest.raises(PolicyError, match="larger than 16 MiB, the limit"):
        load_policy(tmp_path / "big.yaml")


def test_a_bad_line_is_quoted_at_most_80_characters(tmp_path: Path):
    (tmp_path / "list.txt").write_text("192.0.2.0/24\n" + "secret" * 100_000 + "\n")
    said = refusal(tmp_path)
    assert said.startswith("policy.yaml: sets.listed.files[0]: list.txt:2: 'secretsecret")
    assert "..." in said and said.count("secret") <= 80 // len("secret") + 1
    assert len(said) < 250


def test_every_bad_line_is_told_up_to_a_limit(tmp_path: Path):
    bad = [f"bad-{n}" for n in range(MAX_REPORTED + 5)]
    (tmp_path / "list.txt").write_text("\n".join(["192.0.2.0/24", *bad, "198.51.100.0/24"]))
    found = issues(tmp_path)
    told = found[:-1]
    assert len(told) == MAX_REPORTED + 1
    for number, line in enumerate(told[:-1], start=2):
        assert f": list.txt:{number}: 'bad-{number - 2}' is not an IPv4" in line
    assert told[-1] == "policy.yaml: sets.listed.files[0]: list.txt: and 5 more bad lines"


def test_lines_that_are_not_utf8_are_told_one_by_one(tmp_path: Path):
    (tmp_path / "list.txt").write_bytes(b"192.0.2.0/24\n\xff\n198.51.100.0/24\n\xfe\xfe\nnope\n")
    assert issues(tmp_path)[:-1] == [
        "policy.yaml: sets.listed.files[0]: list.txt:2: not UTF-8 text",
        "policy.yaml: sets.listed.files[0]: list.txt:4: not UTF-8 text",
        "policy.yaml: sets.listed.files[0]: list.txt:5: 'nope' is not an IPv4 or IPv6 address or prefix",
    ]


def test_a_consensus_reports_every_bad_line(tmp_path: Path):
    (tmp_path / "list.txt").write_text(textwrap.dedent("""\
        network-status-version 3 microdesc
        r relay1 AAAA 2038-01-01 00:00:00 192.0.2.1 9001 0
        r short
        a [2001:db8::1]:9001
        a nonsense
        r relay2 AAAA 2038-01-01 00:00:00 192.0.2.300 9001 0
    """))
    assert [line.split(": ", 2)[2] for line in issues(tmp_path)[:-1]] == [
        "list.txt:3: malformed r line: expected 8 fields",
        "list.txt:5: malformed a line: expected 'a [address]:port'",
        "list.txt:6: '192.0.2.300' is not an IPv4 or IPv6 address or prefix",
    ]


def test_line_numbers_count_newlines_only(tmp_path: Path):
    # \f and \x85 are line breaks to str.splitlines(), not to an editor.
    (tmp_path / "list.txt").write_text("192.0.2.0/24 # a\fb\x85c\nnope\n")
    assert issues(tmp_path)[0].endswith("list.txt:2: 'nope' is not an IPv4 or IPv6 address or prefix")


def test_a_long_policy_value_is_quoted_short(tmp_path: Path):
    (tmp_path / "policy.yaml").write_text(
        "version: 1\ndefault_action: pass\n" + "x" * 100_000 + ": 1\n"
        "rules:\n  - {name: r, action: '" + "y" * 100_000 + "', match: {proto: '" + "z" * 100_000 + "'}}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "policy.yaml")
    said = str(caught.value)
    assert len(said) < 1000, said[:2000]
