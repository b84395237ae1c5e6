"""`shieldwall doctor`: the findings as an aligned table (fails first) and the verdict,
or the report as JSON; `--record FILE` saves the facts read as a replayable profile."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from ..doctor import LiveFacts, Recorded, Report, examine
from ..modes import LOSES

_MARK = {"fail": "FAIL", "warn": "warn", "ok": "ok"}


def run(args: argparse.Namespace) -> int:
    if args.facts:
        if args.netns or args.record:
            raise ValueError("--facts replays a recorded profile: it takes no --netns or --record")
        facts = _load(Path(args.facts))
    else:
        facts = LiveFacts(netns=args.netns)
    if args.record:
        # Read once: the report judges exactly the facts the file keeps.
        facts = Recorded(facts.record(args.iface))
        profile = {"description": f"recorded by shieldwall doctor on {datetime.now(timezone.utc):%Y-%m-%d}",
                   "iface": args.iface, "facts": facts.data}
        Path(args.record).write_text(json.dumps(profile, indent=1) + "\n")
    report = examine(args.iface, facts)
    print(report.to_json() if args.json else render(report))
    if args.record and not args.json:
        print(f"facts recorded in {args.record}")
    return 0


def _load(path: Path) -> Recorded:
    try:
        return Recorded.load(path)
    except FileNotFoundError:
        raise ValueError(f"--facts {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"--facts {path}: not a JSON profile ({exc})") from None


def render(report: Report, width: int | None = None) -> str:
    width = width or max(80, min(shutil.get_terminal_size((120, 24)).columns, 160))
    findings = report.ordered()
    name_w = max(len(f.check) for f in findings)
    lead = 6 + name_w + 2
    lines = [f"{'':6}{'check':<{name_w}}  evidence"]
    for f in findings:
        text = textwrap.wrap(f.evidence, width - lead) or [""]
        lines.append(f"{_MARK[f.status]:<6}{f.check:<{name_w}}  {text[0]}")
        lines += [" " * lead + t for t in text[1:]]
        if f.status != "ok":
            for label, body in (("costs", f.impact), ("fix", f.remedy)):
                if body:
                    wrapped = textwrap.wrap(body, width - lead - 7)
                    lines.append(" " * lead + f"{label + ':':<7}{wrapped[0]}")
                    lines += [" " * (lead + 7) + t for t in wrapped[1:]]
    lines.append("")
    lines.append("modes, best first:")
    for m in report.modes:
        head = f"  {m.mode:<8}{'yes' if m.usable else 'no':<4}"
        why = m.why if m.usable or m.mode == "native" else m.why
        body = textwrap.wrap(why, width - len(head))
        lines.append(head + body[0])
        lines += [" " * len(head) + t for t in body[1:]]
        if m.usable and m.mode != "native":
            loses = textwrap.wrap(f"loses: {LOSES[m.mode]}", width - len(head))
            lines += [" " * len(head) + t for t in loses]
    lines.append("")
    lines.append(report.summary)
    return "\n".join(lines)
