"""Reading statuses and methods, the two matches of the first form of the policy file.

Status forms: an integer 100..699, a class ``"6xx"``, a range ``"500-599"`` or a list mixing
them. Method: an uppercase SIP method token (RFC 3261 7.1, 25.1 ``Method``) or a list. A
method that is none of :data:`STANDARD_METHODS` is allowed (an extension method) but warned
about, with the closest standard method when one is close: ``INVTE`` is most likely a typo.
"""

from __future__ import annotations

import difflib
import re
from typing import Final

from proxy.diagnostics import DECIMAL, Reporter, YNode, YScalar, YSeq, describe
from proxy.policy.model import MAX_STATUS, MIN_STATUS

__all__ = ["STANDARD_METHODS", "methods", "statuses"]

# RFC 3261 25.1: Method = INVITEm / ... / extension-method; extension-method = token
STANDARD_METHODS = (
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER",  # RFC 3261
    "PRACK",  # RFC 3262
    "SUBSCRIBE", "NOTIFY",  # RFC 6665
    "PUBLISH",  # RFC 3903
    "INFO",  # RFC 6086
    "REFER",  # RFC 3515
    "MESSAGE",  # RFC 3428
    "UPDATE",  # RFC 3311
)
_TOKEN: Final = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_CLASS: Final = re.compile(r"([0-9])[xX][xX]")
_RANGE: Final = re.compile(r"([0-9]+)\s*-\s*([0-9]+)")
_SINGLE: Final = re.compile(r"[0-9]+")
_STATUS_FORMS: Final = 'an integer 100..699, a class like "6xx" or a range like "500-599"'


def statuses(node: YNode, where: str, report: Reporter) -> frozenset[int] | None:
    if isinstance(node, YSeq):
        if not node.items:
            report.error(node, f"{where}: an empty status list matches nothing")
            return None
        result: set[int] = set()
        ok = True
        for item in node.items:
            if isinstance(item, YScalar):
                one = _status_form(item, where, report)
                if one is None:
                    ok = False
                else:
                    result.update(one)
            else:
                report.error(item, f"{where}: a status list item must be {_STATUS_FORMS}, "
                             f"got {describe(item)}")
                ok = False
        return frozenset(result) if ok else None
    if isinstance(node, YScalar):
        one = _status_form(node, where, report)
        return frozenset(one) if one is not None else None
    report.error(node, f"{where}: status must be {_STATUS_FORMS}, or a list of them; "
                 f"got {describe(node)}")
    return None


def _status_form(node: YScalar, where: str, report: Reporter) -> range | None:
    value = node.value
    if type(value) is int:
        if not DECIMAL.fullmatch(node.text):
            report.error(node, f"{where}: status must be written in decimal, got {node.text!r}")
            return None
        if MIN_STATUS <= value <= MAX_STATUS:
            return range(value, value + 1)
        report.error(node, f"{where}: status {value} is out of range {MIN_STATUS}..{MAX_STATUS}")
        return None
    if not isinstance(value, str):
        report.error(node, f"{where}: status must be {_STATUS_FORMS}; got {describe(node)}")
        return None
    text = value.strip()
    if m := _CLASS.fullmatch(text):
        digit = int(m.group(1))
        if not 1 <= digit <= 6:
            report.error(node, f"{where}: status class {text!r} is out of range 1xx..6xx")
            return None
        return range(digit * 100, digit * 100 + 100)
    if m := _RANGE.fullmatch(text):
        lo, hi = int(m.group(1)), int(m.group(2))
        if not (MIN_STATUS <= lo <= MAX_STATUS and MIN_STATUS <= hi <= MAX_STATUS):
            report.error(node, f"{where}: status range {text!r} is out of range "
                         f"{MIN_STATUS}..{MAX_STATUS}")
            return None
        if lo > hi:
            report.error(node, f"{where}: status range {text!r} is reversed "
                         f"(write \"{hi}-{lo}\")")
            return None
        return range(lo, hi + 1)
    if _SINGLE.fullmatch(text):
        status = int(text)
        if MIN_STATUS <= status <= MAX_STATUS:
            return range(status, status + 1)
        report.error(node, f"{where}: status {status} is out of range {MIN_STATUS}..{MAX_STATUS}")
        return None
    report.error(node, f"{where}: invalid status {value!r}: expected {_STATUS_FORMS}")
    return None


def methods(node: YNode, where: str, report: Reporter) -> frozenset[str] | None:
    items: tuple[YNode, ...]
    if isinstance(node, YSeq):
        if not node.items:
            report.error(node, f"{where}: an empty method list matches nothing")
            return None
        items = node.items
    else:
        items = (node,)
    result: set[str] = set()
    ok = True
    for item in items:
        if not (isinstance(item, YScalar) and isinstance(item.value, str)):
            report.error(item, f"{where}: method must be a SIP method name like INVITE, "
                         f"or a list of them; got {describe(item)}")
            ok = False
            continue
        method = item.value
        if method == "*":
            report.error(item, f"{where}: method '*' is not a wildcard; "
                         "leave 'method' out to match every method")
            ok = False
        elif not _TOKEN.fullmatch(method):
            report.error(item, f"{where}: invalid method {method!r}: "
                         "a SIP method is a token such as INVITE (RFC 3261 25.1)")
            ok = False
        elif method != method.upper():
            report.error(item, f"{where}: method {method!r} must be uppercase "
                         f"(SIP methods are case-sensitive, RFC 3261 7.1): {method.upper()!r}")
            ok = False
        else:
            if method in ("ACK", "CANCEL"):
                report.warning(item, f"{where}: the policy never sees responses to {method} "
                               "(RFC 3261 16.10, 17.1.1.3)")
            elif method not in STANDARD_METHODS:
                report.warning(item, _unknown_method(method, where))
            result.add(method)
    return frozenset(result) if ok else None


def _unknown_method(method: str, where: str) -> str:
    """The warning for a method outside :data:`STANDARD_METHODS` (allowed: RFC 3261 8.2.1)."""
    text = f"{where}: method {method!r} is not a standard SIP method"
    close = difflib.get_close_matches(method, STANDARD_METHODS, n=1)
    if close:
        return f"{text}; did you mean {close[0]}?"
    return f"{text} (allowed as an extension method: check the spelling)"
