"""The deployment doctor: what this host, kernel and interface let shieldwall do, with
the evidence, the cost and the remedy of every finding, and the best mode that works.

    report = examine("eth0")              # this host, read live
    report = examine("eth0", Recorded.load("profile.json"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import checks, verdict
from .checks import Finding
from .facts import Facts, LiveFacts, Recorded, UnknownInterface, related_interfaces

__all__ = ["Facts", "LiveFacts", "Recorded", "Report", "UnknownInterface", "examine",
           "plan_modes"]

plan_modes = verdict.plan_modes
_ORDER = {"fail": 0, "warn": 1, "ok": 2}


@dataclass
class Report:
    iface: str | None
    findings: list[Finding]
    modes: list[verdict.ModeVerdict]
    best_mode: str | None
    summary: str

    def ordered(self) -> list[Finding]:
        """Fails first, then warnings, then the rest; checks in their own order within."""
        return sorted(self.findings, key=lambda f: _ORDER[f.status])

    def to_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self.ordered()],
                "best_mode": self.best_mode, "summary": self.summary,
                "iface": self.iface, "modes": [m.to_dict() for m in self.modes]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def status(self, check: str) -> str | None:
        return next((f.status for f in self.findings if f.check == check), None)


def examine(iface: str | None, facts: Facts | None = None) -> Report:
    """Reads the host (and the interface, when given) through `facts` and judges it.
    Raises UnknownInterface when the interface does not exist."""
    facts = facts or LiveFacts()
    iface_facts = facts.interface(iface) if iface else None
    related = {}
    for name in related_interfaces(iface_facts or {}):
        try:
            related[name] = facts.interface(name)
        except UnknownInterface:
            pass
    ctx = checks.Context(facts.host(), iface_facts, related)
    findings = checks.run(ctx)
    modes = verdict.judge(findings, iface)
    return Report(iface, findings, modes, verdict.best(modes),
                  verdict.summary(modes, findings, iface))
