"""The validator every section of a policy file is checked with: it collects problems
with their field paths (so one run reports as many as it can), and resolves addresses
and `@set` references against the file's sets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

from .errors import Invalid, Issue, quote
from .model import SET_TYPES, AddrValue, Capacity, Network, PrefixSet
from .sets import parse_prefix, read_set_file
from .values import describe, sort_key, string, suggest

# Names of sets and segments.
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_SET_KEYS = ("type", "entries", "files")

T = TypeVar("T")


class Validator:
    def __init__(self, source: str, base_dir: Path, capacity: Capacity,
                 files: Mapping[str, Path] | None = None,
                 extra: Mapping[str, Iterable[Network]] | None = None) -> None:
        self.source = source
        # Entries a set holds beyond the file's: live entries compiled in (engine.livesets).
        self.extra = extra or {}
        self.base_dir = base_dir
        # Set files by the name the policy gives them, where they are read from
        # elsewhere (a stored revision's copies); others are found under base_dir.
        self.files = files or {}
        self.capacity = capacity
        self.issues: list[Issue] = []
        # None for a set that is defined but invalid: references to it are not
        # reported again as unknown.
        self.sets: dict[str, PrefixSet | None] = {}

    def report(self, path: str, problem: str) -> None:
        self.issues.append(Issue(self.source, path, problem))

    def check(self, path: str, parse: Callable[..., T], *args: Any) -> T | None:
        """parse(*args), or None after reporting its problem at path."""
        try:
            return parse(*args)
        except Invalid as err:
            for problem in err.problems:
                self.report(path + err.at, problem)
            return None

    def mapping(
        self, value: Any, path: str, keys: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict | None:
        """value if it is a mapping, after reporting its unknown and missing keys."""
        if not isinstance(value, dict):
            self.report(path, f"expected a mapping, got {describe(value)}")
            return None
        for key in value:
            if key not in keys:
                close = suggest(str(key), keys)
                hint = f"did you mean {close!r}?" if close else f"allowed: {', '.join(keys)}"
                self.report(path, f"unknown key {quote(key)} ({hint})")
        for key in required:
            if key not in value:
                self.report(path, f"missing key {key!r}")
        return value

    def sequence(self, value: Any, path: str) -> list:
        """value if it is a list; else [] after reporting it."""
        if not isinstance(value, list):
            self.report(path, f"expected a list, got {describe(value)}")
            return []
        return value

    def within_capacity(self, path: str, count: int, limit: int, what: str) -> bool:
        if count > limit:
            self.report(path, f"{count} {what}, more than the capacity of {limit}")
        return count <= limit

    # --- sets

    def file(self, shown: str) -> Path:
        return self.files.get(shown) or self.base_dir / shown

    def read_sets(self, value: Any) -> None:
        if not isinstance(value, dict):
            self.report("sets", f"expected a mapping of set names, got {describe(value)}")
            return
        for name, spec in value.items():
            if not isinstance(name, str) or not NAME.match(name):
                self.report("sets", f"invalid set name {quote(name)} (letters, digits, _ and -)")
                continue
            path = f"sets.{name}"
            self.sets[name] = self.prefix_set(name, spec, path)

    def prefix_set(self, name: str, value: Any, path: str) -> PrefixSet | None:
        errors = len(self.issues)
        spec = self.mapping(value, path, _SET_KEYS, required=("type",))
        if spec is None:
            return None
        if "type" in spec and spec["type"] not in SET_TYPES:
            problem = f"unknown set type {quote(spec['type'])} (supported: {', '.join(SET_TYPES)})"
            self.report(f"{path}.type", problem)
        prefixes: set[Network] = set()
        entries = self.sequence(spec.get("entries", []), f"{path}.entries")
        for index, entry in enumerate(entries):
            at = f"{path}.entries[{index}]"
            text = self.check(at, string, entry, "an address or prefix (quote IPv6 ones)")
            net = self.check(at, parse_prefix, text) if text is not None else None
            if net is not None:
                prefixes.add(net)
        files = []
        for index, entry in enumerate(self.sequence(spec.get("files", []), f"{path}.files")):
            at = f"{path}.files[{index}]"
            shown = self.check(at, string, entry, "a file name")
            if shown is not None:
                files.append(shown)
                prefixes.update(self.check(at, read_set_file, self.file(shown), shown) or ())
        prefixes.update(self.extra.get(name, ()))
        self.within_capacity(path, len(prefixes), self.capacity.set_entries, "entries")
        if len(self.issues) > errors:
            return None
        return PrefixSet(name, spec["type"], tuple(sorted(prefixes, key=sort_key)), tuple(files))

    def address(self, value: Any) -> AddrValue:
        """A literal address or prefix, or `@name` for a set."""
        text = string(value, "an address, a prefix or @set (quote IPv6 ones)").strip()
        if not text.startswith("@"):
            return parse_prefix(text)
        name = text[1:]
        if name not in self.sets:
            defined = ", ".join(self.sets) or "none"
            raise Invalid(f"unknown set {quote(name)} (defined sets: {defined})")
        found = self.sets[name]
        if found is None:
            raise Invalid(f"set {quote(name)} is invalid")
        return found
