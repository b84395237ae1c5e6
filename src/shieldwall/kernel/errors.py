"""Exceptions of the kernel layer: each carries the errno and a readable message."""

from __future__ import annotations

import errno as _errno
import os


class BpfError(OSError):
    """A libbpf or bpf(2) call failed."""

    def __init__(self, err: int, what: str, detail: str = ""):
        err = abs(err) or _errno.EINVAL
        message = f"{what}: {os.strerror(err)} (errno {err})"
        if detail:
            message += f"\n{detail}"
        super().__init__(err, message)
        self.what = what
        self.detail = detail

    def __str__(self) -> str:
        return self.strerror


class VerifierError(BpfError):
    """The verifier rejected a program; `log` is the part of its log that matters."""

    def __init__(self, err: int, what: str, log: str):
        super().__init__(err, what, relevant_verifier_lines(log))
        self.log = log


def relevant_verifier_lines(log: str, tail: int = 25) -> str:
    """The end of a verifier log is where it says why; the start is register noise."""
    lines = [line for line in log.splitlines() if line.strip()]
    if len(lines) <= tail:
        return "\n".join(lines)
    return "\n".join(["..."] + lines[-tail:])
