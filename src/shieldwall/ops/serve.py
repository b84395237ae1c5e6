"""Serving the metrics over HTTP, in the foreground, until the process is stopped."""

from __future__ import annotations

import signal
import threading

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from .metrics import DoctorCache, Reports, StatusCollector, Verdicts


def registry(reports: Reports, verdicts: Verdicts | None = None) -> CollectorRegistry:
    """`verdicts`: the doctor's, by interface; by default a DoctorCache of this registry,
    so a server judges the host once per attach."""
    found = CollectorRegistry(auto_describe=False)
    found.register(StatusCollector(reports, verdicts or DoctorCache()))
    return found


def exposition(reports: Reports, verdicts: Verdicts | None = None) -> str:
    """One scrape, in Prometheus' text format."""
    return generate_latest(registry(reports, verdicts)).decode()


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT ([v6]:PORT for IPv6), or :PORT for every address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen: {text!r} is not ADDR:PORT (a port from 1 to 65535)")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(reports: Reports, listen: str, stop: threading.Event | None = None) -> None:
    """Serves /metrics at `listen` until SIGTERM or SIGINT (or `stop` is set)."""
    addr, port = parse_listen(listen)
    server, thread = start_http_server(port, addr=addr, registry=registry(reports))
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.shutdown()
        thread.join(timeout=5)
