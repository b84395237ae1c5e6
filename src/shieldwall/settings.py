"""Settings a test run (or an operator) gives through the environment."""

from __future__ import annotations

import os


def env_seconds(name: str, default: float, zero: bool = False) -> float:
    """A number of seconds from $name (above 0, or 0 and more with `zero`), `default` when
    unset; a value that is none is refused with its name, not taken for the default."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    least_ok = seconds >= 0 if zero else seconds > 0
    if not least_ok or seconds == float("inf"):
        raise ValueError(f"{name}={text[:40]!r}: expected a number of seconds "
                         + ("(0 or more)" if zero else "above 0"))
    return seconds
