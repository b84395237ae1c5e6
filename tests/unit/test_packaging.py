"""The package's metadata and its version."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

import shieldwall
from shieldwall.cli import main

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "shieldwall"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_names(requirements: list[str]) -> set[str]:
    return {_normal(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_distributions(directory: Path) -> set[str]:
    """The distributions that the modules imported below directory come from."""
    modules: set[str] = set()
    for path in directory.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"shieldwall", "tests", "__future__"}
    owners = packages_distributions()
    unknown = sorted(m for m in modules if m not in owners)
    assert not unknown, f"imported but installed by no distribution: {unknown}"
    return {_normal(dist) for m in modules for dist in owners[m]}


def test_every_runtime_import_is_a_declared_dependency():
    assert third_party_distributions(PACKAGE) == requirement_names(PYPROJECT["dependencies"])


def test_the_test_extra_holds_what_only_the_tests_import():
    runtime = requirement_names(PYPROJECT["dependencies"])
    only_tests = third_party_distributions(ROOT / "tests") - runtime
    assert only_tests == requirement_names(PYPROJECT["optional-dependencies"]["test"])


def test_version_prints_the_one_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"shieldwall {shieldwall.__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", shieldwall.__version__)
    # The package metadata takes it from the package, not from a second copy.
    assert "version" not in PYPROJECT and "version" in PYPROJECT["dynamic"]
    dynamic = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "shieldwall.__version__"}
