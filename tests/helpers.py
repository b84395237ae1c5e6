"""Helpers the test tiers share: the command line as a user runs it, its reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def shieldwall(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m shieldwall ARGS` in a new process, with this process's environment
    (so the run's own bpffs and lock) plus `env`."""
    return subprocess.run([sys.executable, "-m", "shieldwall", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def server_status(topo) -> dict:
    out = shieldwall("status", "--netns", topo.server_ns, "--iface", topo.server_if, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)[0]


def counter(report: dict, action: str, reason: str) -> int:
    return sum(c["packets"] for c in report["counters"]
               if c["action"] == action and c["reason"] == reason)
