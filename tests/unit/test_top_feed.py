"""Unit tier: when a daemon serves the interface, `top` takes the drop events from the
daemon's control API (`GET /events`, NDJSON), never from the ring the daemon consumes.
A server on a unix socket here answers as the daemon does (`/ping`, `/events`)."""

from __future__ import annotations

import http.server
import importlib.util
import json
import socket
import socketserver
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from shieldwall.ops import top
from shieldwall.ops.events import Event

IFACE = "eth7"


def _event(src: str, ts: float) -> Event:
    return Event(ts=ts, cpu=1, action="drop", reason="blocked", stage="limit", rule=None,
                 family=4, src=src, dst="192.0.2.1", proto=17, sport=4000, dport=53,
                 tcp_flags=0, frame_len=60, data=b"\x00\x01", every=1, lost=3)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ping":
            body = json.dumps({"iface": IFACE}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.server.asked.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Connection", "close")
        self.end_headers()
        now = time.time()
        for src in ("198.51.100.7", "198.51.100.7", "203.0.113.9"):
            self.wfile.write((json.dumps(_event(src, now).as_json()) + "\n").encode())
            self.wfile.flush()
        while not self.server.done.is_set():  # a stream stays open, with keepalive lines
            try:
                self.wfile.write(b"\n")
                self.wfile.flush()
            except OSError:
                return
            self.server.done.wait(0.1)

    def log_message(self, *args) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        sock, _ = self.socket.accept()
        return sock, ("unix", 0)


@pytest.fixture()
def daemon_api(tmp_path: Path, monkeypatch):
    path = tmp_path / "api.sock"
    server = _Server(str(path), _Handler)
    server.asked, server.done = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SHIELDWALL_API", str(path))
    monkeypatch.delenv("SHIELDWALL_DIRECT", raising=False)
    if importlib.util.find_spec("shieldwall.ops.client") is None:  # a build without the API
        monkeypatch.setitem(sys.modules, "shieldwall.ops.client", _client_stand_in())
    yield server
    server.done.set()
    server.shutdown()
    server.server_close()


def _client_stand_in() -> types.ModuleType:
    """What ops/client.py offers top (find, _Connection), for a build without it."""
    import http.client
    import os

    module = types.ModuleType("shieldwall.ops.client")

    class _Connection(http.client.HTTPConnection):
        def __init__(self, path: Path, timeout: float | None) -> None:
            super().__init__("localhost", timeout=timeout)
            self.unix_path = path

        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(os.fsencode(self.unix_path))

    def find(iface, netns=None):
        path = Path(os.environ["SHIELDWALL_API"])
        conn = _Connection(path, 2)
        conn.request("GET", "/ping")
        answer = json.loads(conn.getresponse().read())
        conn.close()
        return types.SimpleNamespace(path=path) if answer.get("iface") == iface else None

    module._Connection, module.find = _Connection, find
    return module


def test_events_come_from_the_daemon_when_one_serves_the_interface(daemon_api):
    feed = top.EventFeed(IFACE)
    try:
        assert feed.via == "the daemon" and feed.note is None
        deadline = time.monotonic() + 5
        while len(feed.recent(time.time())) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = top.top_sources(feed.recent(time.time()), time.time())
    finally:
        started = time.monotonic()
        feed.close()
        assert time.monotonic() - started < 2  # the blocked read is woken, not waited out
    assert daemon_api.asked == ["/events?action=drop"]
    assert [(s.src, s.packets, s.reason) for s in got] == [("198.51.100.7", 8, "blocked"),
                                                           ("203.0.113.9", 4, "blocked")]


def test_without_a_daemon_nor_a_ring_there_is_a_note(monkeypatch, tmp_path):
    monkeypatch.setenv("SHIELDWALL_API", str(tmp_path / "none.sock"))
    monkeypatch.setenv("SHIELDWALL_BPFFS", str(tmp_path / "bpffs"))
    feed = top.EventFeed(IFACE)
    feed.close()
    assert feed.via is None and feed.note.startswith("no drop events: "), feed.note
