"""The doctor on recorded host profiles: the expected findings and verdict of each, the
shape of its report, and the parts of the facts layer that need no kernel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shieldwall import modes
from shieldwall.cli import main
from shieldwall.doctor import Recorded, UnknownInterface, examine, facts, needs, plan_modes
from shieldwall.doctor.checks import classify_program, parse_version
from shieldwall.doctor.verdict import excluded_modes
from shieldwall.kernel.netns import NamespaceError

HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"
PROFILES = sorted(p.stem for p in HOSTS.glob("*.json"))
BPF = Path(__file__).resolve().parents[2] / "bpf"


def profile(name: str) -> dict:
    return json.loads((HOSTS / f"{name}.json").read_text())


def judge(name: str):
    data = profile(name)
    return examine(data.get("iface"), Recorded(data)), data


def test_the_profiles_the_issue_asks_for_are_there():
    wanted = {"this_vm", "budget_vps_virtio_1q", "virtio_multiqueue", "aws_ena", "mlx5_bare_metal",
              "i40e", "kernel_4_19_no_btf", "stripped_5_15_cloud", "single_lro_on",
              "single_no_syncookies", "single_foreign_xdp", "single_bond"}
    assert wanted <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_gives_the_expected_findings_and_verdict(name):
    report, data = judge(name)
    expected = data["expected"]
    got = {check: report.status(check) for check in expected["findings"]}
    assert got == expected["findings"], report.summary
    assert report.best_mode == expected["best_mode"], report.summary


@pytest.mark.parametrize("name", PROFILES)
def test_every_finding_says_what_it_read_what_it_costs_and_what_to_do(name):
    report, _ = judge(name)
    for f in report.findings:
        assert f.status in ("ok", "warn", "fail")
        assert re.fullmatch(r"[a-z]+\.[a-z0-9_.]+", f.check)
        assert f.evidence and f.impact, f.check
        if f.status != "ok":
            assert f.remedy, f"{name}: {f.check} says {f.status} with no remedy"
        assert set(f.blocks) <= set(modes.MODES)
    checks = [f.check for f in report.findings]
    assert len(checks) == len(set(checks)), "a check reported twice"


@pytest.mark.parametrize("name", PROFILES)
def test_json_report_has_the_promised_shape(name):
    report, _ = judge(name)
    out = json.loads(report.to_json())
    assert {"findings", "best_mode", "summary"} <= set(out)
    assert out["best_mode"] in modes.MODES
    for f in out["findings"]:
        assert {"check", "status", "evidence", "impact", "remedy"} <= set(f)
    order = [f["status"] for f in out["findings"]]
    assert order == sorted(order, key=["fail", "warn", "ok"].index), "fails first"


def test_a_mode_is_ruled_out_only_by_a_failing_finding():
    for name in PROFILES:
        report, _ = judge(name)
        for f in report.findings:
            if f.blocks:
                assert f.status == "fail", f"{name}: {f.check}"


def test_plan_lists_the_workable_modes_best_first_and_why_the_others_are_out():
    report, _ = judge("single_libxdp_dispatcher")
    plan = plan_modes(report)
    assert [m for m, _ in plan] == ["tc", "nft"]
    out = dict(excluded_modes(report))
    assert set(out) == {"native", "generic"}
    assert "iface.xdp_programs" in out["native"] and "libxdp" in out["native"]
    assert report.summary.startswith("best mode on sw-doc0: tc")
    assert "not native: iface.xdp_programs" in report.summary


def test_this_machine_refuses_ext_tracing_lsm_and_the_doctor_knows_why_it_does_not_matter():
    report, _ = judge("this_vm")
    f = next(f for f in report.findings if f.check == "bpf.prog_type.optional")
    assert f.status == "ok"
    assert "ext (errno 1)" in f.evidence and "restricted-BPF profile" in f.evidence
    assert "tail calls" in f.impact and "dispatcher" in f.impact


def test_old_kernel_refusing_unknown_types_is_not_called_a_restricted_profile():
    report, _ = judge("kernel_4_19_no_btf")
    f = next(f for f in report.findings if f.check == "bpf.prog_type.optional")
    assert "errno 22" in f.evidence and "restricted" not in f.evidence


def test_stripped_kernel_is_told_apart_from_an_old_one():
    report, _ = judge("stripped_5_15_cloud")
    clock = next(f for f in report.findings if f.check == "kernel.coarse_clock")
    assert "built without it" in clock.evidence
    report, _ = judge("kernel_4_19_no_btf")
    clock = next(f for f in report.findings if f.check == "kernel.coarse_clock")
    assert "built without it" not in clock.evidence


def test_without_an_interface_only_the_host_is_judged():
    data = profile("this_vm")
    report = examine(None, Recorded(data))
    assert not [f for f in report.findings if f.check.startswith("iface.")]
    assert report.best_mode == "native" and "no --iface" in report.summary


def test_unknown_interface_in_a_profile():
    with pytest.raises(UnknownInterface, match="nope0"):
        examine("nope0", Recorded(profile("this_vm")))


def test_missing_syncookie_helpers_cost_the_syn_stage_not_the_mode():
    report, _ = judge("single_no_syncookies")
    helpers = next(f for f in report.findings if f.check == "bpf.helpers")
    assert "syn" in helpers.impact and not helpers.blocks


def test_needs_table_matches_what_the_bpf_sources_call():
    """The doctor's list of helpers and map types per program is checked against bpf/,
    so a stage that starts calling a new helper cannot go unprobed."""
    def closure(path: Path, seen: set[Path]) -> set[Path]:
        if path in seen:
            return seen
        seen.add(path)
        for inc in re.findall(r'#include "([^"]+)"', path.read_text()):
            for base in (path.parent, BPF, BPF / "include", BPF / "lib"):
                if (base / inc).exists():
                    closure((base / inc).resolve(), seen)
                    break
        return seen

    def calls(paths) -> set[str]:
        text = "\n".join(re.sub(r"/\*.*?\*/", "", p.read_text(), flags=re.S) for p in paths)
        return set(re.findall(r"\b(bpf_[a-z0-9_]+)\s*\(", text))

    context = (BPF / "lib" / "ctx.h").resolve()
    assert calls([context]) == set(needs.CONTEXT_XDP) | set(needs.CONTEXT_TC)
    for program, (helpers, maps) in needs.PROGRAMS.items():
        src = BPF / ("root.bpf.c" if program == "root" else f"stages/{program}.bpf.c")
        paths = closure(src.resolve(), set()) - {context}
        text = "\n".join(re.sub(r"/\*.*?\*/", "", p.read_text(), flags=re.S) for p in paths)
        called = set(re.findall(r"\b(bpf_[a-z0-9_]+)\s*\(", text)) - {
            "bpf_htons", "bpf_ntohs", "bpf_htonl", "bpf_ntohl"}
        declared = {m.lower() for m in re.findall(r"BPF_MAP_TYPE_([A-Z_]+)", text)}
        assert called == set(helpers), program
        assert declared == set(maps), program
    for h in needs.helpers():
        assert h in needs.HELPER_SINCE


def test_program_owners():
    assert classify_program("xdp_dispatcher") == "libxdp"
    assert classify_program("cil_xdp_entry") == "cilium"
    assert classify_program("sw_root") == "shieldwall"
    assert classify_program("xdp_prog") == "foreign"
    assert classify_program(None) == "foreign"


def test_kernel_release_parsing():
    assert parse_version("6.18.44-fc-v595") == (6, 18)
    assert parse_version("4.19.0-27-amd64") == (4, 19)
    assert parse_version("garbage") is None


# -- the facts layer, on files instead of /proc ----------------------------------------

def test_steal_is_sampled_over_the_given_time_without_sleeping_for_real(tmp_path):
    stat = tmp_path / "stat"
    lines = iter(["cpu  100 0 100 700 0 0 0 100 0 0\n", "cpu  150 0 150 1600 0 0 0 200 0 0\n"])
    stat.write_text(next(lines))
    slept = []

    def sleep(s: float) -> None:
        slept.append(s)
        stat.write_text(next(lines))

    s = facts.steal(stat, 0.25, sleep)
    assert slept == [0.25]
    assert s["steal_ticks"] == 100 and s["total_ticks"] == 1100


def test_queue_interrupts_are_found_by_name_and_by_device(tmp_path):
    (tmp_path / "interrupts").write_text(
        "           CPU0       CPU1\n"
        " 37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n"
        " 38:          0      24549 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n"
        " 39:      22334          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n"
        " 40:          5          0 PCI-MSIX-0000:00:09.0   1-edge      virtio20-input.0\n"
        " 50:         10          3 PCI-MSIX   3-edge      i40e-eth1-TxRx-0\n"
        " 51:          9          0 PCI-MSIX   3-edge      mlx5_comp0@pci:0000:3b:00.0\n"
        " 52:          9          0 PCI-MSIX   3-edge      mlx5_async0@pci:0000:3b:00.0\n"
        "NMI:          0          0   Non-maskable interrupts\n")
    assert [q["name"] for q in facts.queue_irqs(tmp_path, "eth0", "virtio2")] == ["virtio2-input.0"]
    assert [q["name"] for q in facts.queue_irqs(tmp_path, "eth1", None)] == ["i40e-eth1-TxRx-0"]
    assert [q["name"] for q in facts.queue_irqs(tmp_path, "ens1", "0000:3b:00.0")] == [
        "mlx5_comp0@pci:0000:3b:00.0"]
    assert facts.queue_irqs(tmp_path, "eth0", "virtio2")[0]["counts"] == [0, 24549]


def test_bpffs_mounts_are_read_from_the_mount_table(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n")
    assert facts.bpffs_mounts(mounts) == ["/sys/fs/bpf"]


def test_recorded_facts_round_trip():
    data = profile("aws_ena")
    rec = Recorded(data)
    assert rec.record("ens5") == data["facts"]


def test_a_namespace_that_does_not_exist_is_a_clear_error():
    with pytest.raises(NamespaceError, match="does not exist"):
        facts.LiveFacts(netns="shieldwall-no-such-ns-0")


# -- the command ---------------------------------------------------------------------------

def test_cli_json_on_a_recorded_profile(capsys):
    assert main(["doctor", "--facts", str(HOSTS / "single_lro_on.json"),
                 "--iface", "enp59s0f0np0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best_mode"] == "generic"
    assert out["findings"][0] == {**out["findings"][0], "check": "iface.lro", "status": "fail"}


def test_cli_table_puts_fails_first_then_the_verdict(capsys):
    assert main(["doctor", "--facts", str(HOSTS / "budget_vps_virtio_1q.json"), "--iface", "eth0"]) == 0
    out = capsys.readouterr().out.splitlines()
    statuses = [line.split()[0] for line in out[1:] if line[:6].strip() in ("FAIL", "warn", "ok")]
    assert statuses == sorted(statuses, key=["FAIL", "warn", "ok"].index)
    assert statuses[0] == "FAIL"
    assert any(line.startswith("modes, best first:") for line in out)
    assert out[-1].startswith("best mode on eth0: generic")


@pytest.mark.parametrize("argv, message", [
    (["--facts", "/nonexistent/profile.json"], "no such file"),
    (["--facts", str(HOSTS / "this_vm.json"), "--iface", "nope0"], "no interface named 'nope0'"),
])
def test_cli_bad_input_is_one_clear_line(capsys, argv, message):
    assert main(["doctor", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_unprivileged_run_says_so_and_does_not_trust_its_probes():
    data = json.loads(json.dumps(profile("this_vm")))
    host = data["facts"]["host"]
    host["euid"] = 1000
    # What the kernel answers a user without CAP_BPF: no to everything.
    probes = host["probes"]
    probes["prog_types"] = {t: {"supported": False, "errno": 1} for t in probes["prog_types"]}
    probes["map_types"] = {m: False for m in probes["map_types"]}
    probes["helpers"] = {t: {h: False for h in hs} for t, hs in probes["helpers"].items()}
    report = examine(data["iface"], Recorded(data))
    assert report.status("doctor.privileges") == "warn"
    assert report.status("bpf.helpers") is None and report.status("bpf.prog_type.xdp") is None
    assert report.status("kernel.syn_cookies") == "ok"  # by version, then
    assert report.best_mode == "native"


def test_steal_sample_can_be_skipped(tmp_path):
    s = facts.steal(tmp_path / "stat", 0, lambda _: None)
    assert s["skipped"]
    data = json.loads(json.dumps(profile("this_vm")))
    data["facts"]["host"]["steal"] = s
    assert examine(None, Recorded(data)).status("host.steal") == "ok"
