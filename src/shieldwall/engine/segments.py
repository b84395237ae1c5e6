"""Segments: named parts of a policy that a reload changes one at a time
(docs/updates.md, "Segments").

A segment owns destination prefixes and takes its rules from a file of its own
(policy.rules.parse_segments). A reload of a policy with segments is a series of
changes, each a whole transaction of the engine: first everything outside the
segments (the policy file itself, its sets), with each segment as it runs now; then
each segment whose file changed, alone. A segment whose new rules are refused (invalid,
too large, rejected by the verifier) keeps running as it was and is named in the
result; the segments after it still go in. An error outside the segments refuses the
whole reload, before anything changes.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import replace
from pathlib import Path

from ..config import Config, configure
from ..kernel.errors import BpfError
from ..policy.errors import PolicyError
from ..policy.files import read_bounded
from ..policy.load import MAX_POLICY_BYTES, parse_policy_text
from ..policy.rules import MAX_SEGMENT_BYTES
from ..policy.sets import MAX_SET_FILE_BYTES
from . import lifecycle
from .records import Records

EMPTY_SEGMENT = b"rules: []\n"


def cycles(iface: str, change: lifecycle.Proposal) -> lifecycle.AttachResult:
    """Applies `change` segment by segment; the caller holds the lock."""
    records = Records(iface)
    main = change.source
    assert main is not None and change.config.policy is not None
    text = read_bounded(main, MAX_POLICY_BYTES).decode("utf-8")
    running = records.revision(records.current()) if records.current() else None
    kept = {shown: records.blob(sha) for shown, sha in (running.files if running else {}).items()}
    empty = records.blob(records.store_blob(EMPTY_SEGMENT))
    segments = change.config.policy.ruleset.segments
    # Each segment's file as it runs now (a new segment: no rules yet).
    now = {seg.file: kept.get(seg.file, empty) for seg in segments}
    result = None
    steps: list[str] = []
    outside = _config(text, main, now)  # a PolicyError here refuses the whole reload
    if running is None or _digest(main) != running.sha256 or _others_changed(outside, running, main):
        result = lifecycle._apply(iface, _proposal(outside, main, now, "reload (outside segments)"))
        steps.append(f"outside the segments: revision {result.revision}")
    failed = []
    for seg in segments:
        theirs = main.parent / seg.file
        if _digest(theirs) == _digest(now[seg.file]):
            continue
        trial = {**now, seg.file: theirs}
        try:
            config = _config(text, main, trial)
            result = lifecycle._apply(iface, _proposal(config, main, trial, f"reload (segment {seg.name})"))
        except (PolicyError, ValueError, BpfError) as exc:
            failed.append(f"segment {seg.name} kept as it runs: {exc}")
            continue
        now = trial
        steps.append(f"segment {seg.name}: revision {result.revision}")
    if result is None:  # nothing took: the policy as it runs, applied again as a reload does
        result = lifecycle._apply(iface, _proposal(outside, main, now, "reload"))
    return replace(result, notes=tuple(steps) + result.notes, failed=tuple(failed))


def proposal(path: Path, drop_live: bool = False) -> lifecycle.Proposal:
    """What `reload` proposes: the policy of the file, or, when only segments' rules are
    refused, the policy with those segments empty: cycles() then applies the rest and
    names the segments it kept as they run."""
    text = read_bounded(path, MAX_POLICY_BYTES).decode("utf-8")
    try:
        config = _config(text, path, {})
    except PolicyError as exc:
        bad = {issue.path.split(".")[1] for issue in exc.issues
               if issue.path.startswith("segments.") and ".rules" in issue.path}
        if not bad or any(not issue.path.startswith("segments.") or ".rules" not in issue.path
                          for issue in exc.issues):
            raise
        names = _segment_files(text, path)
        with tempfile.TemporaryDirectory() as scratch:
            blank = Path(scratch) / "empty-segment.yaml"
            blank.write_bytes(EMPTY_SEGMENT)
            config = _config(text, path, {shown: blank for name, shown in names.items() if name in bad})
    return lifecycle.Proposal(config, path, "reload", drop_live=drop_live)


def _segment_files(text: str, main: Path) -> dict[str, str]:
    from ..policy.load import load_yaml
    doc = load_yaml(text)
    return {name: spec["file"] for name, spec in (doc.get("segments") or {}).items()
            if isinstance(spec, dict) and isinstance(spec.get("file"), str)}


def _config(text: str, main: Path, files: dict[str, Path]) -> Config:
    policy = parse_policy_text(text, str(main), main.parent, files=files)
    return Config(policy, configure(policy))


def _proposal(config: Config, main: Path, files: dict[str, Path], origin: str) -> lifecycle.Proposal:
    return lifecycle.Proposal(config, main, origin, files=files)


def _digest(path: Path, limit: int = MAX_SEGMENT_BYTES) -> str:
    return hashlib.sha256(read_bounded(path, limit)).hexdigest()


def _others_changed(config: Config, running, main: Path) -> bool:
    """Whether a set file differs from the running revision's copy."""
    policy = config.policy
    assert policy is not None
    for s in policy.sets.values():
        for shown in s.files:
            if running.files.get(shown) != _digest(main.parent / shown, MAX_SET_FILE_BYTES):
                return True
    return False
