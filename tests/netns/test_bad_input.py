"""Bad input: a clear message naming the problem, a non-zero exit, nothing half-attached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.kernel import xdp
from shieldwall.lab import topology
from shieldwall.kernel.netns import enter_netns
from shieldwall.paths import BPF_SRC_DIR, clang, object_dir

from .test_attach import shieldwall

pytestmark = pytest.mark.netns

REJECTED = r"""
#include "lib/pipeline.h"
SEC("xdp.frags")
int sw_root(struct xdp_md *ctx)
{
	/* Reads past data_end: the verifier must refuse it. */
	unsigned char *p = (void *)(long)ctx->data;
	return p[100];
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_unknown_interface():
    out = shieldwall("up", "--iface", "sw-nonexistent0")
    assert out.returncode == 2
    assert "no interface named 'sw-nonexistent0'" in out.stderr


def test_missing_object(tmp_path: Path):
    out = shieldwall("verdict", "--pcap", str(_tiny_pcap(tmp_path)),
                     env={"SHIELDWALL_OBJ_DIR": str(tmp_path / "nothing")})
    assert out.returncode == 2
    assert "root.bpf.o not found" in out.stderr


def test_corrupt_and_truncated_pcap(tmp_path: Path):
    good = _tiny_pcap(tmp_path).read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good[:-5])
    out = shieldwall("verdict", "--pcap", str(cut))
    assert out.returncode == 2 and "cut.pcap" in out.stderr and "truncated" in out.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture")
    out = shieldwall("verdict", "--pcap", str(junk))
    assert out.returncode == 2 and "junk.pcap" in out.stderr


def test_verifier_rejection_shows_the_log_and_attaches_nothing(tmp_path: Path):
    objects = tmp_path / "objects"
    shutil.copytree(object_dir(), objects)
    src = tmp_path / "bad.c"
    src.write_text(REJECTED)
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    subprocess.run([clang(), "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}",
                    f"-I{BPF_SRC_DIR}", f"-I{BPF_SRC_DIR / 'include'}", "-c",
                    str(src), "-o", str(objects / "root.bpf.o")], check=True)
    with topology.lab() as topo:
        out = shieldwall("up", "--netns", topo.server_ns, "--iface", topo.server_if,
                         env={"SHIELDWALL_OBJ_DIR": str(objects)})
        assert out.returncode == 3
        assert "verifier rejected root.bpf.o" in out.stderr
        assert "invalid access to packet" in out.stderr
        with enter_netns(topo.server_ns):
            assert xdp.query(topo.server_ifindex).mode is None
            assert not bpffs.pin_dir(topo.server_if).exists()


def _tiny_pcap(tmp_path: Path) -> Path:
    from shieldwall.pcapio import write_pcap
    path = tmp_path / "tiny.pcap"
    write_pcap(path, [b"\x02" * 12 + b"\x08\x06" + b"\x00" * 28])
    return path


def test_missing_privileges_are_named():
    # The same command as an unprivileged user: refused before anything is loaded.
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-m", "shieldwall", "up", "--iface", "lo"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert out.returncode == 2
    assert "needs root" in out.stderr
