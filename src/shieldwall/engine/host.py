"""What stages need from the network namespace beside their programs (Stage.host): an
nftables table of their own and sysctl values, set up while the stage is in force on an
interface and taken down after.

Every step is written down before it is taken, in the interface's records
(host.json): which table shieldwall made, which sysctls it set, and what they were
before. So a command killed half-way leaves a record, and the next one (reconcile)
either finishes the job or undoes it; `down` removes exactly the tables it made and
puts back exactly the values it changed (unless someone changed them since).

A table is applied with one `nft -f` that creates it, deletes it and creates it again:
the kernel takes the file as one transaction, so the rules change at once, and a
failure changes nothing.
"""

from __future__ import annotations

import errno
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..kernel.errors import BpfError
from ..stages import stages
from ..stages.base import HostNeeds
from .records import Records

SYSCTL_ROOT = Path("/proc/sys")
NFT_TIMEOUT = 30


class HostSetupError(BpfError):
    """The host cannot give a stage what it needs: nothing was committed."""


def needs(config: Any, iface: str) -> dict[str, HostNeeds]:
    """Stage -> what it needs, for the stages of a configuration's chain."""
    policy = getattr(config, "policy", None)
    if policy is None:
        return {}
    found = {}
    for name in config.pipeline.chain:
        got = stages()[name].host(policy.sections.get(name), iface)
        if got is not None:
            found[name] = got
    return found


# -- the record ----------------------------------------------------------------------------

def _read(records: Records) -> dict[str, dict]:
    return records.host_setup()


def _write(records: Records, record: dict[str, dict]) -> None:
    records.save_host_setup(record)


# -- nftables and sysctls ----------------------------------------------------------------

def nft(args: list[str], script: str | None = None) -> str:
    """Runs nft in this network namespace; its output, or OSError with its last word."""
    found = shutil.which("nft")
    if found is None:
        raise FileNotFoundError("nft is not installed")
    done = subprocess.run([found, *args], input=script, capture_output=True, text=True,
                          timeout=NFT_TIMEOUT)
    if done.returncode != 0:
        # nft shows an error as its message, the line it is about and a caret line under it.
        said = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in said if line.startswith("Error")]
        raise OSError(errno.EINVAL, (errors or said or [f"nft exited with {done.returncode}"])[0])
    return done.stdout


def _nft(script: str, check: bool = False) -> None:
    nft(["-c", "-f", "-"] if check else ["-f", "-"], script)


def _table_script(name: str, ruleset: str | None) -> str:
    """Creates (or empties and refills) the table, or removes it (ruleset None), as one
    transaction whether the table exists or not."""
    script = f"table inet {name} {{}}\ndelete table inet {name}\n"
    if ruleset is not None:
        script += f"table inet {name} {{\n{ruleset}}}\n"
    return script


def _sysctl_path(key: str) -> Path:
    if not re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_]+)+", key):
        raise ValueError(f"not a sysctl: {key!r}")
    return SYSCTL_ROOT / key


def _sysctl_get(key: str) -> str | None:
    try:
        return _sysctl_path(key).read_text().strip()
    except FileNotFoundError:
        return None


def _sysctl_set(key: str, value: str) -> None:
    _sysctl_path(key).write_text(value + "\n")


def check(config: Any, iface: str) -> None:
    """Refuses, before anything changes, a configuration whose stages need what this
    namespace cannot give (nft missing, SYNPROXY not in the kernel, a sysctl absent)."""
    for name, need in needs(config, iface).items():
        try:
            _nft(_table_script(need.table, need.ruleset), check=True)
            missing = [k for k in need.sysctls if _sysctl_get(k) is None]
            if missing:
                raise OSError(errno.ENOENT, f"no sysctl {', '.join(missing)}")
        except (OSError, subprocess.SubprocessError) as exc:
            raise HostSetupError(errno.EOPNOTSUPP, need.unavailable,
                                 f"what failed: {exc.strerror or exc}") from None


# -- bringing the namespace to what the stages need ---------------------------------------

def sync(iface: str, config: Any, add_only: bool = False) -> None:
    """The namespace holds what the configuration's stages need, and (unless add_only,
    used before a commit while the old chain still runs) nothing else shieldwall made
    for this interface."""
    records = Records(iface)
    record = _read(records)
    wanted = needs(config, iface)
    if not add_only:
        for stage in [s for s in record if s not in wanted]:
            _teardown(records, record, stage)
    for stage, need in wanted.items():
        _setup(records, record, stage, need)


def teardown(iface: str) -> None:
    """Everything shieldwall set up for this interface goes."""
    sync(iface, None)


def _setup(records: Records, record: dict, stage: str, need: HostNeeds) -> None:
    entry = record.get(stage, {})
    previous = dict(entry.get("previous", {}))
    for key in need.sysctls:
        if key not in previous:
            previous[key] = _sysctl_get(key)
    if entry.get("table") and entry["table"] != need.table:
        _nft(_table_script(entry["table"], None))
    # Written first: a kill from here on leaves what the next command must undo.
    record[stage] = {"table": need.table, "sysctls": need.sysctls, "previous": previous}
    _write(records, record)
    _nft(_table_script(need.table, need.ruleset))
    for key, value in need.sysctls.items():
        _sysctl_set(key, value)
    for key in set(entry.get("sysctls", {})) - set(need.sysctls):
        _restore(key, entry["sysctls"][key], previous.pop(key, None))
    record[stage]["previous"] = previous
    _write(records, record)


def _teardown(records: Records, record: dict, stage: str) -> None:
    entry = record[stage]
    if entry.get("table"):
        _nft(_table_script(entry["table"], None))
    for key, value in entry.get("sysctls", {}).items():
        _restore(key, value, entry.get("previous", {}).get(key))
    del record[stage]
    _write(records, record)


def _restore(key: str, ours: str, before: str | None) -> None:
    """Puts a sysctl back, unless someone changed it since shieldwall set it."""
    if before is not None and _sysctl_get(key) == ours:
        _sysctl_set(key, before)


def recorded(iface: str) -> dict[str, dict]:
    return _read(Records(iface))
