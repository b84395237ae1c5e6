"""Table images: the u32 entries of a program's table (one map value, bpf/lib/table.h),
built in Python and written in one update.

Entry 0 is reserved and holds 0, so an offset of 0 can mean "none" in any table.
"""

from __future__ import annotations

from array import array
from typing import Iterable


class TableImage:
    """A growing array of u32 entries; regions are appended and addressed by offset."""

    def __init__(self, reserve: bool = True) -> None:
        self.entries = array("I", [0] if reserve else [])

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, values: Iterable[int]) -> int:
        """Appends values; returns the offset of the first."""
        base = len(self.entries)
        self.entries.extend(values if isinstance(values, array) else array("I", values))
        return base

    def align(self, unit: int) -> None:
        """Pads so the next region starts at a multiple of unit."""
        self.entries.extend(array("I", bytes(4 * (-len(self.entries) % unit))))

    def value(self) -> bytes:
        """The map value: every entry, at least one."""
        return self.entries.tobytes() if self.entries else bytes(4)

    @property
    def bytes(self) -> int:
        return max(4, 4 * len(self.entries))
