"""The build steps pyproject.toml cannot declare.

A wheel carries what the package needs at run time besides Python: the compiled BPF
objects and the shared header, as package data in shieldwall/bpf/ (shieldwall.paths
finds them there), and the cffi module over libbpf, compiled against that header.
Building needs clang and libbpf-dev (scripts/install-deps.sh installs them on Debian).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build
from setuptools.errors import SetupError

BPF_DIR = "bpf"
HEADER = "bpf/include/shieldwall.h"
# The test programs (bpf/tests/) stay out of an installed package.
PROGRAMS = ("*.bpf.c", "stages/*.bpf.c", "tools/*.bpf.c")
# Built a second time for TC ingress (bpf/lib/ctx.h, docs/modes.md).
TC_PROGRAMS = ("*.bpf.c", "stages/*.bpf.c")
PACKAGE_DATA = "shieldwall/bpf"  # shieldwall.paths looks here


class build_bpf(Command):
    """Compiles the BPF programs with bpf/Makefile into the package's data directory.

    An editable install compiles them where a checkout keeps them (build/bpf/)."""

    description = "compile the BPF programs (clang)"
    user_options: list = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def _objects(self) -> list[str]:
        sources = sorted(p for pattern in PROGRAMS for p in Path(BPF_DIR).glob(pattern))
        tc = sorted(p for pattern in TC_PROGRAMS for p in Path(BPF_DIR).glob(pattern))
        return ([p.name.removesuffix(".c") + ".o" for p in sources]
                + [p.name.removesuffix(".bpf.c") + ".tc.bpf.o" for p in tc])

    def _data_dir(self) -> Path:
        return Path(self.build_lib, PACKAGE_DATA)

    def run(self) -> None:
        if not shutil.which("make") or not (shutil.which("clang-19") or shutil.which("clang")):
            raise SetupError("building shieldwall compiles BPF programs: it needs make, "
                             "clang and libbpf-dev (scripts/install-deps.sh installs them)")
        # bpf/Makefile resolves OUT relative to bpf/, so it gets an absolute path.
        out = Path("build/bpf" if self.editable_mode else self._data_dir()).resolve()
        targets = [str(out / name) for name in self._objects()]
        subprocess.run(["make", "-s", "-C", BPF_DIR, f"OUT={out}", *targets], check=True)
        if not self.editable_mode:
            self.copy_file(HEADER, str(self._data_dir() / Path(HEADER).name))

    def get_source_files(self) -> list[str]:
        found = [p for p in Path(BPF_DIR).rglob("*") if p.is_file()]
        return sorted(str(p) for p in found if p.suffix in (".c", ".h") or p.name == "Makefile")

    def get_outputs(self) -> list[str]:
        return [str(self._data_dir() / name) for name in self._objects()] + \
            list(self.get_output_mapping())

    def get_output_mapping(self) -> dict[str, str]:
        return {str(self._data_dir() / Path(HEADER).name): HEADER}


# First, so that a missing compiler stops the build before anything else is done.
build.sub_commands.insert(0, ("build_bpf", None))

setup(
    cmdclass={"build_bpf": build_bpf},
    cffi_modules=["src/shieldwall/kernel/ffi_build.py:ffibuilder"],
)
