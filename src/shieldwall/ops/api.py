"""The daemon's control API: JSON over HTTP on a unix socket (docs/operations.md, "The
control API").

One request per connection (HTTP/1.0, `Connection: close`); every answer is a JSON
object, errors `{"error": MESSAGE, "exit": CODE}` with an HTTP status that says what
kind of problem it is (the exit code is what the same command run directly exits
with). `GET /events` is the one stream: NDJSON, one event a line.

Who may talk to it is decided by the socket file alone: 0600 root's by default, 0660
with the group of `--api-group`. It is made where nobody else can make or replace
anything (a root-only directory, checked), with a umask that leaves it 0600 from the
instant it exists, and removed on exit only if it is still the socket this process
made.

A client cannot hold the daemon up: each connection has its own thread, a deadline for
sending its request (slow senders are cut off), a bounded request (line, headers,
body), and there are at most MAX_CONNECTIONS at a time (more are answered 503 at once).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import socketserver
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ..dataplane import lock
from ..dataplane.rootonly import UnsafePath, check_dir, make_dir, trusted_owner
from ..kernel.errors import BpfError, VerifierError
from ..kernel.names import check_ifname
from ..policy.errors import PolicyError

# A policy is a few kilobytes of YAML (large data lives in set files); 4 MiB is ample.
MAX_BODY = 4 << 20
# Seconds a client has to send its whole request, and to wait for each piece of it.
REQUEST_SECONDS = 15.0
READ_SECONDS = 5.0
MAX_CONNECTIONS = 64
# Event streams last; fewer of them than connections, so requests always find room.
MAX_STREAMS = 16
# An idle event stream gets an empty line this often: a client that went away is found
# out (and its thread ends) even when no event comes.
KEEPALIVE_SECONDS = 5.0
SUN_PATH_MAX = 107  # struct sockaddr_un's sun_path, its NUL excluded


class ApiError(Exception):
    """A request the API refuses, with its HTTP status."""

    def __init__(self, status: int, message: str, exit: int = 2) -> None:
        super().__init__(message)
        self.status = status
        self.exit = exit


class SocketInUse(RuntimeError):
    """The API's path is a live daemon's socket."""


# -- where the socket lives ----------------------------------------------------------------

def api_dir() -> Path:
    """<the lock's directory>/api: /run/shieldwall/api, or beside $SHIELDWALL_LOCK (a
    test run's own), so that the daemon and the command line agree on it."""
    return lock.lock_file().parent / "api"


def default_path(iface: str, scope: str) -> Path:
    """One socket per interface and network namespace scope (bpffs.netns_scope()):
    /run/shieldwall/api/host/eth1.sock, /run/shieldwall/api/netns-NS/veth0.sock."""
    return api_dir() / scope / f"{check_ifname(iface)}.sock"


def parse_group(text: str) -> int:
    """A group name or number (ValueError naming it when there is no such group)."""
    import grp
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"--api-group {text!r}: no such group") from None


class Listener:
    """The listening socket, made safely (see the module's doc), and its removal."""

    def __init__(self, path: Path, group: int | None = None, default: bool = True) -> None:
        self.path = path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ValueError(f"--api {path}: a unix socket's path has at most {SUN_PATH_MAX} bytes")
        self._dirs(default, group is not None)
        self._clear()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # umask, not chmod after bind: there is no instant when the socket is more open
        # than 0600. The umask is the process's; it only ever takes permissions away.
        old = os.umask(0o177)
        try:
            sock.bind(os.fsencode(path))
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        st = os.lstat(path)
        self.identity = (st.st_dev, st.st_ino)
        if group is not None:
            try:
                os.chown(path, -1, group, follow_symlinks=False)
            except PermissionError:
                sock.close()
                os.unlink(path)
                raise PermissionError(errno.EPERM, f"giving {path} to group {group} needs "
                                      "CAP_CHOWN (add it to the unit's CapabilityBoundingSet)") from None
            os.chmod(path, 0o660)
        sock.listen(MAX_CONNECTIONS)
        self.socket = sock

    def _dirs(self, default: bool, group: bool) -> None:
        fix = (f"the control API's socket goes only in a directory only root can change; "
               f"choose another --api path or fix {self.path.parent}'s owner and mode")
        if not default:
            check_dir(self.path.parent, fix=fix)
            return
        # /run/shieldwall (the lock's), /run/shieldwall/api, its scope: root's, 0700; a
        # group that may connect must be able to pass through them (0711: pass, not list).
        chain = [self.path.parent.parent.parent, self.path.parent.parent, self.path.parent]
        for step in chain:
            make_dir(step, fix=fix)
            if group:
                mode = stat.S_IMODE(os.lstat(step).st_mode)
                if mode & 0o011 != 0o011:
                    os.chmod(step, mode | 0o011)

    def _clear(self) -> None:
        """A socket left by a daemon that died goes; anything else is refused."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode) or not trusted_owner(st.st_uid):
            raise UnsafePath(f"{self.path} exists and is not a socket of root's: shieldwall "
                             f"removes only its own; look at what it is, remove it, start again")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(1.0)
        try:
            probe.connect(os.fsencode(self.path))
        except OSError:
            os.unlink(self.path)  # nobody listens: a daemon that is gone left it
            return
        finally:
            probe.close()
        raise SocketInUse(f"{self.path}: another daemon answers there (one daemon per "
                          "interface); stop it first")

    def remove(self) -> None:
        self.socket.close()
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self.identity:
            os.unlink(self.path)


# -- requests and routes -------------------------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    uid: int | None = None  # the peer's, from SO_PEERCRED

    @property
    def root(self) -> bool:
        return self.uid is not None and trusted_owner(self.uid)

    def text(self, name: str, required: bool = False) -> str | None:
        value = self.body.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: expected a non-empty string")
        return value

    def texts(self, name: str) -> list[str]:
        value = self.body.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: expected a list of strings")
        return value

    def flag(self, name: str) -> bool:
        value = self.body.get(name, False)
        if not isinstance(value, bool):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: expected true or false")
        return value


Handler = Callable[[Any, Request], Any]
ROUTES: dict[tuple[str, str], Handler] = {}


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES[(method, path)] = fn
        return fn
    return register


# Each route is one call of the service (the daemon, ops/daemon.py), which serializes
# changes and answers with plain JSON data.

@route("GET", "/ping")
def _ping(service: Any, req: Request) -> Any:
    return service.ping()


@route("GET", "/status")
def _status(service: Any, req: Request) -> Any:
    return service.status()


@route("POST", "/reload")
def _reload(service: Any, req: Request) -> Any:
    return service.reload(**_policy_of(req), drop_live=req.flag("drop_live"))


@route("GET", "/sets")
def _sets(service: Any, req: Request) -> Any:
    return service.set_list(req.query.get("set"))


@route("POST", "/sets/add")
def _set_add(service: Any, req: Request) -> Any:
    return service.set_change("add", req.text("set", True), req.texts("prefixes"), req.text("ttl"))


@route("POST", "/sets/del")
def _set_del(service: Any, req: Request) -> Any:
    if "ttl" in req.body:
        raise ApiError(HTTPStatus.BAD_REQUEST, "ttl: del takes no ttl")
    return service.set_change("del", req.text("set", True), req.texts("prefixes"), None)


@route("GET", "/blocks")
def _blocks(service: Any, req: Request) -> Any:
    return service.blocks_list()


@route("POST", "/blocks/del")
def _blocks_del(service: Any, req: Request) -> Any:
    return service.blocks_del(req.texts("prefixes"), req.flag("all"))


@route("POST", "/canary/start")
def _canary_start(service: Any, req: Request) -> Any:
    return service.canary_start(**_policy_of(req, required=True), share=req.text("share"),
                                src=req.text("src"))


@route("GET", "/canary")
def _canary(service: Any, req: Request) -> Any:
    return service.canary_status()


@route("POST", "/canary/promote")
def _canary_promote(service: Any, req: Request) -> Any:
    return service.canary_promote()


@route("POST", "/canary/abort")
def _canary_abort(service: Any, req: Request) -> Any:
    return service.canary_abort()


def _policy_of(req: Request, required: bool = False) -> dict[str, Any]:
    """A policy by the file's path (root's callers only: the daemon reads it as root)
    or by its text; neither: the daemon's own file."""
    config, text = req.text("config"), req.text("policy")
    if config and text:
        raise ApiError(HTTPStatus.BAD_REQUEST, "give config (a file) or policy (its text), not both")
    if config is not None:
        if not req.root:
            raise ApiError(HTTPStatus.FORBIDDEN, "config: only root may have the daemon read a "
                           "file; send the policy's text as policy")
        if not os.path.isabs(config):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"config: {config!r} is not an absolute path")
        return {"config": Path(config)}
    if text is not None:
        refs = [f for f in file_names(_yaml(text)) if os.path.isabs(f) or ".." in Path(f).parts]
        if refs:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"policy: a policy sent as text names its "
                           f"files relative to the daemon's policy, without '..' ({refs[0]!r})")
        return {"text": text}
    if required:
        raise ApiError(HTTPStatus.BAD_REQUEST, "config or policy: a policy is required")
    return {}


def _yaml(text: str) -> Any:
    from ..policy.errors import Invalid
    from ..policy.load import load_yaml
    try:
        return load_yaml(text)
    except Invalid as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"policy: {exc}") from None


def file_names(doc: Any) -> list[str]:
    """Every file a policy document names (`file:` and `files:` keys, at any depth)."""
    found: list[str] = []
    todo = [doc]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "files"):
                    found += [value] if isinstance(value, str) else [
                        v for v in value if isinstance(v, str)] if isinstance(value, list) else []
                todo.append(value)
        elif isinstance(node, list):
            todo.extend(node)
    return found


def dispatch(service: Any, req: Request) -> tuple[int, Any]:
    """A request's answer: (HTTP status, JSON data). Never raises; no traceback is ever
    part of an answer."""
    handler = ROUTES.get((req.method, req.path))
    if handler is None:
        if any(path == req.path for _, path in ROUTES) or req.path == "/events":
            return error(ApiError(HTTPStatus.METHOD_NOT_ALLOWED,
                                  f"{req.method} is not a method of {req.path}"))
        return error(ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint: {req.path[:80]}"))
    try:
        return HTTPStatus.OK, handler(service, req)
    except Exception as exc:  # every failure becomes an answer
        return error(exc)


def error(exc: BaseException) -> tuple[int, dict]:
    """An exception as the API answers it; the message is what the command line would
    print after `shieldwall: `."""
    from ..dataplane.lock import LockTimeout
    if isinstance(exc, ApiError):
        return exc.status, {"error": str(exc), "exit": exc.exit}
    if isinstance(exc, VerifierError):
        return HTTPStatus.UNPROCESSABLE_ENTITY, {
            "error": f"{exc.what}: {exc.strerror.splitlines()[0]}\nverifier log (end):\n{exc.detail}",
            "exit": 3}
    if isinstance(exc, LockTimeout):
        return HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc), "exit": 2}
    if isinstance(exc, (PolicyError, ValueError)):
        return HTTPStatus.BAD_REQUEST, {"error": str(exc), "exit": 2}
    if isinstance(exc, (BpfError, OSError, RuntimeError)):
        return HTTPStatus.CONFLICT if getattr(exc, "errno", None) in (
            errno.EBUSY, errno.ENOENT, errno.ESTALE) else HTTPStatus.INTERNAL_SERVER_ERROR, {
            "error": str(exc), "exit": 2}
    return HTTPStatus.INTERNAL_SERVER_ERROR, {
        "error": f"internal error ({type(exc).__name__}: {exc})", "exit": 70}


def parse_target(target: str) -> tuple[str, dict[str, str]]:
    """A request target's path and its query (one value per name, at most 16 names)."""
    parts = urlsplit(target)
    try:
        query = parse_qs(parts.query, max_num_fields=16, strict_parsing=False)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, "too many query parameters") from None
    return parts.path.rstrip("/") or "/", {k: v[-1] for k, v in query.items()}


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
    return body


@dataclass(frozen=True)
class EventQuery:
    """What a reader of `GET /events` asks: a filter (ops/events.py Filter: reason, rule
    by name or id, action), and when the stream ends: after `seconds`, after `count`
    events, or at once with `recent` (the daemon's window of recent events)."""

    wanted: Any
    seconds: float | None = None
    count: int | None = None
    recent: bool = False


def event_query(query: dict[str, str]) -> EventQuery:
    from .events import Filter
    unknown = set(query) - {"reason", "rule", "action", "seconds", "count", "recent"}
    if unknown:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"events: unknown parameter {sorted(unknown)[0]!r} "
                       "(reason, rule, action, seconds, count, recent)")
    if query.get("action") not in (None, "drop", "pass"):
        raise ApiError(HTTPStatus.BAD_REQUEST, "events: action is drop or pass")

    def number(name: str, kind: type) -> Any:
        if name not in query:
            return None
        try:
            value = kind(query[name])
        except ValueError:
            value = -1
        if not 0 < value < float("inf"):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"events: {name} is a positive number")
        return value
    return EventQuery(Filter(query.get("reason"), query.get("rule"), query.get("action")),
                      number("seconds", float), number("count", int),
                      query.get("recent", "0") not in ("0", "", "false"))


# -- the server ----------------------------------------------------------------------------

def peer_uid(sock: socket.socket) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", raw)[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    default_request_version = "HTTP/1.0"  # answers carry a status line, whatever was asked
    server_version = "shieldwall"
    sys_version = ""
    timeout = READ_SECONDS
    server: "Server"

    def setup(self) -> None:
        super().setup()
        # The whole request must arrive by then, however slowly it trickles in.
        self._deadline = threading.Timer(REQUEST_SECONDS, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._deadline.cancel()
        try:
            super().finish()
        except OSError:
            pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (OSError, ValueError):
            self.close_connection = True  # a client gone or cut off: nothing to answer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            path, query = parse_target(self.path)
            body = parse_body(self._body())
        except Exception as exc:  # whatever the request is, the answer is JSON
            self._answer(*error(exc))
            return
        self._deadline.cancel()  # the request is whole; a change may take its time
        req = Request(self.command, path, query, body, peer_uid(self.connection))
        if path == "/events" and self.command == "GET":
            self._events(req)
            return
        status, data = dispatch(self.server.service, req)
        if status >= 500:
            self.server.service.log(f"api: {self.command} {path}: {data.get('error', '')}".splitlines()[0])
        elif self.command != "GET" and status == HTTPStatus.OK:
            # Who changed what, for the log: the peer's uid, the endpoint, the body's names.
            # As JSON: whatever a caller puts in its body stays on one line of the log.
            what = json.dumps({k: v for k, v in sorted(body.items()) if k != "policy"})
            self.server.service.log(f"api: {self.command} {path} by uid {req.uid}: done"
                                    + (f" {what[:200]}" if what != "{}" else ""))
        self._answer(status, data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        text = self.headers.get("Content-Length")
        if text is None:
            return b""
        if not text.strip().isdigit():
            raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
        length = int(text)
        if length > MAX_BODY:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"the body has {length} bytes; at most {MAX_BODY} are read")
        data = self.rfile.read(length)
        if len(data) < length:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body ended before its Content-Length")
        return data

    def _answer(self, status: int, data: Any) -> None:
        payload = (json.dumps(data) + "\n").encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client left

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, headers too long, ...), as JSON.
        self.close_connection = True
        self._answer(code, {"error": message or HTTPStatus(code).phrase, "exit": 2})

    def _events(self, req: Request) -> None:
        service = self.server.service
        try:
            asked = event_query(req.query)
            if not asked.recent and not self.server.streams.acquire(blocking=False):
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"{MAX_STREAMS} event streams are "
                               "open already; try again when one ends")
        except Exception as exc:
            self._answer(*error(exc))
            return
        try:
            self._stream_events(service, asked)
        finally:
            if not asked.recent:
                self.server.streams.release()

    def _stream_events(self, service: Any, asked: EventQuery) -> None:
        try:
            subscription = None if asked.recent else service.subscribe()
            recent = service.recent() if asked.recent else []
        except Exception as exc:
            self._answer(*error(exc))
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Connection", "close")
            self.end_headers()
            if subscription is None:
                found = [e for e in recent if asked.wanted(e)]
                found = found[-asked.count:] if asked.count else found
                self.wfile.write("".join(json.dumps(e.as_json()) + "\n" for e in found).encode())
                return
            given, quiet_since = 0, time.monotonic()
            deadline = time.monotonic() + asked.seconds if asked.seconds else None
            while not self.server.closing.is_set():
                wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if wait <= 0:
                    break
                found = [e for e in subscription.get(wait) if asked.wanted(e)]
                if asked.count is not None:
                    found = found[:asked.count - given]
                given += len(found)
                if found or time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                    self.wfile.write("".join(json.dumps(e.as_json()) + "\n" for e in found).encode()
                                     or b"\n")
                    self.wfile.flush()
                    quiet_since = time.monotonic()
                if asked.count is not None and given >= asked.count:
                    break
        except OSError:
            pass  # the client left
        finally:
            if subscription is not None:
                subscription.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not logged; failures are, by the service

    def address_string(self) -> str:
        return "unix"


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, service: Any, listener: Listener) -> None:
        super().__init__(str(listener.path), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener.socket
        self.listener = listener
        self.service = service
        self.closing = threading.Event()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(0.5)
                body = b'{"error": "too many connections to the control API; try again", "exit": 2}\n'
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys
        kind, exc = sys.exc_info()[:2]
        self.service.log(f"api: a request failed ({kind.__name__ if kind else '?'}: {exc})")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.5},
                                  name="api", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.closing.set()
        self.shutdown()
        self.listener.remove()
