"""Prefixes as written in a policy, and the files prefix sets are read from.

A set file is either a plain list (one address or prefix per line; `#` starts a comment;
blank lines are ignored) or a Tor network-status consensus document, recognised by its
`network-status-version 3` line, from which the relays' addresses are taken. Problems in
a file are reported as `file:line: problem`, with the file as the policy names it: every
bad line up to MAX_REPORTED, each quoting no more than 80 characters of the line.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

from .errors import Invalid, quote
from .files import NotReadable, read_bounded
from .model import Network

# A million prefixes in a consensus document take about 250 MiB at most.
MAX_SET_FILE_BYTES = 256 << 20
MAX_REPORTED = 20


def parse_prefix(text: str) -> Network:
    """An IPv4 or IPv6 prefix, or an address (a /32 or /128).

    Host bits must be clear: `192.0.2.1/24` is almost always a typo for either the
    address or the network, and guessing would silently widen or narrow a rule.
    IPv4-mapped IPv6 prefixes are refused because the data plane stores IPv4 addresses
    in exactly that form and could not tell them from the IPv4 prefix.
    """
    text = text.strip()
    fast = _parse_plain_prefix(text)
    if fast is not None:
        return fast
    if "%" in text:
        raise Invalid(f"{quote(text)}: scoped addresses (with %zone) are not supported")
    bare = text if len(text) <= 80 else quote(text)  # a valid prefix is short, but for zeros
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise Invalid(f"{quote(text)} is not an IPv4 or IPv6 address or prefix") from None
        raise Invalid(f"{bare} has host bits set: the network is {loose}") from None
    if net.version == 6 and net.prefixlen >= 96 and int(net.network_address) >> 32 == 0xFFFF:
        v4 = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
        raise Invalid(f"{bare} is IPv4-mapped: write it as {v4}")
    return net


_FAMILIES = ((socket.AF_INET, ipaddress.IPv4Network, 32), (socket.AF_INET6, ipaddress.IPv6Network, 128))


def _parse_plain_prefix(text: str) -> Network | None:
    """The common, valid case through the C parser (sets hold up to a million prefixes,
    and ipaddress parses strings slowly); None sends anything unusual to parse_prefix's
    careful path, which also words the errors."""
    addr, slash, length = text.partition("/")
    family, network, max_len = _FAMILIES[":" in addr]
    try:
        value = int.from_bytes(socket.inet_pton(family, addr), "big")
    except OSError:
        return None
    if slash:
        # isdigit() alone takes '²', and int() refuses thousands of digits.
        if not (length.isascii() and length.isdigit() and len(length) <= 3) or int(length) > max_len:
            return None
        bits = int(length)
    else:
        bits = max_len
    if value & ((1 << (max_len - bits)) - 1) or (max_len == 128 and value >> 32 == 0xFFFF):
        return None  # host bits set, or IPv4-mapped: let the careful path explain
    return network((value, bits))


def read_set_file(path: Path, shown: str) -> list[Network]:
    """The prefixes in a set file; `shown` is the file's name as the policy gives it."""
    try:
        data = read_bounded(path, MAX_SET_FILE_BYTES)
    except OSError as err:
        raise Invalid(f"cannot read {shown}: {err.strerror or err}") from None
    except NotReadable as err:
        raise Invalid(f"cannot read {shown}: {err}") from None
    lines = _text_lines(data)
    problems = _Problems(shown)
    flavor = _consensus_flavor(lines)
    if flavor is not None:
        found = _consensus_addresses(lines, shown, flavor, problems)
    else:
        found = _listed_prefixes(lines, problems)
    problems.raise_any()
    return found


class _Problems:
    """The bad lines of one file: all are counted, the first MAX_REPORTED told."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.told: list[str] = []
        self.count = 0

    def add(self, number: int, problem: str) -> None:
        self.count += 1
        if self.count <= MAX_REPORTED:
            self.told.append(f"{self.shown}:{number}: {problem}")

    def raise_any(self) -> None:
        if not self.count:
            return
        more = self.count - len(self.told)
        tail = (f"{self.shown}: and {more} more bad lines",) if more else ()
        raise Invalid(self.told[0], more=(*self.told[1:], *tail))


_NOT_UTF8 = "\0not UTF-8"  # a line no file can hold (NUL is not text either)


def _text_lines(data: bytes) -> list[str]:
    """The file's lines; a line that is not UTF-8 becomes _NOT_UTF8, to be told as such."""
    # Split on newlines alone (not str.splitlines(), which also splits on \f or \x85):
    # line numbers must be an editor's.
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        pass
    return [_decoded(line) for line in data.split(b"\n")]


def _decoded(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return _NOT_UTF8


def _listed_prefixes(lines: list[str], problems: _Problems) -> list[Network]:
    prefixes = []
    for number, line in enumerate(lines, start=1):
        if line is _NOT_UTF8:
            problems.add(number, "not UTF-8 text")
            continue
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            prefixes.append(parse_prefix(entry))
        except Invalid as err:
            problems.add(number, err.problem)
    return prefixes


def _consensus_flavor(lines: list[str]) -> str | None:
    """'ns' or 'microdesc' for a version 3 consensus, None for anything else."""
    for line in lines:
        words = line.split()
        if words[:2] == ["network-status-version", "3"]:
            return words[2] if len(words) > 2 else "ns"
    return None


# "r" line fields: the full consensus has a descriptor digest that the microdescriptor
# flavor leaves out; the address is followed by ORPort and DirPort in both.
_R_FIELDS = {"ns": 9, "microdesc": 8}
_OR_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^]]+)\]|(?P<v4>[^:]+)):[0-9]+$")


def _consensus_addresses(lines: list[str], shown: str, flavor: str,
                         problems: _Problems) -> list[Network]:
    """Relay addresses: the IPv4 address of each `r` line and each `a` line's address."""
    if flavor not in _R_FIELDS:
        raise Invalid(f"{shown}: unsupported consensus flavor {quote(flavor)}")
    addresses: list[Network] = []
    for number, line in enumerate(lines, start=1):
        if line is _NOT_UTF8:
            problems.add(number, "not UTF-8 text")
            continue
        words = line.split()
        if not words or words[0] not in ("r", "a"):
            continue
        if words[0] == "r":
            expected = _R_FIELDS[flavor]
            if len(words) != expected:
                problems.add(number, f"malformed r line: expected {expected} fields")
                continue
            host = words[-3]
        else:
            found = _OR_ADDRESS.match(words[1]) if len(words) == 2 else None
            if found is None:
                problems.add(number, "malformed a line: expected 'a [address]:port'")
                continue
            host = found["v6"] or found["v4"]
        try:
            addresses.append(parse_prefix(host))
        except Invalid as err:
            problems.add(number, err.problem)
    return addresses
