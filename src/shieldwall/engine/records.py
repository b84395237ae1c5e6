"""What shieldwall remembers on disk about each interface: the revisions of the policy
it applied, the one in force, and the journal of a change under way.

Everything lives under one root-only directory per interface
(/var/lib/shieldwall/<scope>/<iface>/, $SHIELDWALL_STATE for another root):

    revisions/<n>.json   one applied policy: its file, content hash, set files, time
    blobs/<sha256>       the policy's and its set files' contents, by hash
    current              the revision in force
    journal              the change under way, if any (see engine/transaction.py)
    host.json            what stages set up in the network namespace (engine/host.py)
    nft.json             the interface runs in nft mode: its table, what its counters mean

Every write goes to a temporary file that is synced and renamed over the old one, so a
kill at any instant leaves each file whole: the old content or the new.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dataplane import bpffs
from ..dataplane.rootonly import UnsafePath, make_dir
from ..kernel.errors import BpfError

DEFAULT_STATE = Path("/var/lib/shieldwall")
KEEP_REVISIONS = 50


class StateDirError(BpfError):
    """The state directory is not one only root controls."""


def state_root() -> Path:
    return Path(os.environ.get("SHIELDWALL_STATE") or DEFAULT_STATE)


def private_dir(path: Path) -> Path:
    """`path` as a directory only root can change, made (0700) when missing, and every
    directory from the state root down to it (rootonly): the journal and revisions
    decide what root's next command does."""
    root = state_root()
    below = path.relative_to(root).parts if path.is_relative_to(root) else ()
    root.parent.mkdir(parents=True, exist_ok=True)
    for step in [root, *(root.joinpath(*below[:i + 1]) for i in range(len(below)))]:
        try:
            make_dir(step, fix="shieldwall keeps its revisions and journal only in directories "
                               "root owns and only root may write; remove it or fix its owner and mode")
        except UnsafePath as exc:
            raise StateDirError(errno.EPERM, str(exc)) from None
    return path


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path, limit: int = 16 << 20) -> Any | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        # Read what the file holds, not `limit`: a buffer of the limit would be allocated whole.
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path} is larger than {limit >> 20} MiB")
        return json.loads(f.read(size + 1))


@dataclass(frozen=True)
class Revision:
    number: int
    applied_at: float
    source: str | None         # the policy file as given; None: no policy (pass-all)
    sha256: str | None         # of the policy file's content
    files: dict[str, str] = field(default_factory=dict)  # set file as named -> sha256
    origin: str = "reload"     # up, reload, rollback to N, ...
    summary: str = ""

    def to_json(self) -> dict:
        return {"revision": self.number, "applied_at": self.applied_at, "source": self.source,
                "sha256": self.sha256, "files": self.files, "origin": self.origin,
                "summary": self.summary}

    @classmethod
    def from_json(cls, d: dict) -> "Revision":
        return cls(int(d["revision"]), float(d["applied_at"]), d.get("source"), d.get("sha256"),
                   dict(d.get("files") or {}), d.get("origin", ""), d.get("summary", ""))

    @property
    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.applied_at))


class Records:
    """The records of one interface (in the current network namespace's scope)."""

    def __init__(self, iface: str) -> None:
        self.dir = state_root() / bpffs.netns_scope() / iface

    def _ready(self) -> Path:
        private_dir(self.dir)
        private_dir(self.dir / "revisions")
        private_dir(self.dir / "blobs")
        return self.dir

    def _write(self, name: str, data: Any, indent: int | None = None) -> None:
        """A record, whole (write_atomic), in the interface's private directory."""
        self._ready()
        write_atomic(self.dir / name, json.dumps(data, indent=indent).encode())

    # -- blobs -------------------------------------------------------------------------
    def store_blob(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._ready() / "blobs" / digest
        if not path.exists():
            write_atomic(path, data)
        return digest

    def blob(self, digest: str) -> Path:
        path = self.dir / "blobs" / digest
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, f"the stored copy {digest[:12]} is missing", str(path))
        return path

    # -- revisions -----------------------------------------------------------------------
    def revisions(self) -> list[Revision]:
        found = []
        where = self.dir / "revisions"
        for path in sorted(where.glob("*.json")) if where.is_dir() else []:
            data = read_json(path)
            if data is not None:
                found.append(Revision.from_json(data))
        return sorted(found, key=lambda r: r.number)

    def revision(self, number: int) -> Revision:
        data = read_json(self.dir / "revisions" / f"{number}.json")
        if data is None:
            known = ", ".join(str(r.number) for r in self.revisions()) or "none"
            raise ValueError(f"no revision {number} (kept: {known})")
        return Revision.from_json(data)

    def next_number(self) -> int:
        numbers = [r.number for r in self.revisions()]
        current = self.current()
        return max([*numbers, current or 0, 0]) + 1

    def save(self, revision: Revision) -> None:
        self._write(f"revisions/{revision.number}.json", revision.to_json(), indent=1)

    def drop(self, number: int) -> None:
        (self.dir / "revisions" / f"{number}.json").unlink(missing_ok=True)
        (self.dir / "live-index" / f"{number}.json").unlink(missing_ok=True)

    # -- live set entries (engine.livesets) ------------------------------------------------
    def live_index(self, number: int) -> dict | None:
        """What generation `number`'s live entries need (dataplane.livehosts.LiveIndex)."""
        return read_json(self.dir / "live-index" / f"{number}.json")

    def save_live_index(self, number: int, index: dict) -> None:
        private_dir(self._ready() / "live-index")
        self._write(f"live-index/{number}.json", index)

    # -- a canary (engine.canary) -------------------------------------------------------------
    def canary(self) -> dict | None:
        return read_json(self.dir / "canary.json")

    def save_canary(self, data: dict) -> None:
        self._write("canary.json", data)

    def clear_canary(self) -> None:
        (self.dir / "canary.json").unlink(missing_ok=True)

    # -- what stages set up in the namespace (engine.host) -------------------------------
    def host_setup(self) -> dict:
        return read_json(self.dir / "host.json") or {}

    def save_host_setup(self, data: dict) -> None:
        if data:
            self._write("host.json", data, indent=1)
        else:
            (self.dir / "host.json").unlink(missing_ok=True)

    # -- the interface runs the nftables mode (engine.nftmode) -------------------------------
    def nft_mode(self) -> dict | None:
        return read_json(self.dir / "nft.json")

    def save_nft_mode(self, data: dict) -> None:
        self._write("nft.json", data, indent=1)

    def clear_nft_mode(self) -> None:
        (self.dir / "nft.json").unlink(missing_ok=True)

    def live_entries(self) -> dict | None:
        return read_json(self.dir / "live.json", 1 << 30)

    def save_live_entries(self, data: dict) -> None:
        self._write("live.json", data)

    def current(self) -> int | None:
        data = read_json(self.dir / "current")
        return int(data["revision"]) if data else None

    def set_current(self, number: int | None) -> None:
        if number is None:
            (self.dir / "current").unlink(missing_ok=True)
            return
        self._write("current", {"revision": number})
        self._prune()

    def _prune(self) -> None:
        """Keeps the newest KEEP_REVISIONS revisions and the blobs they use."""
        kept = self.revisions()[-KEEP_REVISIONS:]
        for r in self.revisions()[:-KEEP_REVISIONS]:
            self.drop(r.number)
        used = {h for r in kept for h in (r.sha256, *r.files.values()) if h}
        for blob in (self.dir / "blobs").iterdir():
            if blob.name not in used and not blob.name.startswith("."):
                blob.unlink()

    # -- the journal ---------------------------------------------------------------------
    def journal(self) -> dict | None:
        return read_json(self.dir / "journal")

    def write_journal(self, entry: dict) -> None:
        self._write("journal", entry)

    def clear_journal(self) -> None:
        (self.dir / "journal").unlink(missing_ok=True)

    def remove(self) -> None:
        """Every record of the interface, and the scope directory if that was its last."""
        if self.dir.is_dir() and not self.dir.is_symlink():
            shutil.rmtree(self.dir)  # removes symlinks inside, never follows them
        try:
            self.dir.parent.rmdir()
        except OSError:
            pass

    def forget(self) -> None:
        """After `down`: nothing in force; the revisions stay for `up --revision`."""
        self.set_current(None)
        self.clear_journal()
