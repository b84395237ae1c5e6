"""`shieldwall daemon`: shieldwall in the foreground, for systemd.

Protection never depends on this process: the data plane is held by pinned links (or
nftables' own table), so a daemon that dies, is killed or restarts leaves every packet
decided as before. On start it adopts what runs: the same policy is kept as it is (no
reload, counters and state untouched), another policy goes in by the usual swap, and
with nothing attached it attaches. SIGHUP reloads the policy file (a bad one is
reported and changes nothing); SIGTERM and SIGINT end the process and leave protection
in place (`shieldwall down` removes it).
"""

from __future__ import annotations

import hashlib
import signal
import threading
from pathlib import Path

from ..config import load_config
from ..engine import lifecycle
from ..kernel.errors import BpfError
from ..policy.errors import PolicyError
from .events import EventHub, EventReader


def _say(text: str) -> None:
    print(text, flush=True)


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


def reload(iface: str, path: Path) -> str:
    try:
        result = lifecycle.reload(iface, lifecycle.proposal(load_config(path), path, "reload"))
    except (PolicyError, BpfError, OSError, ValueError) as exc:
        return f"reload refused, the policy in force stays: {exc}"
    return f"reloaded {iface}: revision {result.revision} in force"


def run(iface: str, path: Path, mode: str = "auto", metrics: str | None = None) -> int:
    _say(start(iface, path, mode))
    hub = EventHub()  # the ring's one consumer: readers subscribe here
    reader = EventReader(iface, hub, _say)
    reading = reader.start()
    stop, hup = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: (hup.set(), stop.set()))
    server = None
    # -- automatic mitigation (ops/mitigate.py): a thread of its own on the hub
    from .mitigate import daemon_view, mitigation_task
    view = daemon_view(iface, path, hub if reading else None, _say)
    mitigation = mitigation_task(view)
    # --
    if metrics:
        from prometheus_client import start_http_server
        from .metrics import status_reports
        from .serve import parse_listen, registry
        addr, port = parse_listen(metrics)
        served = registry(status_reports(iface))
        if mitigation is not None:
            from .mitigate import MitigationCollector
            served.register(MitigationCollector(mitigation))
        server, _ = start_http_server(port, addr=addr, registry=served)
        _say(f"metrics at http://{metrics}/metrics")
    try:
        while True:
            stop.wait()
            if not hup.is_set():
                break
            hup.clear()
            stop.clear()
            line = reload(iface, path)
            _say(line)
            if mitigation is not None and line.startswith("reloaded"):
                view.reloaded()
    finally:
        view.stop()
        reader.stop()
        if server is not None:
            server.shutdown()
    _say(f"stopping; {iface} stays protected (shieldwall down --iface {iface} removes it)")
    return 0
