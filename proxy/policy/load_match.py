"""Reading the matches routes and rules share (``ruri_user``, ``from_user``, ``to_user``,
``source``, ``header``, ``time``, ``upstream``), and what every part of the loader carries
(:class:`Loading`: the reporter, the language level, the group names referenced).

The first form of the policy file (rules matching on status and method) is "level 1"; a
file using anything of the second (routes, tests, the new matches, options and ``reply``)
is "level 2". The only difference the level makes is in messages: a level-1 file is told
the keys and actions of the first form, so that every message about a first-form file reads
as it always did, unless what it misspelt is closest to a level-2 word.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Sequence
from datetime import UTC, tzinfo
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from proxy.diagnostics import Reporter, YMap, YNode, YScalar, YSeq, describe, get_map
from proxy.policy.match import Conditions, IPNetwork, canonical_header
from proxy.policy.timewindow import DAY_NAMES, MINUTES_PER_DAY, TimeWindow

__all__ = ["GROUP_NAME", "Loading", "conditions", "regex", "scalar_text"]

#: An upstream group's name, as proxy.yaml may write it.
GROUP_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")  # RFC 3261 25.1 token (header names)
_BETWEEN: Final = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")
_TIME_KEYS = ("days", "between", "tz")
UTC_NAME = "UTC"


class Loading:
    """The state of loading one policy file."""

    __slots__ = ("report", "level2", "group_refs")

    def __init__(self, report: Reporter, level2: bool) -> None:
        self.report = report
        self.level2 = level2
        #: (group name, where it is written, what names it) for the check against proxy.yaml
        self.group_refs: list[tuple[str, YScalar, str]] = []

    def keys(self, mapping: YMap, classic: Sequence[str], extra: Sequence[str],
             required: Sequence[str], where: str) -> dict[str, YNode]:
        """Like :func:`proxy.diagnostics.check_keys` over ``classic`` + ``extra``; the list
        of allowed keys in a message is ``classic`` alone in a level-1 file (unless the
        closest key to the unknown one is in ``extra``)."""
        full = [*classic, *extra]
        prefix = f"{where}: " if where else ""
        found: dict[str, YNode] = {}
        for key, value in mapping.items:
            name = str(key.value)
            if name in full:
                found[name] = value
                continue
            close = difflib.get_close_matches(name, full, n=1) or [
                a for a in full if a.startswith(f"{name}_")][:1]
            hint = close[0] if close else None
            listed = full if self.level2 or (hint is not None and hint in extra) else classic
            maybe = f" (did you mean {hint!r}?)" if hint is not None else ""
            self.report.error(key, f"{prefix}unknown key {name!r}{maybe}; "
                              f"allowed keys: {', '.join(listed)}")
        for name in required:
            if name not in found:
                self.report.error(mapping, f"{prefix}missing required key {name!r}")
        return found

    def group(self, node: YNode, where: str) -> str | None:
        """An upstream group's name, remembered for the check against the configuration."""
        if not (isinstance(node, YScalar) and isinstance(node.value, str)):
            self.report.error(node, f"{where} must be an upstream group name, got "
                              f"{describe(node)}")
            return None
        name = node.value
        if not GROUP_NAME.fullmatch(name):
            self.report.error(node, f"{where}: {name!r} is not an upstream group name (letters, "
                              "digits, '_', '.', '-')")
            return None
        self.group_refs.append((name, node, where))
        return name

    def groups(self, node: YNode, where: str) -> frozenset[str] | None:
        """One group name or a list of them."""
        items = node.items if isinstance(node, YSeq) else (node,)
        if isinstance(node, YSeq) and not items:
            self.report.error(node, f"{where}: an empty list matches nothing")
            return None
        names = [self.group(item, where) for item in items]
        if any(n is None for n in names):
            return None
        return frozenset(n for n in names if n is not None)

    def check_groups(self, known: Sequence[str]) -> None:
        """Every group named must be one of ``known`` (the configuration's)."""
        for name, node, where in self.group_refs:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            maybe = f" (did you mean {close[0]!r}?)" if close else ""
            self.report.error(node, f"{where}: unknown upstream group {name!r}{maybe}; the "
                              f"configuration's groups: {', '.join(known) or '(none)'}")


def scalar_text(node: YNode) -> str | None:
    """A scalar as written (``911`` stays ``911``, ``0123`` too), None for a null, a boolean,
    a list or a mapping."""
    if not isinstance(node, YScalar) or node.value is None or isinstance(node.value, bool):
        return None
    return node.value if isinstance(node.value, str) else node.text


def regex(ld: Loading, node: YNode, what: str) -> re.Pattern[str] | None:
    """A regular expression (matched against whole values), compiled; a warning for one whose
    matching time may explode on crafted input (callers choose the values it reads)."""
    text = scalar_text(node)
    if text is None:
        ld.report.error(node, f"{what} must be a regular expression (a string), got "
                        f"{describe(node)}")
        return None
    try:
        pattern = re.compile(text)
    except re.error as exc:
        ld.report.error(node, f"{what}: the regular expression {text!r} does not compile: "
                        f"{exc.msg} at position {exc.pos}")
        return None
    if nested_repeat(text):
        ld.report.warning(node, f"{what}: the regular expression {text!r} repeats a group that "
                          "itself repeats (like (a+)+): matching it can take exponential time "
                          "on a value a caller crafts; write it without the nesting")
    return pattern


def nested_repeat(pattern: str) -> bool:
    """Whether ``pattern`` quantifies (``*``, ``+``, ``{m,n}``) a group that holds a
    quantifier: the classic shape of catastrophic backtracking. A heuristic on the text."""
    stack: list[bool] = [False]  # per open group: holds a quantifier
    i = 0
    n = len(pattern)
    closed_had_repeat = False  # the group that just closed held a quantifier
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            closed_had_repeat = False
            continue
        if c == "[":
            i = _class_end(pattern, i)
            closed_had_repeat = False
            continue
        if c == "(":
            stack.append(False)
        elif c == ")" and len(stack) > 1:
            closed_had_repeat = stack.pop()
            stack[-1] = stack[-1] or closed_had_repeat
            i += 1
            continue
        elif c in "*+{":
            if closed_had_repeat:
                return True
            stack[-1] = True
        closed_had_repeat = False
        i += 1
    return False


def _class_end(pattern: str, start: int) -> int:
    """The index after the ``]`` closing the character class opened at ``start``."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def conditions(ld: Loading, found: dict[str, YNode], where: str,
               on_response: bool) -> tuple[bool, Conditions | None]:
    """The conditions among the match keys ``found``: (ok, conditions or None when there
    are none)."""
    ok = True
    patterns: dict[str, re.Pattern[str] | None] = {}
    for key in ("ruri_user", "from_user", "to_user"):
        node = found.get(key)
        if node is not None:
            patterns[key] = regex(ld, node, f"{where}: {key}")
            ok = ok and patterns[key] is not None
    networks: tuple[IPNetwork, ...] = ()
    names: frozenset[str] = frozenset()
    if (node := found.get("source")) is not None:
        source = _source(ld, node, f"{where}: source")
        if source is None:
            ok = False
        else:
            networks, names = source
    headers: tuple[tuple[str, re.Pattern[str]], ...] = ()
    if (node := found.get("header")) is not None:
        read = _headers(ld, node, f"{where}: header")
        ok = ok and read is not None
        headers = read or ()
    upstream: frozenset[str] | None = None
    if (node := found.get("upstream")) is not None:
        upstream = ld.groups(node, f"{where}: upstream")
        ok = ok and upstream is not None
    window: TimeWindow | None = None
    if (node := found.get("time")) is not None:
        window = time_window(ld, node, f"{where}: time")
        ok = ok and window is not None
    if not ok:
        return False, None
    if not (patterns or networks or names or headers or upstream is not None
            or window is not None):
        return True, None
    return True, Conditions(
        ruri_user=patterns.get("ruri_user"), from_user=patterns.get("from_user"),
        to_user=patterns.get("to_user"), networks=networks, source_names=names,
        headers=headers, upstream=upstream, time=window, on_response=on_response)


def _source(ld: Loading, node: YNode,
            what: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]] | None:
    """``source``: IP networks (CIDR, or one address) and upstream group names."""
    items = node.items if isinstance(node, YSeq) else (node,)
    if isinstance(node, YSeq) and not items:
        ld.report.error(node, f"{what}: an empty list matches nothing")
        return None
    networks: list[IPNetwork] = []
    names: set[str] = set()
    ok = True
    for item in items:
        text = item.value if isinstance(item, YScalar) and isinstance(item.value, str) else None
        if text is None:
            ld.report.error(item, f"{what} must be a list of IP networks (10.0.0.0/8) or "
                            f"upstream group names, got {describe(item)}")
            ok = False
            continue
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
            continue
        except ValueError:
            pass
        if not GROUP_NAME.fullmatch(text) or text.replace(".", "").isdigit():
            ld.report.error(item, f"{what}: {text!r} is neither an IP network (like 10.0.0.0/8 "
                            "or 192.0.2.7) nor an upstream group name")
            ok = False
            continue
        name = ld.group(item, what)
        if name is not None:
            names.add(name)
    return (tuple(networks), frozenset(names)) if ok else None


def _headers(ld: Loading, node: YNode,
             what: str) -> tuple[tuple[str, re.Pattern[str]], ...] | None:
    """``header: {NAME: REGEX, ...}``; names case-insensitive, compact forms expanded."""
    mapping = get_map(ld.report, node, what)
    if mapping is None:
        return None
    if not mapping.items:
        ld.report.error(mapping, f"{what}: an empty mapping matches nothing; write "
                        "{Name: REGEX}")
        return None
    result: list[tuple[str, re.Pattern[str]]] = []
    seen: dict[str, YScalar] = {}
    ok = True
    for key, value in mapping.items:
        name = str(key.value)
        if not _TOKEN.fullmatch(name):
            ld.report.error(key, f"{what}: {name!r} is not a header name (RFC 3261 7.3.1)")
            ok = False
            continue
        canonical = canonical_header(name)
        first = seen.get(canonical)
        if first is not None:
            ld.report.error(key, f"{what}: {name!r} is the header {first.value!r} again "
                            f"(first at {first.line}:{first.column})")
            ok = False
            continue
        seen[canonical] = key
        pattern = regex(ld, value, f"{what} {name}")
        if pattern is None:
            ok = False
            continue
        result.append((canonical, pattern))
    return tuple(result) if ok else None


def time_window(ld: Loading, node: YNode, what: str) -> TimeWindow | None:
    """``time: {days, between, tz}``; at least one of days and between."""
    mapping = get_map(ld.report, node, what)
    if mapping is None:
        return None
    found = ld.keys(mapping, _TIME_KEYS, (), (), what)
    if len(found) < len(mapping.items):
        return None  # an unknown key, reported
    if "days" not in found and "between" not in found:
        ld.report.error(mapping, f"{what} needs 'days', 'between' or both")
        return None
    days: int | None = (1 << 7) - 1
    if (d := found.get("days")) is not None:
        days = _days(ld, d, f"{what}: days")
    span: tuple[int, int] | None = (0, MINUTES_PER_DAY)
    if (b := found.get("between")) is not None:
        span = _between(ld, b, f"{what}: between")
    zone: tuple[str, tzinfo] | None = (UTC_NAME, UTC)
    if (z := found.get("tz")) is not None:
        zone = _zone(ld, z, f"{what}: tz")
    if days is None or span is None or zone is None:
        return None
    return TimeWindow(days, span[0], span[1], zone[0], zone[1])


def _days(ld: Loading, node: YNode, what: str) -> int | None:
    items = node.items if isinstance(node, YSeq) else (node,)
    if isinstance(node, YSeq) and not items:
        ld.report.error(node, f"{what}: an empty list never matches (leave 'days' out for "
                        "every day)")
        return None
    mask = 0
    for item in items:
        text = item.value.strip().lower() if (
            isinstance(item, YScalar) and isinstance(item.value, str)) else None
        first, _, last = (text or "").partition("-")
        if text is None or first not in DAY_NAMES or (last and last not in DAY_NAMES):
            ld.report.error(item, f"{what}: expected a day ({', '.join(DAY_NAMES)}) or a span "
                            f"of days like mon-fri, got {describe(item)}")
            return None
        lo = DAY_NAMES.index(first)
        hi = DAY_NAMES.index(last) if last else lo
        for k in range((hi - lo) % 7 + 1):  # mon-fri, and over the week's end: fri-mon
            mask |= 1 << ((lo + k) % 7)
    return mask


def _between(ld: Loading, node: YNode, what: str) -> tuple[int, int] | None:
    text = node.value if isinstance(node, YScalar) and isinstance(node.value, str) else None
    m = _BETWEEN.fullmatch(text) if text is not None else None
    if text is None or m is None:
        ld.report.error(node, f'{what} must be a string like "08:00-18:00", got '
                        f"{describe(node)}")
        return None
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
        ld.report.error(node, f"{what}: {text.strip()!r} is not a time of day HH:MM-HH:MM "
                        "(00:00 to 23:59, and 24:00 as the end)")
        return None
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        ld.report.error(node, f"{what}: {text.strip()!r} is empty and never matches (the end is "
                        'excluded; the whole day is "00:00-24:00")')
        return None
    return start, end


def _zone(ld: Loading, node: YNode, what: str) -> tuple[str, tzinfo] | None:
    text = node.value if isinstance(node, YScalar) and isinstance(node.value, str) else None
    if text is None or not text.strip():
        ld.report.error(node, f"{what} must be an IANA time zone name like Europe/Berlin, got "
                        f"{describe(node)}")
        return None
    name = text.strip()
    try:
        return name, ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=1)
        maybe = f" (did you mean {close[0]!r}?)" if close else ""
        ld.report.error(node, f"{what}: unknown time zone {name!r}{maybe}; an IANA name like "
                        "Europe/Berlin or America/New_York")
        return None
