"""`shieldwall daemon`: shieldwall in the foreground, for systemd.

Protection never depends on this process: the data plane is held by pinned links (or
nftables' own table), so a daemon that dies, is killed or restarts leaves every packet
decided as before. On start it adopts what runs: the same policy is kept as it is (no
reload, counters and state untouched), another policy goes in by the usual swap, and
with nothing attached it attaches. SIGTERM and SIGINT end the process and leave
protection in place (`shieldwall down` removes it).

While it runs, a Daemon is a main loop of periodic tasks (Daemon.every): watching the
policy file (and the files it names) and applying a change through the transaction
engine (SIGHUP: look now), sweeping expired live set entries and blocks, and whatever
else is added (a task is a function called every so many seconds from the main
thread: it must return soon; work that waits on something runs in a thread of its
own, and hands results to a task or to `hub`). Beside the loop run the metrics
listener and the control API (ops/api.py), whose requests come back here: every
change, whichever way it comes, is made under `Daemon.changes`, one at a time.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import Config, configure, load_config
from ..engine import lifecycle
from ..kernel.errors import BpfError
from ..policy.errors import PolicyError
from ..settings import env_seconds
from .events import EventHub, EventReader

# How often the policy file is looked at (a stat; it is read when that changed, and
# stayed so for one more look).
WATCH_SECONDS = 1.0
# How often expired live set entries and blocks are swept ($SHIELDWALL_SWEEP_SECONDS
# for another period: a test's).
SWEEP_SECONDS = 5.0


def sweep_seconds() -> float:
    return env_seconds("SHIELDWALL_SWEEP_SECONDS", SWEEP_SECONDS)


REFUSALS = (PolicyError, BpfError, OSError, ValueError, RuntimeError)


_said = threading.Lock()


def _say(text: str) -> None:
    # One write per line, under a lock: threads (the API's, the loop) never mix lines.
    with _said:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def start(iface: str, path: Path, mode: str) -> str:
    """Adopts or attaches; a sentence for the log."""
    report = lifecycle.status(iface)[0]
    change = lifecycle.proposal(load_config(path), path, "daemon")
    if report.get("attached"):
        running = (report.get("revision") or {}).get("sha256")
        if running and running == hashlib.sha256(path.read_bytes()).hexdigest():
            return (f"adopted {iface}: {report['mode']} mode, revision "
                    f"{report['revision']['revision']} already runs {path} (nothing changed)")
        result = lifecycle.reload(iface, change)
        return (f"adopted {iface}: {result.mode} mode; {path} differs from what ran, so it "
                f"went in as revision {result.revision} (one swap, state kept)")
    result = lifecycle.up(iface, change, mode=mode)
    return f"attached {iface} in {result.mode} mode, revision {result.revision}: {result.why}"


# -- periodic tasks ----------------------------------------------------------------------

@dataclass
class Task:
    """`run` every `every` seconds; what it returns (a line) goes to the log."""

    name: str
    every: float
    run: Callable[[], str | None]
    due: float = 0.0
    last_error: str | None = None


# -- the policy file ----------------------------------------------------------------------

@dataclass
class Watch:
    """The policy file and the files it names, as last looked at: a change of any of
    them is a change of the policy. `stats` is the cheap look (every second); the
    content's digest decides whether it changed."""

    path: Path
    files: list[Path] = field(default_factory=list)
    stats: tuple = ()
    pending: tuple | None = None    # a look that differed, waiting to be seen again
    digest: str | None = None       # of what was last evaluated
    revision: int | None = None     # what that evaluation put in force (or left)
    refused: str | None = None      # why it was refused; None: it is in force
    at: float | None = None

    def look(self) -> tuple:
        out = []
        for p in [self.path, *self.files]:
            try:
                st = os.stat(p)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
            except OSError as exc:
                out.append(exc.errno)
        return tuple(out)

    def content(self) -> str:
        h = hashlib.sha256()
        for p in [self.path, *self.files]:
            try:
                h.update(p.read_bytes())
            except OSError as exc:
                h.update(f"unreadable {exc.errno}".encode())
            h.update(b"\0")
        return h.hexdigest()

    def named(self, config: Config) -> None:
        """The files a good policy names, watched from now on (as the revision keeps them)."""
        policy = config.policy
        if policy is None:
            self.files = []
            return
        names = [shown for s in policy.sets.values() for shown in s.files]
        names += [seg.file for seg in policy.ruleset.segments]
        self.files = [self.path.parent / n for n in dict.fromkeys(names)]

    def report(self) -> dict:
        return {"file": str(self.path), "files": [str(p) for p in self.files],
                "sha256": self.digest, "revision": self.revision,
                "state": "refused" if self.refused else "in force", "refused": self.refused,
                "at": self.at}


class Daemon:
    """One interface's daemon: its main loop, its tasks, and what the control API asks
    of it (the service of ops/api.py)."""

    def __init__(self, iface: str, config: Path, mode: str = "auto", metrics: str | None = None,
                 api: Path | None = None, api_group: int | None = None,
                 api_default: bool = True) -> None:
        self.iface, self.config, self.mode = iface, config, mode
        self.metrics, self.api, self.api_group, self.api_default = metrics, api, api_group, api_default
        self.tasks: list[Task] = []
        self.changes = threading.Lock()    # one change at a time, whoever asks
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.hup = threading.Event()
        self.hub = EventHub()              # the ring's one consumer: readers subscribe here
        self.events: str | None = None     # why there are no events, when there are none
        self.mitigation: Any = None        # automatic mitigation (ops/mitigate.py), if any
        self.watch = Watch(config)
        self.sweeps: dict[str, Any] = {"at": None, "live_entries": 0, "blocks": 0}
        self.started = time.time()
        self._closers: list[Callable[[], None]] = []
        self.every(WATCH_SECONDS, "watch", self.check_policy)
        self.every(sweep_seconds(), "expiries", self.sweep)

    def log(self, text: str) -> None:
        _say(text)

    def every(self, seconds: float, name: str, run: Callable[[], str | None]) -> Task:
        """Adds a periodic task (first run: on the loop's next turn)."""
        task = Task(name, seconds, run)
        self.tasks.append(task)
        self.wake.set()
        return task

    def on_stop(self, closer: Callable[[], None]) -> None:
        """Something to close when the daemon stops (a thread's stop, a listener)."""
        self._closers.append(closer)

    # -- running ------------------------------------------------------------------------
    def run(self) -> int:
        listener = None
        if self.api is not None:
            # First: a path that cannot be used (another daemon's, an unsafe directory)
            # is refused before anything is touched. Connections wait until it serves.
            from .api import Listener
            listener = Listener(self.api, self.api_group, default=self.api_default)
            self.on_stop(listener.remove)
        try:
            with self.changes:
                self.log(start(self.iface, self.config, self.mode))
                self._settle()
            self._read_events()
            # -- automatic mitigation (ops/mitigate.py): a thread of its own on the hub
            from .mitigate import mitigation_task
            self.mitigation = mitigation_task(self)
            # --
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
            signal.signal(signal.SIGINT, lambda *_: self.stop())
            signal.signal(signal.SIGHUP, lambda *_: (self.hup.set(), self.wake.set()))
            self._serve(listener)
            self._loop()
        finally:
            for closer in reversed(self._closers):
                try:
                    closer()
                except Exception as exc:  # stopping goes on whatever one part says
                    self.log(f"stopping: {exc}")
        self.log(f"stopping; {self.iface} stays protected (shieldwall down --iface {self.iface} "
                 "removes it)")
        return 0

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def _read_events(self) -> None:
        """A thread moves the interface's sampled events from its ring into `hub`."""
        said: list[str] = []
        reader = EventReader(self.iface, self.hub, lambda text: (said.append(text), self.log(text)))
        if reader.start():
            self.on_stop(reader.stop)
        else:
            self.events = said[-1] if said else "events: no event ring"

    def _serve(self, listener: Any = None) -> None:
        if self.metrics:
            from prometheus_client import start_http_server

            from .metrics import status_reports
            from .serve import parse_listen, registry
            addr, port = parse_listen(self.metrics)
            served = registry(status_reports(self.iface))
            if self.mitigation is not None:  # its shieldwall_mitigation_* metrics
                from .mitigate import MitigationCollector
                served.register(MitigationCollector(self.mitigation))
            server, _ = start_http_server(port, addr=addr, registry=served)
            self.on_stop(server.shutdown)
            self.log(f"metrics at http://{self.metrics}/metrics")
        if listener is not None:
            from .api import Server
            api = Server(self, listener)
            api.start()
            self.on_stop(api.stop)
            mode = "0660, group %d" % self.api_group if self.api_group is not None else "0600"
            self.log(f"control API at {self.api} ({mode})")

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.clear()  # before looking: a signal from now on wakes the next wait
            if self.hup.is_set():
                self.hup.clear()
                self._task_line(self.check_policy, "SIGHUP", force=True)
            now = time.monotonic()
            for task in list(self.tasks):
                if task.due <= now and not self.stopping.is_set():
                    task.due = now + task.every
                    task.last_error = self._task_line(task.run, task.name, previous=task.last_error)
            due = min((t.due for t in self.tasks), default=now + 1.0)
            self.wake.wait(max(0.0, min(due - time.monotonic(), 1.0)))

    def _task_line(self, run: Callable[..., str | None], name: str, previous: str | None = None,
                   **kw: Any) -> str | None:
        """Runs a task; a failure is logged once (until it changes), never ends the loop."""
        try:
            line = run(**kw)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}" if not isinstance(exc, REFUSALS) else str(exc)
            if problem != previous:
                self.log(f"{name}: {problem}".splitlines()[0])
            return problem
        if line:
            self.log(line)
        return None

    # -- the policy file ------------------------------------------------------------------
    def _settle(self) -> None:
        """What runs now is the file as it is (after start): watched from here."""
        self.watch.stats = self.watch.look()
        try:
            self.watch.named(load_config(self.config))
        except REFUSALS:
            pass
        self.watch.stats = self.watch.look()
        self.watch.digest = self.watch.content()
        self.watch.revision = self._revision()
        self.watch.at = time.time()

    def check_policy(self, force: bool = False) -> str | None:
        """Applies the policy file if it (or a file it names) changed since it was last
        looked at; `force` (SIGHUP) reads it even if the stat says nothing changed, and
        tries a refused content again."""
        stats = self.watch.look()
        if not force:
            if stats == self.watch.stats:
                return None
            if stats != self.watch.pending:
                # Changed since the last look: read it once it has stopped changing (a
                # file written in place is seen truncated or half written otherwise).
                self.watch.pending = stats
                return None
        self.watch.pending = None
        self.watch.stats = stats
        digest = self.watch.content()
        if digest == self.watch.digest and not (force and self.watch.refused):
            return f"SIGHUP: {self.config} unchanged, revision {self.watch.revision} stays" if force else None
        with self.changes:
            self.watch.digest, self.watch.at = digest, time.time()
            try:
                from ..engine.segments import proposal
                change = proposal(self.config)
                result = lifecycle.reload(self.iface, change)
            except REFUSALS as exc:
                self.watch.refused = str(exc)
                self.watch.revision = self._revision()
                return f"reload refused, the policy in force stays: {exc}"
            self.watch.refused = None
            self.watch.revision = result.revision
            self.watch.named(change.config)
            self.watch.stats = self.watch.look()
        lines = [f"reloaded {self.iface}: revision {result.revision} in force"
                 + (" (SIGHUP)" if force else f" ({self.config} changed)")]
        lines += [f"  {note}" for note in result.notes]
        lines += [f"  refused: {problem}" for problem in result.failed]
        return "\n".join(lines)

    def _revision(self) -> int | None:
        from ..engine.records import Records
        try:
            return Records(self.iface).current()
        except REFUSALS:
            return None

    # -- expiries ---------------------------------------------------------------------------
    def sweep(self) -> str | None:
        """Expired live set entries leave the records and the maps (a compiled one: with
        a new generation); expired blocks leave the blocks table."""
        from ..engine import blocks, livesets, nftmode
        from ..engine.records import Records
        if nftmode.active(self.iface):
            return None  # neither live entries nor blocks exist in nft mode
        lines = []
        now = time.time()
        entries = livesets.Entries.load(Records(self.iface))
        if any(exp is not None and exp <= now for e in entries.sets.values() for exp in e.values()):
            with self.changes:
                out = livesets.change(self.iface, [])
            if out.expired:
                self.sweeps["live_entries"] += out.expired
                how = "in place" if out.in_place else f"through revision {out.revision}"
                lines.append(f"expiries: {out.expired} live set entries expired on {self.iface}, "
                             f"removed {how}")
        with self.changes:
            gone = blocks.sweep(self.iface)
        if gone:
            self.sweeps["blocks"] += len(gone)
            lines.append(f"expiries: {len(gone)} expired blocks removed on {self.iface} ("
                         f"{', '.join(gone[:5])}{' ...' if len(gone) > 5 else ''})")
        self.sweeps["at"] = time.time()
        return "\n".join(lines) or None

    # -- the control API's service ------------------------------------------------------------
    def ping(self) -> dict:
        return {"iface": self.iface, "pid": os.getpid(), "config": str(self.config)}

    def daemon_report(self) -> dict:
        return {"pid": os.getpid(), "iface": self.iface, "config": str(self.config),
                "started": self.started, "api": str(self.api) if self.api else None,
                "watch": self.watch.report(), "expiries": dict(self.sweeps),
                "events": {"reading": self.events is None, "problem": self.events,
                           "published": self.hub.published},
                "mitigation": self.mitigation.report() if self.mitigation is not None else None,
                "tasks": {t.name: {"every": t.every, "problem": t.last_error} for t in self.tasks}}

    def status(self) -> dict:
        return {"status": lifecycle.status(self.iface), "daemon": self.daemon_report()}

    def _proposal(self, origin: str, config: Path | None = None, text: str | None = None,
                  drop_live: bool = False, reload: bool = True) -> lifecycle.Proposal:
        if text is not None:
            return self._text_proposal(text, origin, drop_live)
        path = config or self.config
        if reload:
            from ..engine.segments import proposal
            return proposal(path, drop_live=drop_live)
        return lifecycle.proposal(load_config(path), path, origin, drop_live=drop_live)

    def _text_proposal(self, text: str, origin: str, drop_live: bool) -> lifecycle.Proposal:
        """A policy sent as text: validated with its files beside the daemon's policy, and
        kept (as the revision's source) in the interface's records."""
        from ..engine.records import Records, write_atomic
        from ..policy.load import parse_policy_text
        from .api import file_names
        from ..policy.load import load_yaml
        base = self.config.parent
        policy = parse_policy_text(text, "the policy sent to the control API", base)
        records = Records(self.iface)
        records._ready()
        copy = records.dir / "api-policy.yaml"
        write_atomic(copy, text.encode())
        files = {n: base / n for n in file_names(load_yaml(text))}
        return lifecycle.Proposal(Config(policy, configure(policy)), copy, origin,
                                  drop_live=drop_live, files=files)

    def reload(self, config: Path | None = None, text: str | None = None,
               drop_live: bool = False) -> dict:
        with self.changes:
            change = self._proposal("reload", config, text, drop_live)
            result = lifecycle.reload(self.iface, change)
            if config in (None, self.config) and text is None:
                # The file as it is now is in force: the watch need not apply it again.
                self.watch.refused, self.watch.revision = None, result.revision
                self.watch.named(change.config)
                self.watch.stats, self.watch.pending = self.watch.look(), None
                self.watch.digest = self.watch.content()
        self.log(f"reloaded {self.iface}: revision {result.revision} in force (control API)")
        return _result(result)

    def set_list(self, name: str | None) -> list:
        from ..engine import livesets
        return livesets.listing(self.iface, name)

    def set_change(self, op: str, name: str, prefixes: list[str], ttl: str | None) -> dict:
        from ..engine import livesets
        if not prefixes:
            raise ValueError("prefixes: name at least one")
        decisions = livesets.decisions(op, name, prefixes, ttl)
        with self.changes:
            out = livesets.change(self.iface, decisions)
        return dict(out.__dict__)

    def blocks_list(self) -> list:
        from ..engine import blocks
        return blocks.listing(self.iface)

    def blocks_del(self, prefixes: list[str], everything: bool) -> dict:
        from ..engine import blocks
        with self.changes:
            out = blocks.lift(self.iface, prefixes, everything)
        return dict(out.__dict__)

    def canary_start(self, config: Path | None = None, text: str | None = None,
                     share: str | None = None, src: str | None = None) -> dict:
        from ..engine import canary
        arm, label = canary.arm_of(share, src)
        with self.changes:
            change = self._proposal("canary", config, text, reload=False)
            return _result(canary.start(self.iface, change, arm, label))

    def canary_status(self) -> dict:
        from ..engine import canary
        return canary.status(self.iface)

    def canary_promote(self) -> dict:
        from ..engine import canary
        with self.changes:
            return _result(canary.promote(self.iface))

    def canary_abort(self) -> dict:
        from ..engine import canary
        with self.changes:
            back, recovered = canary.abort(self.iface)
        return {"revision": back, "recovered": recovered}

    def _has_events(self) -> None:
        if self.events is not None:
            from .api import ApiError
            raise ApiError(503, self.events.removeprefix("events: "))

    def subscribe(self) -> Any:
        self._has_events()
        return self.hub.subscribe()

    def recent(self) -> list:
        self._has_events()
        return self.hub.recent()


def _result(result: lifecycle.AttachResult) -> dict:
    return {"iface": result.iface, "mode": result.mode, "why": result.why,
            "prog_id": result.prog_id, "pins": str(result.pins), "revision": result.revision,
            "reloaded": result.reloaded, "recovered": result.recovered,
            "notes": list(result.notes), "failed": list(result.failed), "steps": list(result.steps)}


def run(iface: str, path: Path, mode: str = "auto", metrics: str | None = None,
        api: Path | None = None, api_group: int | None = None, api_default: bool = True) -> int:
    return Daemon(iface, path, mode, metrics, api, api_group, api_default).run()
