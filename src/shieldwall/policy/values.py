"""Values of the policy language that any section may hold: numbers and ranges in a
domain, list fields with `!` negation, TCP flags, choices, verdicts and actions.

A parser raises Invalid with the problem (and, for list items, where below the value
it is); the validator adds the field path.
"""

from __future__ import annotations

import difflib
import re
from enum import Enum
from typing import Any, Callable, TypeVar

from .errors import Invalid, quote
from .model import (
    ACTIONS,
    TCP_FLAG_BITS,
    VERDICTS,
    ActionKind,
    Domain,
    Item,
    Items,
    Network,
    Range,
    TcpFlags,
    Verdict,
)

_RANGE = re.compile(r"^([0-9]*)\s*-\s*([0-9]*)$")
_NUMBER = re.compile(r"^[0-9]+$")
# More digits than any field's domain needs: refused before int() (which refuses
# more than 4300 digits with a message about Python, not about the policy).
_MAX_DIGITS = 20

T = TypeVar("T")
E = TypeVar("E", bound=Enum)


def describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {quote(value)}"
    if isinstance(value, int):
        return f"the number {quote(value)}"
    return f"a {type(value).__name__} ({quote(value)})"


def suggest(word: str, choices: tuple[str, ...]) -> str | None:
    """The choice the word most likely misspells, if any."""
    # Swapped letters first: difflib ranks `dprot` closer to proto than to dport.
    for choice in choices:
        if sorted(choice) == sorted(word):
            return choice
    close = difflib.get_close_matches(word, choices, n=1)
    return close[0] if close else None


def string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected {what}, got {describe(value)}")
    return value


def parse_range(value: Any, domain: Domain) -> Range:
    """A number, a name of the domain, or a range `a-b` (inclusive), `a-` or `-b`."""
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    else:
        text = string(value, f"a {domain.noun} or a range").strip()
        if any(len(digits) > _MAX_DIGITS for digits in re.findall(r"[0-9]+", text)):
            raise Invalid(f"{quote(text)} is too large for a {domain.noun}")
        if text.lower() in domain.names:
            lo = hi = domain.names[text.lower()]
        elif _NUMBER.match(text):
            lo = hi = int(text)
        else:
            found = _RANGE.match(text)
            if found is None or found[1] == found[2] == "":
                names = f", a name ({', '.join(domain.names)})" if domain.names else ""
                raise Invalid(f"{quote(text)} is not a {domain.noun}{names} or a range (a-b, a-, -b)")
            lo = int(found[1]) if found[1] else domain.lo
            hi = int(found[2]) if found[2] else domain.hi
    for number in (lo, hi):
        if not domain.lo <= number <= domain.hi:
            raise Invalid(f"{domain.noun} {quote(number)} is out of range {domain.lo}-{domain.hi}")
    if lo > hi:
        raise Invalid(f"range {quote(value)} is empty: {lo} is above {hi}")
    return Range(lo, hi)


def parse_items(value: Any, parse_one: Callable[[Any], T]) -> Items[T]:
    """A list field: one item or a list of items, each optionally negated with `!`."""
    listed = isinstance(value, list)
    raw_items = value if listed else [value]
    if not raw_items:
        raise Invalid("empty list: leave the field out to match any value")
    items = []
    for index, raw in enumerate(raw_items):
        try:
            negated = isinstance(raw, str) and raw.lstrip().startswith("!")
            body = raw.lstrip()[1:] if negated else raw
            if negated and not body.strip():
                raise Invalid("'!' needs a value to negate")
            items.append(Item(parse_one(body), negated))
        except Invalid as err:
            raise err.within(f"[{index}]") if listed else err
    return Items(tuple(items))


def parse_tcp_flags(value: Any) -> TcpFlags:
    """`SYN,!ACK`: flags that must be set, and with `!` flags that must be clear."""
    text = string(value, 'TCP flags such as "SYN,!ACK"')
    mask = bits = 0
    for token in text.split(","):
        token = token.strip()
        clear = token.startswith("!")
        name = token[1:].strip().upper() if clear else token.upper()
        if name not in TCP_FLAG_BITS:
            known = " ".join(TCP_FLAG_BITS)
            raise Invalid(f"{quote(token)} is not a TCP flag (known: {known}; ! for must be clear)")
        bit = TCP_FLAG_BITS[name]
        if mask & bit:
            raise Invalid(f"flag {name} is given more than once")
        mask |= bit
        bits |= 0 if clear else bit
    return TcpFlags(mask, bits)


def parse_choice(value: Any, enum: type[E], what: str) -> E:
    choices = ", ".join(member.value for member in enum)
    text = string(value, f"{what} (one of: {choices})")
    try:
        return enum(text.lower())
    except ValueError:
        raise Invalid(f"{quote(text)} is not a valid {what} (one of: {choices})") from None


def parse_verdict(value: Any) -> Verdict:
    text = string(value, "pass or drop")
    if text not in VERDICTS:
        raise Invalid(f"{quote(text)} is not pass or drop")
    return text  # type: ignore[return-value]


DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = 366 * 86400


def parse_duration(value: Any) -> float:
    """`90s`, `15m`, `4h`, `7d` (more than 0, at most 366d), as seconds."""
    text = value if isinstance(value, str) else str(value) if type(value) is int else None
    found = DURATION.match(text.strip()) if text is not None else None
    if not found:
        raise Invalid(f"{quote(value) if isinstance(value, str) else describe(value)} is not a "
                      "duration (a number with ms, s, m, h or d: 4h)")
    seconds = int(found.group(1)) * UNITS[found.group(2)]
    if not 0 < seconds <= MAX_DURATION:
        raise Invalid(f"{quote(text)}: a duration is more than 0 and at most 366d")
    return seconds


RATE = re.compile(r"^(\d+)([kMG]?)$")
RATE_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9}


def parse_rate(value: Any, what: str, top: int) -> int:
    """A positive count per second: 1000, 10k, 2M, 1G (powers of 1000), at most `top`."""
    if type(value) is int:
        number = value
    else:
        found = RATE.match(value.strip()) if isinstance(value, str) else None
        if not found:
            raise Invalid(f"expected {what} (a number, optionally with k, M or G: 10k), got "
                          f"{quote(value) if isinstance(value, str) else describe(value)}")
        number = int(found.group(1)) * RATE_UNITS[found.group(2)]
    if not 0 < number <= top:
        raise Invalid(f"{what} {number} is out of range (1 to {top:,})")
    return number


def parse_action(value: Any) -> ActionKind:
    """A word (pass, drop, count, monitor) or `{limit: NAME}`: pass within a rate limit
    that the `limits` section defines (stages/limit.py checks the name)."""
    known = ", ".join(ACTIONS)
    if isinstance(value, dict):
        if set(value) != {"limit"}:
            raise Invalid(f"an action mapping is {{limit: NAME}}, got keys {', '.join(map(quote, value))}")
        name = string(value["limit"], "a limit name")
        return ActionKind("limit", verdict="pass", limit=name)
    text = string(value, f"an action (one of: {known}, or {{limit: NAME}})")
    if text not in ACTIONS:
        raise Invalid(f"unknown action {quote(text)} (one of: {known})")
    return ACTIONS[text]


def sort_key(net: Network) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)
