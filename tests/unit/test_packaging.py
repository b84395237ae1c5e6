"""The package's metadata, its version, and where an installed package finds its data."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
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


@pytest.fixture()
def installed(tmp_path: Path) -> Path:
    """A package laid out as a wheel installs it: modules and their data side by side."""
    site = tmp_path / "lib" / "site-packages"
    package = site / "shieldwall"
    (package / "bpf").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module in ("paths.py", "abi.py"):
        shutil.copy(PACKAGE / module, package / module)
    shutil.copy(ROOT / "bpf" / "include" / "shieldwall.h", package / "bpf" / "shieldwall.h")
    (package / "bpf" / "root.bpf.o").write_bytes(b"\x7fELF")
    return site


def where(site: Path, **env: str) -> dict[str, str]:
    code = ("from shieldwall import abi, paths; print(paths.__file__, "
            "paths.object_path('root'), paths.SHARED_HEADER, abi.SW_ACT_DROP)")
    environ = {k: v for k, v in os.environ.items() if k != "SHIELDWALL_OBJ_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                         env={**environ, "PYTHONPATH": str(site), **env}, check=True)
    module, obj, header, drop = out.stdout.split()
    return {"module": module, "object": obj, "header": header, "drop": drop}


def test_an_installed_package_finds_its_objects_and_header(installed: Path):
    found = where(installed)
    data = installed / "shieldwall" / "bpf"
    assert found["module"] == str(installed / "shieldwall" / "paths.py")
    assert found["object"] == str(data / "root.bpf.o")
    assert found["header"] == str(data / "shieldwall.h")
    assert int(found["drop"]) == shieldwall.abi.SW_ACT_DROP


def test_the_objects_directory_can_be_overridden(installed: Path, tmp_path: Path):
    found = where(installed, SHIELDWALL_OBJ_DIR=str(tmp_path / "elsewhere"))
    assert found["object"] == str(tmp_path / "elsewhere" / "root.bpf.o")
    assert found["header"] == str(installed / "shieldwall" / "bpf" / "shieldwall.h")


def test_a_checkout_finds_them_in_its_build_and_source_trees(monkeypatch):
    from shieldwall import paths
    monkeypatch.delenv("SHIELDWALL_OBJ_DIR", raising=False)
    assert paths.installed_data_dir() is None
    assert paths.object_path("root") == ROOT / "build" / "bpf" / "root.bpf.o"
    assert paths.SHARED_HEADER == ROOT / "bpf" / "include" / "shieldwall.h"
