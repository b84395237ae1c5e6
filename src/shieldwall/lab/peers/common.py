"""What every peer shares: the note for a policy a peer cannot express, and the count
of frames that reached a peer's device."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class NotExpressible:
    """A policy a peer cannot enforce with the same decisions, and exactly why: one
    reason per rule, field or list, e.g. "rule web-only: port negation needs 65534
    port entries (at most 1024)"."""

    peer: str
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.peer} cannot express this policy: " + "; ".join(self.reasons)


class NotExpressibleError(RuntimeError):
    """Raised by the installers when given a policy their peer cannot express."""

    def __init__(self, note: NotExpressible) -> None:
        super().__init__(str(note))
        self.note = note


def device_rx_packets(netns: str, iface: str) -> int:
    """Frames the device has received: what reached the peer's hook, dropped or not.
    A veth counts them on either of its receive paths (its NAPI one, taken with GRO or
    an XDP program, and the plain one)."""
    proc = subprocess.run(["ip", "-n", netns, "-s", "-j", "link", "show", "dev", iface],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"ip -s link show dev {iface} in {netns}: {proc.stderr.strip()}")
    return int(json.loads(proc.stdout)[0]["stats64"]["rx"]["packets"])


def run_in(netns: str, argv: list[str] | tuple[str, ...], stdin: str | None = None,
           check: bool = True, timeout: float = 600,
           enter: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a peer's tool in a namespace (through `ip netns exec`, or the `enter` command
    given); with check, a failure raises with the tool's own message."""
    prefix = enter if enter is not None else ["ip", "netns", "exec", netns]
    proc = subprocess.run([*prefix, *argv], input=stdin, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} in {netns}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Installed:
    """A peer's configuration installed on a device. Calling it gives the frames that
    have reached the device so far (device_rx_packets): what a rate is measured on."""

    def __init__(self, netns: str, device: str) -> None:
        self.netns = netns
        self.device = device

    def __call__(self) -> int:
        return device_rx_packets(self.netns, self.device)


def grouped(reasons: list[str], shown: int = 3) -> tuple[str, ...]:
    """Reasons of the form "rule NAME: problem" told once per problem, naming up to
    `shown` rules ("rules r4, r9, r12 and 40 more: problem"); others as they are."""
    problems: dict[str, list[str]] = {}
    for reason in reasons:
        if reason.startswith("rule ") and ": " in reason:
            name, problem = reason[len("rule "):].split(": ", 1)
            problems.setdefault(problem, []).append(name)
        else:
            problems.setdefault(reason, [])
    out = []
    for problem, names in problems.items():
        if not names:
            out.append(problem)
        elif len(names) == 1:
            out.append(f"rule {names[0]}: {problem}")
        else:
            listed = ", ".join(names[:shown])
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            out.append(f"rules {listed}{more}: {problem}")
    return tuple(out)
