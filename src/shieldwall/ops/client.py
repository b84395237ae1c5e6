"""The command line's side of the control API: when a daemon serves an interface,
`reload`, `set`, `blocks`, `canary` and `status` ask it (so changes are made one at a
time by the daemon, and what it reports is what the command prints); otherwise they
work directly. SHIELDWALL_DIRECT=1 always works directly; SHIELDWALL_API=PATH names a
socket other than the default one (ops/api.py default_path)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any, Iterator

# A change waits for the lock (30 s) and then builds and verifies a generation.
CALL_SECONDS = 180.0
PING_SECONDS = 2.0


class ApiFailure(RuntimeError):
    """The daemon refused or failed a request; `exit` is what the command exits with."""

    def __init__(self, message: str, exit: int = 2) -> None:
        super().__init__(message)
        self.exit = exit


class _Connection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fsencode(self.unix_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, method: str, target: str, body: dict | None = None,
             timeout: float = CALL_SECONDS) -> Any:
        conn = _Connection(self.path, timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload is not None else {}
            conn.request(method, target, body=payload, headers=headers)
            answer = conn.getresponse()
            raw = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ApiFailure(f"the daemon's control API at {self.path} did not answer: {exc}") from None
        finally:
            conn.close()
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiFailure(f"the daemon's control API at {self.path} answered no JSON "
                             f"(HTTP {answer.status})") from None
        if answer.status != 200:
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                raise ApiFailure(data["error"], int(data.get("exit") or 2))
            raise ApiFailure(f"the daemon answered HTTP {answer.status}")
        return data


    def stream(self, target: str, connect_timeout: float = PING_SECONDS) -> Iterator[dict]:
        """The JSON objects of an NDJSON stream (`GET /events?...`), as they come, until
        the daemon ends it; the empty lines it sends while idle are skipped."""
        conn = _Connection(self.path, connect_timeout)
        try:
            try:
                conn.request("GET", target)
                sock = conn.sock  # the response takes it over (one request per connection)
                answer = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise ApiFailure(f"the daemon's control API at {self.path} did not answer: {exc}") from None
            if answer.status != 200:
                try:
                    data = json.loads(answer.read())
                except ValueError:
                    data = {}
                raise ApiFailure(data.get("error") or f"the daemon answered HTTP {answer.status}",
                                 int(data.get("exit") or 2))
            sock.settimeout(None)  # events come when they come; idle lines keep it alive
            for line in answer:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()


def socket_path(iface: str, netns: str | None) -> Path:
    from ..dataplane.bpffs import netns_scope
    from .api import default_path
    if os.environ.get("SHIELDWALL_API"):
        return Path(os.environ["SHIELDWALL_API"])
    return default_path(iface, f"netns-{netns}" if netns else netns_scope())


def find(iface: str | None, netns: str | None = None) -> Client | None:
    """A client of the daemon serving this interface, if one runs and answers; None:
    work directly."""
    if not iface or os.environ.get("SHIELDWALL_DIRECT", "") not in ("", "0"):
        return None
    path = socket_path(iface, netns)
    if not _trusted(path):
        return None
    client = Client(path)
    try:
        answer = client.call("GET", "/ping", timeout=PING_SECONDS)
    except ApiFailure:
        return None  # a socket nobody answers on (a daemon that died), or not ours to use
    if not isinstance(answer, dict) or answer.get("iface") != iface:
        return None
    return client


def _trusted(path: Path) -> bool:
    """Whether path is a socket root made in a directory only root can change: what
    answers there is a daemon root started, not something another user put in its way
    (its changes would be believed, and its lies printed)."""
    from ..dataplane.rootonly import UnsafePath, check_dir, trusted_owner
    try:
        st = os.lstat(path)
        check_dir(path.parent)
    except (OSError, UnsafePath):
        return False
    return stat.S_ISSOCK(st.st_mode) and trusted_owner(st.st_uid)
