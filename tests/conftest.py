"""Shared pytest configuration.

Kernel and namespace tests are not optional: on a machine without BPF they fail, and a
skipped test anywhere fails the run, so a green suite always means the tiers ran.
"""

from __future__ import annotations

import pytest

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _skipped and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus: int) -> None:  # noqa: ANN001
    if _skipped:
        terminalreporter.write_line(
            f"FAILED: {len(_skipped)} test(s) skipped; every tier must run here: "
            + ", ".join(_skipped[:5]), red=True)
