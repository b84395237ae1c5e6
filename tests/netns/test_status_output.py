"""`status` on a lab: missing pins are said, never a traceback; a reader that stops early
(`| head -1`) ends the command quietly, whether the pipe is found closed in the middle of
the output or at its last flush."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.kernel.netns import enter_netns

from ..helpers import closed_stdout, shieldwall

pytestmark = pytest.mark.netns

POLICY = """\
version: 1
default_action: pass
rules:
""" + "".join(f"  - {{name: r{n}, match: {{proto: udp, dport: {n + 1}}}, action: drop}}\n"
              for n in range(2000))


@pytest.fixture()
def attached(lab, tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    where = ("--netns", lab.server_ns, "--iface", lab.server_if)
    out = shieldwall("up", *where, "--config", str(policy))
    assert out.returncode == 0, out.stderr
    yield lab, where, policy
    assert shieldwall("down", *where).returncode == 0


def test_missing_pins_are_said(attached):
    lab, where, policy = attached
    with enter_netns(lab.server_ns):
        directory = bpffs.pin_dir(lab.server_if) / "gen-1"  # the generation `up` made
    (directory / "sw_pol_hits").unlink()
    out = shieldwall("status", *where, "--rules")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert "rules: rule counters unreadable: sw_pol_hits not pinned" in out.stdout
    (directory / "sw_config").unlink()
    out = shieldwall("status", *where, "--rules")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert f"problem: incomplete pins in {directory}: sw_config missing" in out.stdout
    # A reload pins them again.
    assert shieldwall("reload", *where, "--config", str(policy)).returncode == 0
    out = shieldwall("status", *where, "--rules")
    assert "problem" not in out.stdout and "r1999" in out.stdout



@pytest.mark.parametrize("view", [(), ("--rules",), ("--rules", "--json")])
def test_a_reader_that_is_gone(attached, view):
    # Short output meets the closed pipe at the last flush, long output (2,000 rules) in
    # the middle of printing it.
    lab, where, _ = attached
    out = closed_stdout("status", *where, *view)
    assert out.returncode == 0 and out.stderr == ""


def test_status_into_head(attached):
    lab, where, _ = attached
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    command = " ".join([sys.executable, "-m", "shieldwall", "status", *where, "--rules"])
    for _ in range(3):  # where the pipe is found closed varies from run to run
        out = subprocess.run(["sh", "-c", f"{command} | head -1"], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.stdout.startswith(f"{lab.server_if}: attached") and out.stderr == ""
