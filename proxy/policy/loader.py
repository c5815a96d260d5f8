"""Reading and validating policy files, with FILE:LINE:COLUMN diagnostics.

The format (CONTRACT "Policy file")::

    rules:
      - name: global-failure                 # required, unique
        match: {status: [600, 603], method: INVITE}   # status required, method optional
        action: stop                         # redirect | retry_flows | stop | failover | forward
        # redirect only:    permanent: true|false, max_redirects: 1..10
        # retry_flows only: max_attempts: 1..10

Status forms: an integer 100..699, a class ``"6xx"``, a range ``"500-599"`` or a list mixing
them. Method: an uppercase SIP method token (RFC 3261 7.1, 25.1 ``Method``) or a list. A
method that is none of :data:`STANDARD_METHODS` is allowed (an extension method) but warned
about, with the closest standard method when one is close: ``INVTE`` is most likely a typo.

Errors make :func:`load_policy` raise :class:`~proxy.diagnostics.ConfigError`; warnings
(a rule that can never match, options that cannot apply) are returned with the policy.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Final

from proxy.diagnostics import (
    DECIMAL,
    ConfigError,
    Diagnostic,
    Reporter,
    YMap,
    YNode,
    YScalar,
    YSeq,
    check_keys,
    describe,
    display_path,
    get_bool,
    get_int,
    get_list,
    get_map,
    parse_yaml,
    read_yaml_file,
    too_large,
)
from proxy.policy.model import MAX_STATUS, MIN_STATUS, Action, Policy, Rule, format_statuses

__all__ = [
    "MATCH_KEYS",
    "MAX_POLICY_BYTES",
    "RULE_KEYS",
    "STANDARD_METHODS",
    "load_policy",
    "parse_policy",
    "policy_version",
]

MAX_POLICY_BYTES: Final = 1 << 20
"""A policy file larger than this (1 MiB) is refused unread: a real one is a few KiB, and
composing a large YAML file costs seconds (about 4 µs a byte)."""
TOP_KEYS = ("rules",)
RULE_KEYS = ("name", "match", "action", "permanent", "max_redirects", "max_attempts")
MATCH_KEYS = ("status", "method")
ACTIONS = tuple(a.value for a in Action)
OPTION_ACTION = {
    "permanent": Action.REDIRECT,
    "max_redirects": Action.REDIRECT,
    "max_attempts": Action.RETRY_FLOWS,
}
MAX_REDIRECTS = 10
MAX_ATTEMPTS = 10

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


def policy_version(data: bytes) -> str:
    """The first 12 hex digits of the SHA-256 of the file's bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


def load_policy(path: str | Path) -> tuple[Policy, list[Diagnostic]]:
    """Read, validate and compile a policy file.

    Returns ``(policy, warnings)``; raises :class:`ConfigError` with every error found.
    ``Policy.path`` is the file as given; diagnostics name it relative to the working
    directory when it lies below it.
    """
    p = Path(path)
    report = Reporter(display_path(p.absolute()) if p.is_absolute() else str(p))
    tree, data = read_yaml_file(p, report, max_bytes=MAX_POLICY_BYTES)
    if tree is None or data is None:
        raise ConfigError(report.errors)
    return _compile(tree, data, str(path), report)


def parse_policy(
    data: bytes | str, file: str = "<policy>", path: str | None = None
) -> tuple[Policy, list[Diagnostic]]:
    """Like :func:`load_policy`, from bytes already read (``file`` names them in messages)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    report = Reporter(file)
    if len(raw) > MAX_POLICY_BYTES:
        too_large(report, len(raw), MAX_POLICY_BYTES)
        raise ConfigError(report.errors)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        report.error((1, 1), "cannot read: the file is not valid UTF-8")
        raise ConfigError(report.errors) from None
    tree = parse_yaml(text, report)
    if tree is None:
        raise ConfigError(report.errors)
    return _compile(tree, raw, path, report)


def _compile(
    tree: YNode, data: bytes, path: str | None, report: Reporter
) -> tuple[Policy, list[Diagnostic]]:
    rules = _rules(tree, report)
    if not report.failed:
        _lint(rules, report)
    if report.failed:
        raise ConfigError(report.errors)
    return Policy(tuple(rules), policy_version(data), path), report.warnings


def _rules(tree: YNode, report: Reporter) -> list[Rule]:
    if not isinstance(tree, YMap):
        report.error(tree, f"a policy file must be a mapping with a 'rules' list, got {describe(tree)}")
        return []
    found = check_keys(report, tree, TOP_KEYS, TOP_KEYS, "")
    node = found.get("rules")
    if node is None:
        return []
    seq = get_list(report, node, "'rules'")
    if seq is None:
        return []
    if not seq.items:
        report.warning(seq, "the policy has no rules: every final response is forwarded")
    rules: list[Rule] = []
    names: dict[str, YScalar] = {}
    for index, item in enumerate(seq.items, start=1):
        rule = _rule(item, index, names, report)
        if rule is not None:
            rules.append(rule)
    return rules


def _rule(item: YNode, index: int, names: dict[str, YScalar], report: Reporter) -> Rule | None:
    if not isinstance(item, YMap):
        report.error(item, f"rule #{index} must be a mapping with name, match and action, "
                     f"got {describe(item)}")
        return None
    name, where = _rule_name(item, f"rule #{index}", names, report)
    found = check_keys(report, item, RULE_KEYS, ("name", "match", "action"), where)
    action = _action(found.get("action"), where, report)
    match_node = found.get("match")
    matched = _match(match_node, where, report) if match_node is not None else None
    options = _options(item, found, action, where, report)
    if name is None or action is None or matched is None or options is None:
        return None
    statuses, methods = matched
    permanent, max_redirects, max_attempts = options
    return Rule(
        name=name,
        statuses=statuses,
        action=action,
        methods=methods,
        permanent=permanent,
        max_redirects=max_redirects,
        max_attempts=max_attempts,
        line=item.line,
        column=item.column,
    )


def _rule_name(
    item: YMap, where: str, names: dict[str, YScalar], report: Reporter
) -> tuple[str | None, str]:
    """The rule's name (unique in the file) and how findings refer to the rule."""
    name_node = item.get("name")
    if name_node is None:
        return None, where
    if not (isinstance(name_node, YScalar) and isinstance(name_node.value, str)):
        hint = " (quote it)" if isinstance(name_node, YScalar) else ""
        report.error(name_node, f"{where}: name must be a string{hint}, "
                     f"got {describe(name_node)}")
        return None, where
    if not name_node.value.strip():
        report.error(name_node, f"{where}: name must not be empty")
        return None, where
    name = name_node.value
    first = names.get(name)
    if first is not None:
        report.error(name_node,
                     f"duplicate rule name {name!r} (first at {first.line}:{first.column})")
    else:
        names[name] = name_node
    return name, f"rule {name!r}"


def _action(node: YNode | None, where: str, report: Reporter) -> Action | None:
    if node is None:
        return None
    if isinstance(node, YScalar) and node.value in ACTIONS:
        return Action(node.value)
    if isinstance(node, YScalar) and isinstance(node.value, str):
        report.error(node, f"{where}: unknown action {node.value!r}; "
                     f"expected one of: {', '.join(ACTIONS)}")
    else:
        report.error(node, f"{where}: action must be one of: {', '.join(ACTIONS)}; "
                     f"got {describe(node)}")
    return None


def _match(
    node: YNode, where: str, report: Reporter
) -> tuple[frozenset[int], frozenset[str] | None] | None:
    """``match: {status, method}``: the statuses and methods, or None after an error."""
    match = get_map(report, node, f"{where}: match")
    if match is None:
        return None
    found = check_keys(report, match, MATCH_KEYS, ("status",), f"{where}: match")
    status_node = found.get("status")
    statuses = _statuses(status_node, where, report) if status_node else None
    method_node = found.get("method")
    methods: frozenset[str] | None = None
    if method_node is not None:
        methods = _methods(method_node, where, report)
        if methods is None:
            return None
    return None if statuses is None else (statuses, methods)


def _options(
    item: YMap, found: dict[str, YNode], action: Action | None, where: str, report: Reporter
) -> tuple[bool, int, int] | None:
    """``permanent``, ``max_redirects``, ``max_attempts`` (each only with its own action)."""
    ok = True
    for key, needs in OPTION_ACTION.items():
        if key in found and action is not None and action is not needs:
            report.error(_key_node(item, key), f"{where}: {key!r} applies only to action "
                         f"{needs.value}, not {action.value}")
            del found[key]
            ok = False
    permanent: bool | None = False
    max_redirects: int | None = 3
    max_attempts: int | None = 3
    if (node := found.get("permanent")) is not None:
        permanent = get_bool(report, node, f"{where}: permanent")
    if (node := found.get("max_redirects")) is not None:
        max_redirects = get_int(report, node, f"{where}: max_redirects", 1, MAX_REDIRECTS)
    if (node := found.get("max_attempts")) is not None:
        max_attempts = get_int(report, node, f"{where}: max_attempts", 1, MAX_ATTEMPTS)
    if not ok or permanent is None or max_redirects is None or max_attempts is None:
        return None
    return permanent, max_redirects, max_attempts


def _key_node(mapping: YMap, key: str) -> YScalar:
    for k, _ in mapping.items:
        if k.value == key:
            return k
    raise KeyError(key)


def _statuses(node: YNode, where: str, report: Reporter) -> frozenset[int] | None:
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


def _methods(node: YNode, where: str, report: Reporter) -> frozenset[str] | None:
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


def _lint(rules: list[Rule], report: Reporter) -> None:
    """Warnings for rules that cannot do what they say."""
    coverage = _Coverage()
    for rule in rules:
        where = (rule.line, rule.column)
        shadowing = coverage.takers(rule)
        coverage.add(rule)
        if shadowing is not None:
            names = ", ".join(repr(r.name) for r in shadowing)
            earlier = "earlier rule" if len(shadowing) == 1 else "earlier rules"
            verb = "matches" if len(shadowing) == 1 else "match"
            report.warning(where, f"rule {rule.name!r} can never match: {earlier} {names} "
                           f"already {verb} every status and method it matches")
            continue
        if rule.action is Action.REDIRECT:
            other = sorted(s for s in rule.statuses if not 300 <= s <= 399)
            if other:
                report.warning(where, f"rule {rule.name!r}: redirect needs the Contacts of a "
                               f"3xx (RFC 3261 21.3); {format_statuses(other)} cannot be "
                               "redirected")
        if rule.action is not Action.FORWARD:
            early = sorted(s for s in rule.statuses if s < 300)
            if early:
                report.warning(where, f"rule {rule.name!r}: action {rule.action.value} does not "
                           f"apply to {format_statuses(early)}: 1xx and 2xx responses are never "
                           "held back (RFC 3261 16.7 step 5)")


class _Coverage:
    """Which earlier rule first takes each (status, method) pair; linear in the rule sizes.

    ``any_method[status]`` is the first rule without ``method`` that lists the status;
    ``by_method[(status, method)]`` the first rule naming that method. The first taker of a
    pair is the earlier of the two.
    """

    def __init__(self) -> None:
        self.order: dict[str, int] = {}
        self.any_method: dict[int, Rule] = {}
        self.by_method: dict[tuple[int, str], Rule] = {}

    def add(self, rule: Rule) -> None:
        self.order.setdefault(rule.name, len(self.order))
        for status in rule.statuses:
            if rule.methods is None:
                self.any_method.setdefault(status, rule)
            else:
                for method in rule.methods:
                    self.by_method.setdefault((status, method), rule)

    def takers(self, rule: Rule) -> list[Rule] | None:
        """The earlier rules that together take every pair of ``rule``, or None.

        A rule without ``method`` matches every method, an infinite set: only earlier rules
        without ``method`` can cover it.
        """
        found: dict[str, Rule] = {}
        for status in rule.statuses:
            generic = self.any_method.get(status)
            if rule.methods is None:
                if generic is None:
                    return None
                found[generic.name] = generic
                continue
            for method in rule.methods:
                specific = self.by_method.get((status, method))
                candidates = [r for r in (generic, specific) if r is not None]
                if not candidates:
                    return None
                first = min(candidates, key=lambda r: self.order[r.name])
                found[first.name] = first
        return sorted(found.values(), key=lambda r: self.order[r.name])
