"""How long each change took and whether it failed, kept in the interface's records
(updates.json) so that every process that changes the interface (a CLI command, the
daemon) adds to the same figures, and `status` and the metrics read them back.

Per operation (up, reload, rollback, set, canary-start, ...): a cumulative histogram of
durations over BUCKETS, their sum, the failures, and the last change's duration, time,
revision and error. The file is rewritten whole (records.write_atomic) under an flock
of its own, after the change let go of the interface's lock.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from typing import Any, Callable, TypeVar

from .records import Records, private_dir, read_json, write_atomic

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FILE = "updates.json"

F = TypeVar("F", bound=Callable[..., Any])


def read(records: Records) -> dict[str, dict]:
    """op -> {count, failures, sum, buckets (cumulative counts), bounds (their upper
    bounds, in seconds), last}."""
    try:
        data = read_json(records.dir / FILE)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    ops = data.get("ops", {})
    for o in ops.values():
        o["bounds"] = data.get("buckets", list(BUCKETS))
    return ops


def add(records: Records, op: str, seconds: float, error: str | None,
        revision: int | None = None, now: float | None = None) -> None:
    private_dir(records.dir)
    lock = os.open(records.dir / ".updates.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ops = read(records)
        o = ops.setdefault(op, {"count": 0, "failures": 0, "sum": 0.0,
                                "buckets": [0] * len(BUCKETS)})
        o["count"] += 1
        o["failures"] += error is not None
        o["sum"] += seconds
        o.pop("bounds", None)
        o["buckets"] = [n + (seconds <= bound) for n, bound in zip(o["buckets"], BUCKETS)]
        o["last"] = {"seconds": round(seconds, 6), "at": time.time() if now is None else now,
                     "ok": error is None, "error": error, "revision": revision}
        write_atomic(records.dir / FILE, _dumps({"buckets": list(BUCKETS), "ops": ops}))
    finally:
        os.close(lock)


def _dumps(data: dict) -> bytes:
    import json
    return json.dumps(data, indent=1).encode()


def timed(op: str) -> Callable[[F], F]:
    """Records the duration and outcome of a change `fn(iface, ...)`. A failure to
    record never hides the change's own result or error."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(iface: str, *args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            error: str | None = None
            result = None
            try:
                result = fn(iface, *args, **kwargs)
                return result
            except BaseException as exc:
                error = (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
                raise
            finally:
                try:
                    records = Records(iface)
                    if records.dir.is_dir():  # no records for an interface never attached
                        add(records, op, time.monotonic() - start, error,
                            getattr(result, "revision", None))
                except Exception:  # noqa: BLE001 - bookkeeping must not mask the change
                    pass
        return run  # type: ignore[return-value]
    return wrap
