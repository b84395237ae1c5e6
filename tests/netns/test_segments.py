"""Namespace tier: segments of a policy. A reload applies the part outside the
segments and then each changed segment as a transaction of its own: a segment whose
new rules are refused keeps running as it was while the others go in, and the next
reload takes it once it is fixed."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from shieldwall.engine.transaction import Layout
from shieldwall.kernel import libbpf
from shieldwall.kernel.netns import enter_netns
from shieldwall.kernel.testrun import prog_test_run

from ..helpers import shieldwall

pytestmark = pytest.mark.netns

XDP_DROP, XDP_PASS = 1, 2
WEB, MAIL, OTHER = "203.0.113.10", "203.0.113.70", "203.0.113.200"


def cli(topo, *args: str) -> subprocess.CompletedProcess:
    out = shieldwall(*args, "--netns", topo.server_ns, "--iface", topo.server_if)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def verdicts(topo) -> dict[tuple[str, int], str]:
    """TCP SYNs to each segment's destinations and elsewhere, ports 22, 23, 25 and 587."""
    with enter_netns(topo.server_ns):
        layout = Layout.of(topo.server_if)
        fd = libbpf.obj_get(layout.gen(layout.live_generation()) / "prog_root")
        try:
            out = {}
            for dst in (WEB, MAIL, OTHER):
                for port in (22, 23, 25, 587):
                    frame = bytes(Ether(src=topo.outside_mac, dst=topo.server_mac)
                                  / IP(src=topo.client_v4, dst=dst) / TCP(dport=port, flags="S"))
                    out[(dst, port)] = {XDP_DROP: "drop", XDP_PASS: "pass"}[prog_test_run(fd, frame).retval]
            return out
        finally:
            os.close(fd)


def write(directory, web: str, mail: str, extra: str = "") -> None:
    (directory / "main.yaml").write_text(f"""\
version: 1
default_action: pass
segments:
  web: {{dst: [203.0.113.0/26], file: web.yaml}}
  mail: {{dst: [203.0.113.64/26, "2001:db8:25::/48"], file: mail.yaml}}
rules:
  - {{name: global-ssh, match: {{proto: tcp, dport: 22}}, action: drop}}
{extra}""")
    (directory / "web.yaml").write_text(f"rules:\n  - {{name: web, match: {{proto: tcp, dport: {web}}}, action: drop}}\n")
    (directory / "mail.yaml").write_text(f"rules:\n  - {{name: mail, match: {{proto: tcp, dport: {mail}}}, action: drop}}\n")


def dropped(v: dict) -> set:
    return {k for k, verdict in v.items() if verdict == "drop"}


def test_segments_update_in_their_own_cycles(lab, tmp_path):
    topo = lab
    write(tmp_path, web="23", mail="25")
    main = str(tmp_path / "main.yaml")
    assert cli(topo, "up", "--mode", "native", "--config", main).returncode == 0
    ssh = {(d, 22) for d in (WEB, MAIL, OTHER)}
    assert dropped(verdicts(topo)) == ssh | {(WEB, 23), (MAIL, 25)}

    # web changes, mail's new rules are refused: web goes in, mail keeps running as it was.
    write(tmp_path, web="587", mail="'not a port'")
    dry = cli(topo, "reload", "--dry-run", "--config", main)
    assert dry.returncode == 2  # the dry run validates the whole file
    out = cli(topo, "reload", "--config", main)
    assert out.returncode == 2, out.stderr
    assert "segment web: revision 2" in out.stdout
    assert "segment mail kept as it runs" in out.stderr and "segments.mail.rules[0]" in out.stderr
    assert dropped(verdicts(topo)) == ssh | {(WEB, 587), (MAIL, 25)}

    # The part outside the segments, then mail once fixed: two changes, in that order.
    write(tmp_path, web="587", mail="587", extra="  - {name: global-telnet, match: {proto: tcp, dport: 23}, action: drop}\n")
    out = cli(topo, "reload", "--config", main)
    assert out.returncode == 0, out.stderr
    assert "outside the segments: revision 3" in out.stdout and "segment mail: revision 4" in out.stdout
    telnet = {(d, 23) for d in (WEB, MAIL, OTHER)}
    assert dropped(verdicts(topo)) == ssh | telnet | {(WEB, 587), (MAIL, 587)}
    history = json.loads(cli(topo, "history", "--json").stdout)
    assert [r["origin"] for r in history] == ["up", "reload (segment web)", "reload (outside segments)",
                                              "reload (segment mail)"]
    # A rollback returns to a whole earlier state, segments included.
    assert cli(topo, "rollback", "--to", "2").returncode == 0
    assert dropped(verdicts(topo)) == ssh | {(WEB, 587), (MAIL, 25)}

    # An error outside the segments refuses the whole reload.
    write(tmp_path, web="22", mail="22", extra="  - {name: broken, match: {proto: nope}, action: drop}\n")
    out = cli(topo, "reload", "--config", main)
    assert out.returncode == 2 and "rules[1].match.proto" in out.stderr
    assert dropped(verdicts(topo)) == ssh | {(WEB, 587), (MAIL, 25)}
    assert cli(topo, "down").returncode == 0


def test_segment_rules_are_checked(tmp_path):
    write(tmp_path, web="23", mail="25")
    (tmp_path / "web.yaml").write_text("rules:\n  - {name: global-ssh, match: {dst: 192.0.2.1}, action: drop}\n")
    main = tmp_path / "main.yaml"
    main.write_text(main.read_text().replace("203.0.113.64/26", "203.0.113.0/25"))
    out = shieldwall("check", "--config", str(main))
    assert out.returncode == 2
    assert "segments.web.rules[0].match.dst: a segment's rules take their destinations" in out.stderr
    assert "segments.mail.dst: 203.0.113.0/25 overlaps 203.0.113.0/26 of segment web" in out.stderr
