"""Table images: the u32 entries of a struct sw_tab_chunk array map, built in Python and
written in one batch (bpf/lib/table.h reads them).

Entry 0 is reserved and holds 0, so an offset of 0 can mean "none" in any table.
"""

from __future__ import annotations

from array import array
from typing import Iterable

from .. import abi

CHUNK = abi.SW_TAB_CHUNK


class TableImage:
    """A growing array of u32 entries; regions are appended and addressed by offset."""

    def __init__(self) -> None:
        self.entries = array("I", [0])

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

    def chunks(self) -> tuple[int, bytes, bytes]:
        """(chunk count, keys, values) for a batch update of the whole map."""
        count = max(1, -(-len(self.entries) // CHUNK))
        values = self.entries.tobytes() + bytes(4 * (count * CHUNK - len(self.entries)))
        return count, array("I", range(count)).tobytes(), values

    @property
    def bytes(self) -> int:
        return max(1, -(-len(self.entries) // CHUNK)) * CHUNK * 4
