"""Bad input on a lab interface: a clear message naming the problem, a non-zero exit,
nothing half-attached. (Bad input that needs no interface: tests/unit/test_cli_input.py,
tests/kernel/test_cli_errors.py.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from shieldwall.dataplane import bpffs
from shieldwall.kernel import xdp
from shieldwall.kernel.netns import enter_netns
from shieldwall.paths import BPF_SRC_DIR, clang, object_dir

from ..helpers import shieldwall

pytestmark = pytest.mark.netns

REJECTED = r"""
#include "lib/canary.h"
#include "lib/pipeline.h"
SW_TABLE_MAP(sw_src_tab);
SW_HOSTS_MAP(sw_src_hosts);
SEC("xdp.frags")
int sw_root(struct xdp_md *ctx)
{
	/* Reads past data_end: the verifier must refuse it. */
	unsigned char *p = (void *)(long)ctx->data;
	return p[100];
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_verifier_rejection_shows_the_log_and_attaches_nothing(lab, tmp_path: Path):
    objects = tmp_path / "objects"
    shutil.copytree(object_dir(), objects)
    src = tmp_path / "bad.c"
    src.write_text(REJECTED)
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    subprocess.run([clang(), "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}",
                    f"-I{BPF_SRC_DIR}", f"-I{BPF_SRC_DIR / 'include'}", "-c",
                    str(src), "-o", str(objects / "root.bpf.o")], check=True)
    topo = lab
    where = ("--netns", topo.server_ns, "--iface", topo.server_if)
    out = shieldwall("up", "--allow-empty", "--mode", "native", *where,
                     env={"SHIELDWALL_OBJ_DIR": str(objects)})
    assert out.returncode == 3
    assert "verifier rejected root.bpf.o" in out.stderr
    assert "invalid access to packet" in out.stderr
    with enter_netns(topo.server_ns):
        assert xdp.query(topo.server_ifindex).mode is None
        assert not bpffs.pin_dir(topo.server_if).exists()
    # auto: the XDP build is refused (as a stripped kernel refuses it), so native and
    # generic are passed over, each saying why, and the TC build attaches.
    out = shieldwall("up", "--allow-empty", *where, env={"SHIELDWALL_OBJ_DIR": str(objects)})
    assert out.returncode == 0, out.stderr
    assert "in tc mode" in out.stdout, out.stdout
    assert "tried native: its programs do not load here: the verifier rejected root.bpf.o" \
        in out.stdout and "tried generic: its programs do not load here" in out.stdout, out.stdout
    with enter_netns(topo.server_ns):
        assert xdp.query(topo.server_ifindex).mode is None
    assert shieldwall("down", *where).returncode == 0
    # Neither build loads: the last mode, nftables, protects.
    shutil.copy(objects / "root.bpf.o", objects / "root.tc.bpf.o")
    out = shieldwall("up", "--allow-empty", *where, env={"SHIELDWALL_OBJ_DIR": str(objects)})
    assert out.returncode == 0, out.stderr
    assert "in nft mode" in out.stdout and "tried tc: its programs do not load here" in out.stdout \
        and "tried nft: attached" in out.stdout, out.stdout
    status = shieldwall("status", *where)
    assert "nft" in status.stdout, status.stdout
    assert shieldwall("down", *where).returncode == 0
