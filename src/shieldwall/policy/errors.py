"""Errors of policy validation.

A problem is reported with the file it was found in, the path of the field inside the
policy (`rules[3].match.dport`, list indexes counted from 0) and what is wrong with it.
Validation goes on after a problem so one run reports as many as it can; the loader then
raises one PolicyError that carries all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Issue:
    """One problem: `file: path: problem` (the path is empty for file-level problems)."""

    file: str
    path: str
    problem: str

    def __str__(self) -> str:
        parts = [self.file, self.path, self.problem]
        return ": ".join(part for part in parts if part)


class PolicyError(Exception):
    """An invalid policy. Nothing of it may be applied.

    `file`, `path` and `problem` describe the first issue; `issues` holds all of them, in
    the order they were found. str() gives one line per issue.
    """

    def __init__(self, file: str, path: str, problem: str, *more: Issue) -> None:
        self.issues: tuple[Issue, ...] = (Issue(file, path, problem), *more)
        super().__init__(str(self))

    @classmethod
    def of(cls, issues: Iterable[Issue]) -> PolicyError:
        first, *rest = issues
        return cls(first.file, first.path, first.problem, *rest)

    @property
    def file(self) -> str:
        return self.issues[0].file

    @property
    def path(self) -> str:
        return self.issues[0].path

    @property
    def problem(self) -> str:
        return self.issues[0].problem

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


class Invalid(ValueError):
    """A value that does not parse, raised by the value parsers that know no paths.

    `at` is the part of the path below the value the parser was given (`[2]` for the
    third item of a list); the loader prefixes the field's own path. `more` holds further
    problems of the same value (the other bad lines of a set file), each its own issue.
    """

    def __init__(self, problem: str, at: str = "", more: tuple[str, ...] = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at
        self.more = more

    @property
    def problems(self) -> tuple[str, ...]:
        return (self.problem, *self.more)

    def within(self, at: str) -> Invalid:
        return Invalid(self.problem, at + self.at, self.more)


QUOTE_LIMIT = 80


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) for a message, cut after `limit` characters with an ellipsis: a message
    must never echo more than a glimpse of a file (a set file's line can be any size)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a number of {value.bit_length()} bits"  # str() of a huge int is slow or refused
    text = value if isinstance(value, str) else repr(value)
    cut = text[:limit]
    shown = repr(cut) if isinstance(value, str) else cut
    return shown + "..." if len(text) > limit else shown
