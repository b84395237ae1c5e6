"""Interface and namespace names: checked as names, never trusted as paths.

Both become path components (/run/netns/NAME, <bpffs>/shieldwall/netns-NAME/IFACE), so a
name that the kernel or iproute2 would never create must not reach a path: `../x` would
walk out of the directory it is meant to stay in.
"""

from __future__ import annotations

IFNAMSIZ = 16     # the kernel's buffer for an interface name, its NUL included
NAME_MAX = 255    # one path component
# The bytes the kernel's isspace() accepts (lib/ctype.c), 0xa0 (no-break space) included.
_KERNEL_SPACE = frozenset(b" \t\n\v\f\r\xa0")


class BadName(ValueError):
    """A string that is not a valid interface or namespace name."""


def shown(name: str, limit: int = 40) -> str:
    """The name quoted for a message, cut short: it is user input of any length."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + "..."


def check_ifname(name: str) -> str:
    """An interface name as the kernel's dev_valid_name() accepts it: 1 to 15 bytes, not
    `.` or `..`, no `/`, `:` or white space (and no NUL, which would end it early)."""
    raw = name.encode("utf-8", "surrogateescape")
    problem = None
    if not raw:
        problem = "it is empty"
    elif len(raw) >= IFNAMSIZ:
        problem = f"it has {len(raw)} bytes, more than the kernel's {IFNAMSIZ - 1}"
    elif name in (".", ".."):
        problem = "'.' and '..' are directories, not interfaces"
    elif b"/" in raw or b":" in raw or b"\0" in raw or _KERNEL_SPACE & set(raw):
        problem = "it holds '/', ':', white space or NUL, which the kernel never allows"
    if problem:
        raise BadName(f"{shown(name)} is not an interface name: {problem}")
    return name


def check_netns_name(name: str) -> str:
    """A namespace name as `ip netns` accepts it: one path component (not empty, at most
    NAME_MAX bytes, no `/`, not `.` or `..`). The pins of a namespace live in a
    directory `netns-NAME`, which must fit in a component too."""
    raw = name.encode("utf-8", "surrogateescape")
    room = NAME_MAX - len("netns-")
    problem = None
    if not raw:
        problem = "it is empty"
    elif len(raw) > room:
        problem = f"it has {len(raw)} bytes, more than {room}"
    elif name in (".", ".."):
        problem = "'.' and '..' are directories, not namespaces"
    elif b"/" in raw or b"\0" in raw:
        problem = "it holds '/' or NUL: it would be a path, not a name"
    if problem:
        raise BadName(f"{shown(name)} is not a network namespace name: {problem}")
    return name
