"""The control API's HTTP side on a real unix socket: routes, errors as JSON with the
right status and never a traceback, bounded requests, and clients that cannot hold
it up (slow senders, huge bodies, bad JSON, too many connections). The service behind
it here answers from memory; the namespace test (tests/netns/test_api.py) runs it in
the daemon."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest

from shieldwall.dataplane.lock import LockTimeout
from shieldwall.dataplane.rootonly import UnsafePath
from shieldwall.ops import api
from shieldwall.ops.client import ApiFailure, Client
from shieldwall.ops.events import Event, EventHub
from shieldwall.policy.errors import PolicyError


def ev(ts: float, action: str, reason: str, rule: int | None, rule_name: str | None = None,
       src: str = "192.0.2.66") -> Event:
    return Event(ts=ts, cpu=0, action=action, reason=reason, stage="policy", rule=rule, family=4,
                 src=src, dst="203.0.113.1", proto=17, sport=4000, dport=53, tcp_flags=0,
                 frame_len=60, data=b"\x00" * 60, every=1, lost=0, rule_name=rule_name)


class Service:
    """What the daemon answers, from memory; `fail` makes the next change raise."""

    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.calls: list = []
        self.hub = EventHub()
        self.logged: list[str] = []

    def log(self, text: str) -> None:
        self.logged.append(text)

    def ping(self) -> dict:
        return {"iface": "sw0", "pid": os.getpid()}

    def status(self) -> dict:
        return {"status": [{"iface": "sw0", "attached": True}], "daemon": {}}

    def reload(self, **kw) -> dict:
        self.calls.append(("reload", kw))
        if self.fail:
            raise self.fail
        return {"iface": "sw0", "revision": 7}

    def set_list(self, name):
        return [{"set": name or "blocklist", "prefix": "192.0.2.1/32", "ttl_seconds": None}]

    def set_change(self, op, name, prefixes, ttl):
        self.calls.append((op, name, prefixes, ttl))
        if self.fail:
            raise self.fail
        return {"added": len(prefixes)}

    def subscribe(self):
        return self.hub.subscribe()

    def recent(self):
        return self.hub.recent()


@pytest.fixture()
def served(tmp_path):
    os.chmod(tmp_path, 0o700)
    service = Service()
    server = api.Server(service, api.Listener(tmp_path / "api.sock", default=False))
    server.start()
    try:
        yield service, server, Client(tmp_path / "api.sock")
    finally:
        server.stop()


def raw(path: Path, data: bytes, timeout: float = 5.0) -> tuple[int, dict]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(path))
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # answered and closed before all of it was sent: the answer is still there
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# -- parsing and routing, without a socket -------------------------------------------------

def test_targets_and_bodies_are_parsed_strictly():
    assert api.parse_target("/sets/?set=blocklist") == ("/sets", {"set": "blocklist"})
    assert api.parse_target("/") == ("/", {})
    with pytest.raises(api.ApiError) as bad:
        api.parse_target("/events?" + "&".join(f"a{i}=1" for i in range(40)))
    assert bad.value.status == 400
    assert api.parse_body(b"") == {}
    for body in (b"{", b"[1]", b"\"x\"", b"[" * 100_000):
        with pytest.raises(api.ApiError) as bad:
            api.parse_body(body)
        assert bad.value.status == 400


def test_routes_and_errors():
    service = Service()
    assert api.dispatch(service, api.Request("GET", "/ping"))[0] == 200
    assert api.dispatch(service, api.Request("GET", "/nothing")) == (
        404, {"error": "no such endpoint: /nothing", "exit": 2})
    assert api.dispatch(service, api.Request("GET", "/reload"))[0] == 405
    assert api.dispatch(service, api.Request("DELETE", "/events"))[0] == 405
    for exc, status, exit in ((PolicyError("p.yaml", "rules[0].match.dport", "out of range"), 400, 2),
                              (ValueError("no set 'x'"), 400, 2),
                              (LockTimeout("the lock is held"), 503, 2),
                              (UnsafePath("/run/x is a link"), 500, 2),
                              (KeyError("boom"), 500, 70)):
        service.fail = exc
        code, data = api.dispatch(service, api.Request("POST", "/reload", uid=0))
        assert (code, data["exit"]) == (status, exit), (exc, code, data)
        assert "Traceback" not in data["error"]
    service.fail = PolicyError("p.yaml", "rules[0].match.dport", "bad")
    assert "rules[0].match.dport" in api.dispatch(service, api.Request("POST", "/reload"))[1]["error"]


def test_a_policy_by_file_is_roots_and_by_text_names_files_beside_the_daemons():
    service = Service()
    ask = lambda body, uid: api.dispatch(service, api.Request("POST", "/reload", body=body, uid=uid))
    assert ask({"config": "/etc/shieldwall/x.yaml"}, 1000)[0] == 403
    assert ask({"config": "relative.yaml"}, 0)[0] == 400
    assert ask({"config": "/a.yaml", "policy": "version: 1"}, 0)[0] == 400
    assert ask({"config": 5}, 0)[0] == 400
    assert ask({"config": "/etc/shieldwall/x.yaml", "drop_live": True}, 0)[0] == 200
    assert service.calls[-1] == ("reload", {"config": Path("/etc/shieldwall/x.yaml"), "drop_live": True})
    code, data = ask({"policy": "version: 1\nsets: {a: {type: prefix, files: [/etc/shadow]}}\n"}, 1000)
    assert code == 400 and "/etc/shadow" in data["error"]
    assert ask({"policy": "version: 1\nsets: {a: {type: prefix, files: [../x]}}\n"}, 1000)[0] == 400
    assert ask({"policy": "version: [1\n"}, 1000)[0] == 400
    assert ask({"policy": "version: 1\nsets: {a: {type: prefix, files: [lists/a.txt]}}\n"}, 1000)[0] == 200
    assert ask({"drop_live": "yes"}, 0)[0] == 400
    doc = {"segments": {"a": {"file": "a.yaml"}}, "x": [{"files": ["b", 3]}]}
    assert sorted(api.file_names(doc)) == ["a.yaml", "b"]


def test_event_queries():
    events = [ev(1.0, "drop", "rule", 3, "web"), ev(2.0, "drop", "fastpath_deny", None),
              ev(3.0, "pass", "rule", 4, "dns")]
    pick = lambda q: [e.ts for e in events if api.event_query(q).wanted(e)]
    assert pick({}) == [1.0, 2.0, 3.0]
    assert pick({"reason": "rule"}) == [1.0, 3.0]
    assert pick({"rule": "web"}) == [1.0]
    assert pick({"rule": "4"}) == [3.0]
    assert pick({"action": "drop", "reason": "fastpath_deny"}) == [2.0]
    asked = api.event_query({"seconds": "2.5", "count": "10", "recent": "1"})
    assert (asked.seconds, asked.count, asked.recent) == (2.5, 10, True)
    for bad in ({"src": "x"}, {"action": "maybe"}, {"seconds": "-1"}, {"count": "many"},
                {"seconds": "inf"}):
        with pytest.raises(api.ApiError):
            api.event_query(bad)


# -- the socket ---------------------------------------------------------------------------

def test_the_socket_is_roots_alone_and_a_stale_one_is_replaced(tmp_path):
    os.chmod(tmp_path, 0o700)
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # nobody listens: a daemon that died left it
    listener = api.Listener(path, default=False)
    try:
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        with pytest.raises(api.SocketInUse):
            api.Listener(path, default=False)  # one answers there
    finally:
        listener.remove()
    assert not path.exists()


def test_a_group_socket_is_0660_with_that_group(tmp_path):
    os.chmod(tmp_path, 0o700)
    listener = api.Listener(tmp_path / "api.sock", group=4242, default=False)
    try:
        st = os.lstat(tmp_path / "api.sock")
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, 4242)
    finally:
        listener.remove()


def test_nothing_but_our_socket_is_removed_or_used(tmp_path):
    os.chmod(tmp_path, 0o700)
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    for name in ("file", "link"):
        with pytest.raises(UnsafePath):
            api.Listener(tmp_path / name, default=False)
    assert (tmp_path / "file").read_text() == "x" and (tmp_path / "link").is_symlink()
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(UnsafePath):
        api.Listener(open_dir / "api.sock", default=False)  # others could swap it
    with pytest.raises(ValueError):
        api.Listener(tmp_path / ("x" * 120), default=False)


def test_default_dirs_are_made_root_only_and_passable_for_a_group(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIELDWALL_LOCK", str(tmp_path / "run" / "lock"))
    path = api.default_path("sw0", "netns-lab")
    assert path == tmp_path / "run" / "api" / "netns-lab" / "sw0.sock"
    listener = api.Listener(path)
    listener.remove()
    for d in (tmp_path / "run", path.parent.parent, path.parent):
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700, d
    listener = api.Listener(path, group=4242)
    listener.remove()
    for d in (tmp_path / "run", path.parent.parent, path.parent):
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o711, d


def test_requests_over_the_socket(served):
    service, server, client = served
    assert client.call("GET", "/ping")["iface"] == "sw0"
    assert client.call("GET", "/sets?set=allow")[0]["set"] == "allow"
    assert client.call("POST", "/sets/add", {"set": "blocklist", "prefixes": ["192.0.2.9"],
                                             "ttl": "90s"}) == {"added": 1}
    assert service.calls[-1] == ("add", "blocklist", ["192.0.2.9"], "90s")
    with pytest.raises(ApiFailure) as failed:
        client.call("POST", "/sets/del", {"set": "blocklist", "prefixes": ["x"], "ttl": "1s"})
    assert "del takes no ttl" in str(failed.value)
    service.fail = RuntimeError("the lock is broken")
    with pytest.raises(ApiFailure) as failed:
        client.call("POST", "/sets/add", {"set": "b", "prefixes": ["192.0.2.9"]})
    assert str(failed.value) == "the lock is broken" and failed.value.exit == 2
    assert any("the lock is broken" in line for line in service.logged)  # a 5xx is logged
    service.fail = None
    client.call("POST", "/sets/add", {"set": "b\nforged: line", "prefixes": ["192.0.2.9"]})
    assert service.logged[-1] == ('api: POST /sets/add by uid 0: done {"prefixes": ["192.0.2.9"], '
                                  '"set": "b\\nforged: line"}')
    status, data = raw(server.listener.path, b"GET http://[::1/x HTTP/1.0\r\n\r\n")
    assert status == 400 and "error" in data


def test_bad_requests_get_json_errors(served):
    _, server, client = served
    path = server.listener.path
    status, data = raw(path, b"POST /reload HTTP/1.0\r\nContent-Length: 3\r\n\r\n{x}")
    assert status == 400 and data["error"] == "the body is not JSON"
    status, data = raw(path, b"POST /reload HTTP/1.0\r\nContent-Length: 999999999\r\n\r\n")
    assert status == 413  # refused before a byte of it is read
    status, data = raw(path, b"POST /reload HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert status == 411
    status, data = raw(path, b"GARBAGE\r\n\r\n")
    assert status == 400 and "error" in data
    status, data = raw(path, b"BREW /reload HTTP/1.0\r\n\r\n")
    assert status == 501 and "error" in data
    status, data = raw(path, b"GET /x HTTP/1.0\r\n" + b"X: y\r\n" * 200 + b"\r\n")
    assert status == 431 and "error" in data
    assert client.call("GET", "/ping")["iface"] == "sw0"  # and it goes on


def test_slow_and_many_clients_cannot_hold_it_up(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "REQUEST_SECONDS", 1.0)
    monkeypatch.setattr(api, "MAX_CONNECTIONS", 4)
    os.chmod(tmp_path, 0o700)
    server = api.Server(Service(), api.Listener(tmp_path / "api.sock", default=False))
    server.start()
    client = Client(tmp_path / "api.sock")
    try:
        # Three slowloris connections: a byte now and then, never a whole request.
        slow = []
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(tmp_path / "api.sock"))
            s.sendall(b"GET /ping HTTP/1.0\r\nX-Slow: ")
            slow.append(s)
        started = time.monotonic()
        assert client.call("GET", "/ping")["iface"] == "sw0"  # the fourth slot
        assert time.monotonic() - started < 0.5
        # A fifth connection while four are held: answered 503 at once, not queued. The
        # fourth slow one is held once the ping's thread has given its slot back (until
        # then it is itself the one refused: then it tries again).
        for _ in range(50):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(tmp_path / "api.sock"))
            s.sendall(b"GET")
            s.settimeout(0.1)
            try:
                refused = s.recv(100)
            except socket.timeout:
                break  # held
            s.close()
            assert refused.startswith(b"HTTP/1.0 503")
        status, data = raw(tmp_path / "api.sock", b"GET /ping HTTP/1.0\r\n\r\n")
        assert status == 503 and "too many" in data["error"]
        s.close()
        # The slow ones are cut off at the deadline, whatever they still send.
        time.sleep(1.3)
        for s in slow:
            s.settimeout(1.0)
            try:
                s.sendall(b"a")
                assert s.recv(10) == b""
            except OSError:
                pass
            s.close()
        assert client.call("GET", "/ping")["iface"] == "sw0"
    finally:
        server.stop()


def test_events_stream_as_ndjson_with_filters(served):
    service, server, _ = served
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(server.listener.path))
    s.sendall(b"GET /events?reason=rule HTTP/1.0\r\n\r\n")
    deadline = time.monotonic() + 5
    while not service.hub._subs and time.monotonic() < deadline:
        time.sleep(0.01)
    service.hub.publish([ev(1.0, "drop", "rule", 3, src="192.0.2.66"),
                         ev(2.0, "drop", "fastpath_deny", None, src="198.51.100.1"),
                         ev(3.0, "pass", "rule", 3, src="192.0.2.2")])
    got = b""
    while got.count(b"\n{") < 2 or not got.endswith(b"\n"):
        got += s.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"application/x-ndjson" in head
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    assert [e["ts"] for e in lines] == [1.0, 3.0]
    s.close()
    deadline = time.monotonic() + 10
    while service.hub._subs and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not service.hub._subs  # a client gone: its subscription is closed


def test_events_without_a_hub_are_refused(served):
    service, server, client = served
    service.subscribe = lambda: (_ for _ in ()).throw(api.ApiError(503, "events: no hub"))
    with pytest.raises(ApiFailure) as failed:
        client.call("GET", "/events")
    assert "no hub" in str(failed.value)
    with pytest.raises(ApiFailure):
        client.call("GET", "/events?bogus=1")


def test_the_client_reads_the_event_stream(served):
    service, server, client = served
    got: list = []

    def read() -> None:
        for event in client.stream("/events?action=drop"):
            got.append(event)
            if len(got) == 2:
                break
    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 5
    while not service.hub._subs and time.monotonic() < deadline:
        time.sleep(0.01)
    service.hub.publish([ev(1.0, "pass", "rule", 3), ev(2.0, "drop", "rule", 3)])
    service.hub.publish([ev(3.0, "drop", "fastpath_deny", None)])
    reader.join(timeout=5)
    assert [e["ts"] for e in got] == [2.0, 3.0]
    with pytest.raises(ApiFailure) as refused:
        next(client.stream("/events?colour=red"))
    assert "unknown parameter 'colour'" in str(refused.value)


def test_groups_by_name_or_number():
    assert api.parse_group("root") == 0 and api.parse_group("4242") == 4242
    with pytest.raises(ValueError) as bad:
        api.parse_group("no-such-group-here")
    assert "no such group" in str(bad.value)


def test_events_end_after_a_count_or_seconds_or_at_once_with_the_recent_ones(served):
    service, server, client = served
    service.hub.publish([ev(float(i), "drop", "rule", 3) for i in range(5)])
    assert [e["ts"] for e in client.stream("/events?recent=1&count=2")] == [3.0, 4.0]
    assert [e["ts"] for e in client.stream("/events?recent=1&reason=fastpath_deny")] == []
    started = time.monotonic()
    assert list(client.stream("/events?seconds=0.5")) == []
    assert 0.4 < time.monotonic() - started < 3
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(client.stream("/events?count=2")))
    reader.start()
    deadline = time.monotonic() + 5
    while not service.hub._subs and time.monotonic() < deadline:
        time.sleep(0.01)
    service.hub.publish([ev(float(i), "drop", "rule", 3) for i in range(10, 15)])
    reader.join(timeout=5)
    assert [e["ts"] for e in got] == [10.0, 11.0]


def test_the_command_line_trusts_only_roots_socket_in_roots_directory(tmp_path, monkeypatch):
    from shieldwall.ops.client import find
    os.chmod(tmp_path, 0o700)
    monkeypatch.setenv("SHIELDWALL_API", str(tmp_path / "api.sock"))
    assert find("sw0") is None  # nothing there: directly
    server = api.Server(Service(), api.Listener(tmp_path / "api.sock", default=False))
    server.start()
    try:
        assert find("sw0") is not None
        assert find("sw1") is None  # a daemon of another interface
        monkeypatch.setenv("SHIELDWALL_DIRECT", "1")
        assert find("sw0") is None
        monkeypatch.delenv("SHIELDWALL_DIRECT")
        os.chmod(tmp_path, 0o777)  # anyone could have swapped it
        assert find("sw0") is None
        os.chmod(tmp_path, 0o700)
        os.chown(tmp_path / "api.sock", 65534, -1, follow_symlinks=False)
        assert find("sw0") is None
    finally:
        server.stop()
    (tmp_path / "link.sock").symlink_to(tmp_path / "api.sock")
    monkeypatch.setenv("SHIELDWALL_API", str(tmp_path / "link.sock"))
    assert find("sw0") is None


def test_event_streams_leave_room_for_requests(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "MAX_STREAMS", 2)
    os.chmod(tmp_path, 0o700)
    server = api.Server(Service(), api.Listener(tmp_path / "api.sock", default=False))
    server.start()
    client = Client(tmp_path / "api.sock")
    try:
        held = []
        for _ in range(2):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(tmp_path / "api.sock"))
            s.sendall(b"GET /events HTTP/1.0\r\n\r\n")
            assert s.recv(12) == b"HTTP/1.0 200"
            held.append(s)
        with pytest.raises(ApiFailure) as refused:
            next(client.stream("/events"))
        assert "2 event streams are open already" in str(refused.value)
        assert client.call("GET", "/ping")["iface"] == "sw0"
        assert list(client.stream("/events?recent=1")) == []  # the recent window is no stream
        held.pop().close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                next(client.stream("/events?seconds=0.2"), None)
                break
            except ApiFailure:
                time.sleep(0.2)  # the closed one is found out at its next write
        else:
            raise AssertionError("a stream's slot was never given back")
        for s in held:
            s.close()
    finally:
        server.stop()
