"""A wheel built from this source, installed into a fresh virtualenv, works away from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import shieldwall
from shieldwall.pcapio import write_pcap

from .packets import ARP, TCP, eth, v4

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]


def source_copy(destination: Path) -> Path:
    """The source as the repository has it (tracked or not ignored), without this
    checkout's build outputs, which an in-tree build would otherwise pick up."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


def run(*argv: str | Path, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=180, **kw)
    assert out.returncode == 0, f"{argv}:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("wheel")
    source = source_copy(base / "source")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", base / "dist", source)
    (wheel,) = (base / "dist").glob("shieldwall-*.whl")
    run(sys.executable, "-m", "venv", base / "venv")
    run(base / "venv" / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    return wheel, base / "venv"


def elsewhere() -> dict[str, str]:
    """An environment that points at nothing of this checkout."""
    drop = {"PYTHONPATH", "SHIELDWALL_OBJ_DIR", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_the_wheel_carries_objects_header_and_module(wheel_venv):
    wheel, _ = wheel_venv
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("root", "fastpath", "policy", "bare_drop", "trafgen", "root.tc", "syn.tc"):
        assert f"shieldwall/bpf/{name}.bpf.o" in names
    assert "shieldwall/bpf/shieldwall.h" in names
    assert "shieldwall/bpf/selftest.bpf.o" not in names  # a test program, not the product
    assert any(n.startswith("shieldwall/kernel/_libbpf") and n.endswith(".so") for n in names)
    assert wheel.name.startswith(f"shieldwall-{shieldwall.__version__}-")


def test_the_installed_package_runs_from_anywhere(wheel_venv, tmp_path: Path):
    _, venv = wheel_venv
    site = run(venv / "bin" / "python", "-c",
               "import json, shieldwall, importlib.metadata as m; from shieldwall import paths; "
               "print(json.dumps([shieldwall.__file__, str(paths.object_dir()), "
               "str(paths.SHARED_HEADER), m.version('shieldwall'), m.requires('shieldwall')]))",
               cwd="/", env=elsewhere())
    module, objects, header, version, requires = json.loads(site.stdout)
    package = Path(module).parent
    assert package.is_relative_to(venv)
    assert Path(objects) == package / "bpf" and Path(header) == package / "bpf" / "shieldwall.h"
    assert version == shieldwall.__version__
    assert any(r.startswith("scapy") for r in requires)

    out = run(venv / "bin" / "shieldwall", "--version", cwd="/", env=elsewhere())
    assert out.stdout == f"shieldwall {shieldwall.__version__}\n"

    pcap = tmp_path / "tiny.pcap"
    write_pcap(pcap, [bytes(eth() / ARP()), bytes(eth() / v4() / TCP())[:25],
                      b"\x02" * 12 + b"\x88\xb5" + bytes(100_000)])
    out = run(venv / "bin" / "shieldwall", "verdict", "--pcap", pcap, "--json", cwd="/",
              env=elsewhere())
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(l["action"], l["reason"], l["module"]) for l in lines] == [
        ("pass", "non_ip", "root"), ("drop", "truncated_ipv4", "root"), ("pass", "non_ip", "root")]
    assert lines[2]["note"].startswith("judged on its first ")
