"""Reading and validating policy files, with FILE:LINE:COLUMN diagnostics.

The format (README "Policy files")::

    routes:                                  # optional: where a new call goes
      - name: office                         # (proxy/policy/load_routes.py)
        match: {ruri_user: "1[0-9]{3}"}
        group: pbx
    rules:
      - name: global-failure                 # required, unique
        match: {status: [600, 603], method: INVITE}   # status required, the rest optional:
                                             # ruri_user, from_user, to_user, source,
                                             # upstream, header, time
        action: stop                         # redirect | retry_flows | stop | failover |
                                             # forward | reply
        # redirect only:    permanent: true|false, max_redirects: 1..10
        # retry_flows only: max_attempts: 1..10
        # failover only:    to: GROUP, diversion: REASON (with `to`, RFC 5806)
        # reply only:       status: 400..699 (required), reason: PHRASE
        # any action:       hold_down: 1..3600 seconds
    tests: [...]                             # optional (proxy/policy/load_cases.py)

Statuses and methods: :mod:`proxy.policy.load_values`; the other matches:
:mod:`proxy.policy.load_match`. Upstream group names are checked against the configuration's
when the caller passes them (``groups``): ``check --config`` and ``run`` do; a policy file
checked alone cannot know them.

Errors make :func:`load_policy` raise :class:`~proxy.diagnostics.ConfigError`; warnings
(a rule that can never match, options that cannot apply) are returned with the policy.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from proxy.diagnostics import (
    ConfigError,
    Diagnostic,
    Reporter,
    YMap,
    YNode,
    YScalar,
    YSeq,
    describe,
    display_path,
    get_bool,
    get_int,
    get_list,
    get_map,
    get_number,
    parse_yaml,
    read_yaml_file,
    too_large,
)
from proxy.policy.lint import lint_routes, lint_rules
from proxy.policy.load_cases import TEST_KEYS, tests
from proxy.policy.load_match import Loading, conditions
from proxy.policy.load_routes import diversion, routes
from proxy.policy.load_values import STANDARD_METHODS, methods, statuses
from proxy.policy.match import Conditions
from proxy.policy.model import MAX_HOLD_DOWN, Action, Policy, Rule
from proxy.policy.route import Route

__all__ = [
    "MATCH_KEYS",
    "MAX_POLICY_BYTES",
    "RULE_KEYS",
    "STANDARD_METHODS",
    "TEST_KEYS",
    "load_policy",
    "parse_policy",
    "policy_version",
]

MAX_POLICY_BYTES: Final = 1 << 20
"""A policy file larger than this (1 MiB) is refused unread: a real one is a few KiB, and
composing a large YAML file costs seconds (about 4 µs a byte)."""
TOP_KEYS = ("rules",)
TOP_KEYS_2 = ("routes", "tests")
RULE_KEYS = ("name", "match", "action", "permanent", "max_redirects", "max_attempts")
RULE_KEYS_2 = ("to", "diversion", "hold_down", "status", "reason")
MATCH_KEYS = ("status", "method")
MATCH_KEYS_2 = ("ruri_user", "from_user", "to_user", "source", "upstream", "header", "time")
ACTIONS = tuple(a.value for a in Action)
REPLY = "reply"
ACTIONS_2 = (*ACTIONS, REPLY)
OPTION_ACTION = {
    "permanent": Action.REDIRECT.value,
    "max_redirects": Action.REDIRECT.value,
    "max_attempts": Action.RETRY_FLOWS.value,
    "to": Action.FAILOVER.value,
    "diversion": Action.FAILOVER.value,
    "status": REPLY,
    "reason": REPLY,
}
MAX_REDIRECTS = 10
MAX_ATTEMPTS = 10
MAX_REASON = 128


def policy_version(data: bytes) -> str:
    """The first 12 hex digits of the SHA-256 of the file's bytes."""
    return hashlib.sha256(data).hexdigest()[:12]


def load_policy(
    path: str | Path, groups: Sequence[str] | None = None
) -> tuple[Policy, list[Diagnostic]]:
    """Read, validate and compile a policy file.

    Returns ``(policy, warnings)``; raises :class:`ConfigError` with every error found.
    ``groups``: the configuration's upstream group names (every group a route, rule or test
    names must be one of them); None: not checked. ``Policy.path`` is the file as given;
    diagnostics name it relative to the working directory when it lies below it.
    """
    p = Path(path)
    report = Reporter(display_path(p.absolute()) if p.is_absolute() else str(p))
    tree, data = read_yaml_file(p, report, max_bytes=MAX_POLICY_BYTES)
    if tree is None or data is None:
        raise ConfigError(report.errors)
    return _compile(tree, data, str(path), report, groups)


def parse_policy(
    data: bytes | str, file: str = "<policy>", path: str | None = None,
    groups: Sequence[str] | None = None,
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
    return _compile(tree, raw, path, report, groups)


def _compile(
    tree: YNode, data: bytes, path: str | None, report: Reporter,
    groups: Sequence[str] | None,
) -> tuple[Policy, list[Diagnostic]]:
    ld = Loading(report, _level2(tree))
    rules: list[Rule] = []
    found_routes: list[Route] = []
    found_tests = []
    if not isinstance(tree, YMap):
        report.error(tree, f"a policy file must be a mapping with a 'rules' list, got "
                     f"{describe(tree)}")
    else:
        found = ld.keys(tree, TOP_KEYS, TOP_KEYS_2, TOP_KEYS, "")
        if (node := found.get("rules")) is not None:
            rules = _rules(ld, node)
        if (node := found.get("routes")) is not None:
            found_routes = routes(ld, node)
        if (node := found.get("tests")) is not None:
            uses_time = any(c is not None and c.time is not None
                            for c in [*(r.when for r in rules), *(r.when for r in found_routes)])
            found_tests = tests(ld, node, rules, found_routes, uses_time)
    if groups is not None:
        ld.check_groups(groups)
    if not report.failed:
        lint_routes(found_routes, report)
        lint_rules(rules, report)
    if report.failed:
        raise ConfigError(report.errors)
    policy = Policy(tuple(rules), policy_version(data), path, tuple(found_routes),
                    tuple(found_tests))
    return policy, report.warnings


def _level2(tree: YNode) -> bool:
    """Whether the file uses anything of the second form (see :mod:`.load_match`)."""
    if not isinstance(tree, YMap):
        return False
    if any(key in TOP_KEYS_2 for key in tree.keys()):
        return True
    rules = tree.get("rules")
    for item in rules.items if isinstance(rules, YSeq) else ():
        if not isinstance(item, YMap):
            continue
        if any(key in RULE_KEYS_2 for key in item.keys()):
            return True
        action = item.get("action")
        if isinstance(action, YScalar) and action.value == REPLY:
            return True
        match = item.get("match")
        if isinstance(match, YMap) and any(key in MATCH_KEYS_2 for key in match.keys()):
            return True
    return False


def _rules(ld: Loading, node: YNode) -> list[Rule]:
    seq = get_list(ld.report, node, "'rules'")
    if seq is None:
        return []
    if not seq.items:
        ld.report.warning(seq, "the policy has no rules: every final response is forwarded")
    rules: list[Rule] = []
    names: dict[str, YScalar] = {}
    for index, item in enumerate(seq.items, start=1):
        rule = _rule(ld, item, index, names)
        if rule is not None:
            rules.append(rule)
    return rules


def _rule(ld: Loading, item: YNode, index: int, names: dict[str, YScalar]) -> Rule | None:
    report = ld.report
    if not isinstance(item, YMap):
        report.error(item, f"rule #{index} must be a mapping with name, match and action, "
                     f"got {describe(item)}")
        return None
    name, where = _rule_name(item, f"rule #{index}", names, report)
    found = ld.keys(item, RULE_KEYS, RULE_KEYS_2, ("name", "match", "action"), where)
    verb = _action(ld, found.get("action"), where)
    match_node = found.get("match")
    matched = _match(ld, match_node, where) if match_node is not None else None
    options = _Options.read(ld, item, found, verb, where)
    if name is None or verb is None or matched is None or options is None:
        return None
    rule_statuses, rule_methods, when = matched
    return Rule(
        name=name,
        statuses=rule_statuses,
        action=Action.STOP if verb == REPLY else Action(verb),
        methods=rule_methods,
        permanent=options.permanent,
        max_redirects=options.max_redirects,
        max_attempts=options.max_attempts,
        line=item.line,
        column=item.column,
        when=when,
        to=options.to,
        diversion=options.diversion,
        hold_down=options.hold_down,
        reply=options.reply,
        reason=options.reason,
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


def _action(ld: Loading, node: YNode | None, where: str) -> str | None:
    """The action word (``reply`` included); the list in a message is the first form's in a
    level-1 file unless the word is closest to ``reply``."""
    if node is None:
        return None
    if isinstance(node, YScalar) and node.value in ACTIONS_2:
        return str(node.value)
    word = node.value if isinstance(node, YScalar) and isinstance(node.value, str) else None
    close = difflib.get_close_matches(word, ACTIONS_2, n=1) if word else []
    listed = ", ".join(ACTIONS_2 if ld.level2 or close == [REPLY] else ACTIONS)
    if word is not None:
        ld.report.error(node, f"{where}: unknown action {word!r}; expected one of: {listed}")
    else:
        ld.report.error(node, f"{where}: action must be one of: {listed}; got {describe(node)}")
    return None


def _match(
    ld: Loading, node: YNode, where: str
) -> tuple[frozenset[int], frozenset[str] | None, Conditions | None] | None:
    """``match: {status, method, ...}``: statuses, methods and the other conditions."""
    match = get_map(ld.report, node, f"{where}: match")
    if match is None:
        return None
    found = ld.keys(match, MATCH_KEYS, MATCH_KEYS_2, ("status",), f"{where}: match")
    status_node = found.get("status")
    rule_statuses = statuses(status_node, where, ld.report) if status_node else None
    rule_methods: frozenset[str] | None = None
    if (method_node := found.get("method")) is not None:
        rule_methods = methods(method_node, where, ld.report)
        if rule_methods is None:
            return None
    ok, when = conditions(ld, found, f"{where}: match", on_response=True)
    if rule_statuses is None or not ok:
        return None
    return rule_statuses, rule_methods, when


class _Options:
    """A rule's options, each only with the action it belongs to."""

    __slots__ = ("permanent", "max_redirects", "max_attempts", "to", "diversion",
                 "hold_down", "reply", "reason")

    def __init__(self) -> None:
        self.permanent = False
        self.max_redirects = 3
        self.max_attempts = 3
        self.to: str | None = None
        self.diversion: str | None = None
        self.hold_down = 0.0
        self.reply = 0
        self.reason: str | None = None

    @staticmethod
    def read(ld: Loading, item: YMap, found: dict[str, YNode], verb: str | None,
             where: str) -> _Options | None:
        report = ld.report
        ok = True
        for key, needs in OPTION_ACTION.items():
            if key in found and verb is not None and verb != needs:
                report.error(_key_node(item, key), f"{where}: {key!r} applies only to action "
                             f"{needs}, not {verb}")
                del found[key]
                ok = False
        o = _Options()
        if (node := found.get("permanent")) is not None:
            permanent = get_bool(report, node, f"{where}: permanent")
            ok = ok and permanent is not None
            o.permanent = bool(permanent)
        if (node := found.get("max_redirects")) is not None:
            value = get_int(report, node, f"{where}: max_redirects", 1, MAX_REDIRECTS)
            ok = ok and value is not None
            o.max_redirects = value or 3
        if (node := found.get("max_attempts")) is not None:
            value = get_int(report, node, f"{where}: max_attempts", 1, MAX_ATTEMPTS)
            ok = ok and value is not None
            o.max_attempts = value or 3
        if (node := found.get("to")) is not None:
            o.to = ld.group(node, f"{where}: to")
            ok = ok and o.to is not None
        if (node := found.get("diversion")) is not None:
            o.diversion = diversion(ld, node, f"{where}: diversion")
            ok = ok and o.diversion is not None
            if "to" not in found and verb == Action.FAILOVER.value:
                report.error(_key_node(item, "diversion"), f"{where}: 'diversion' needs 'to': "
                             "a Diversion tells the group the call goes on with where it was "
                             "going (RFC 5806)")
                ok = False
        if (node := found.get("hold_down")) is not None:
            seconds = get_number(report, node, f"{where}: hold_down", 1, MAX_HOLD_DOWN)
            ok = ok and seconds is not None
            o.hold_down = seconds or 0.0
        return o if o._reply(ld, item, found, verb, where) and ok else None

    def _reply(self, ld: Loading, item: YMap, found: dict[str, YNode], verb: str | None,
               where: str) -> bool:
        if verb != REPLY:
            return True
        node = found.get("status")
        if node is None:
            ld.report.error(item, f"{where}: action reply needs 'status': the status the caller "
                            "gets instead")
            return False
        status = get_int(ld.report, node, f"{where}: status", 100, 699)
        if status is None:
            return False
        if not 400 <= status <= 699:
            ld.report.error(node, f"{where}: status {status}: a reply must be a failure "
                            "400..699 (a 2xx would claim a call nobody answered, a 1xx is not "
                            "final, a 3xx needs Contacts)")
            return False
        self.reply = status
        if (r := found.get("reason")) is not None:
            text = r.value if isinstance(r, YScalar) and isinstance(r.value, str) else None
            if text is None or not text.strip() or len(text) > MAX_REASON or \
                    not text.isprintable():
                ld.report.error(r, f"{where}: reason must be a phrase of printable characters, "
                                f"1 to {MAX_REASON} (RFC 3261 25.1 Reason-Phrase), got "
                                f"{describe(r)}")
                return False
            self.reason = text.strip()
        return True


def _key_node(mapping: YMap, key: str) -> YScalar:
    for k, _ in mapping.items:
        if k.value == key:
            return k
    raise KeyError(key)
