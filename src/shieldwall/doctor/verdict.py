"""The verdict: the best mode this host can run, each lesser mode with what it loses,
and why the modes above it are ruled out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import modes

if TYPE_CHECKING:
    from . import Report
    from .checks import Finding


@dataclass
class ModeVerdict:
    mode: str
    usable: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "usable": self.usable, "why": self.why,
                "loses": modes.LOSES[self.mode]}


def judge(findings: list["Finding"], iface: str | None) -> list[ModeVerdict]:
    out = []
    for mode in modes.MODES:
        against = [f for f in findings if mode in f.blocks]
        if against:
            out.append(ModeVerdict(mode, False, "; ".join(f"{f.check}: {f.impact}" for f in against)))
            continue
        warnings = [f.check for f in findings if f.status == "warn"
                    and (f.check.startswith("iface.") or f.check.startswith("host."))]
        why = {"native": "the driver runs XDP" if iface else
               "the kernel runs XDP; whether the driver does needs --iface",
               "generic": "XDP on the sk_buff works with any driver",
               "tc": "the same stages at TC ingress (tcx)",
               "nft": "nftables at netdev ingress"}[mode]
        if mode == "native" and warnings:
            why += f" (with warnings: {', '.join(warnings)})"
        out.append(ModeVerdict(mode, True, why))
    return out


def best(verdicts: list[ModeVerdict]) -> str | None:
    return next((m.mode for m in verdicts if m.usable), None)


def summary(verdicts: list[ModeVerdict], findings: list["Finding"], iface: str | None) -> str:
    chosen = best(verdicts)
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    where = f"on {iface}" if iface else "on this kernel (no --iface: the interface is not checked)"
    if chosen is None:
        return f"no mode can run {where}: {fails} failure(s); see the fails above"
    above = [m for m in verdicts[:modes.MODES.index(chosen)]]
    line = f"best mode {where}: {chosen}"
    if above:
        line += " (" + "; ".join(f"not {m.mode}: {m.why.split(': ', 1)[0]}" for m in above) + ")"
    line += f"; {fails} fail, {warns} warn"
    if chosen != "native":
        line += f"; it loses {modes.LOSES[chosen].split(':')[0]}"
    return line


def plan_modes(report: "Report") -> list[tuple[str, str]]:
    """The modes that should work, best first, each with why: what `up --mode auto`
    tries in order."""
    return [(m.mode, m.why) for m in report.modes if m.usable]


def excluded_modes(report: "Report") -> list[tuple[str, str]]:
    """The modes ruled out, each with the findings that rule it out."""
    return [(m.mode, m.why) for m in report.modes if not m.usable]
