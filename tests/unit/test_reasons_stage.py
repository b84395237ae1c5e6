"""The reason -> stage table the metrics label verdicts with agrees with the data plane:
every sw_finish() in the BPF sources, read here, gives its reason from the module the
table names, and every reason the header defines has a stage."""

from __future__ import annotations

import re
from pathlib import Path

from shieldwall import abi
from shieldwall.ops.reasons import STAGE_OF_REASON, stage_of

BPF = Path(__file__).resolve().parents[2] / "bpf"
FINISH = re.compile(r"sw_finish\(\s*(?:ctx\s*,\s*)?pkt\s*,[^,]+,\s*([^,]+?)\s*,\s*(SW_MOD_[A-Z]+)", re.S)


def _reason_names(expr: str, path: Path) -> list[str]:
    """The reasons an sw_finish() argument can be: a constant, the protect filters'
    SW_R_BAD_TCP_FLAGS + i, the root's parse result (every parse reason), or a stage's
    own variable (every SW_R_ it is assigned)."""
    expr = expr.strip()
    if expr.startswith("SW_R_") and "+" not in expr:
        return [expr[5:].lower()]
    if expr.replace(" ", "") == "SW_R_BAD_TCP_FLAGS+i":
        return [abi.reason_name(abi.SW_R_BAD_TCP_FLAGS + i) for i in range(abi.SW_PROT_MAX)]
    if expr == "reason" and path.name == "root.bpf.c":  # what the parser returned
        parse = (BPF / "lib" / "parse.h").read_text()
        return sorted({m.lower() for m in re.findall(r"SW_R_([A-Z0-9_]+)", parse)})
    if expr == "reason":
        assigned = re.findall(r"reason\s*=\s*[^;]*", path.read_text())
        return sorted({m.lower() for a in assigned for m in re.findall(r"SW_R_([A-Z0-9_]+)", a)})
    raise AssertionError(f"an sw_finish() reason this test cannot read: {expr}")


def test_every_finish_gives_its_reason_from_the_tables_stage():
    found: dict[str, set[str]] = {}
    sources = [BPF / "root.bpf.c", *sorted((BPF / "stages").glob("*.bpf.c")),
               *sorted((BPF / "lib").glob("*.h"))]
    for path in sources:
        for expr, module in FINISH.findall(path.read_text()):
            for reason in _reason_names(expr, path):
                found.setdefault(reason, set()).add(module[len("SW_MOD_"):].lower())
    assert len(found) > 30, found
    for reason, modules in found.items():
        assert modules == {stage_of(reason)}, (reason, modules)


def test_every_reason_of_the_header_has_a_stage():
    assert set(abi.REASON_NAMES.values()) <= set(STAGE_OF_REASON), \
        set(abi.REASON_NAMES.values()) - set(STAGE_OF_REASON)
    assert stage_of("no_such_reason") == "unknown"
