"""Where the package finds its files and tools."""

from __future__ import annotations

import pytest

from shieldwall import paths


def _compilers(tmp_path, *names: str) -> str:
    for name in names:
        tool = tmp_path / name
        tool.write_text("#!/bin/sh\n")
        tool.chmod(0o755)
    return str(tmp_path)


def test_clang_is_found_as_bpf_makefile_finds_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CLANG", raising=False)
    monkeypatch.setenv("PATH", _compilers(tmp_path, "clang-19", "clang"))
    assert paths.clang() == str(tmp_path / "clang-19")
    (tmp_path / "clang-19").unlink()
    assert paths.clang() == str(tmp_path / "clang")
    monkeypatch.setenv("CLANG", "/opt/llvm/bin/clang")
    assert paths.clang() == "/opt/llvm/bin/clang"
    monkeypatch.delenv("CLANG")
    (tmp_path / "clang").unlink()
    with pytest.raises(FileNotFoundError, match="clang"):
        paths.clang()
