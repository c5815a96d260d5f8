"""Reading ``routes:``: where a new initial request goes (see :mod:`proxy.policy.route`)::

    routes:
      - name: office                         # required, unique among routes
        match: {ruri_user: "1[0-9]{3}", source: [10.0.0.0/8]}   # optional: every request
        group: pbx                           # required: an upstream group of proxy.yaml
        no_answer: {after: 20, to: voicemail, diversion: no-answer}   # optional
"""

from __future__ import annotations

import difflib

from proxy.diagnostics import YMap, YNode, YScalar, describe, get_list, get_map, get_number
from proxy.policy.load_match import Loading, conditions
from proxy.policy.load_values import methods
from proxy.policy.match import Conditions
from proxy.policy.route import DIVERSION_REASONS, NoAnswer, Route

__all__ = ["ROUTE_KEYS", "ROUTE_MATCH_KEYS", "diversion", "routes"]

ROUTE_KEYS = ("name", "match", "group", "no_answer")
ROUTE_MATCH_KEYS = ("method", "ruri_user", "from_user", "to_user", "source", "header", "time")
NO_ANSWER_KEYS = ("after", "to", "diversion")
MAX_NO_ANSWER = 3600.0  # seconds
RESPONSE_ONLY = ("status", "upstream")


def routes(ld: Loading, node: YNode) -> list[Route]:
    seq = get_list(ld.report, node, "'routes'")
    if seq is None:
        return []
    result: list[Route] = []
    names: dict[str, YScalar] = {}
    for index, item in enumerate(seq.items, start=1):
        route = _route(ld, item, index, names)
        if route is not None:
            result.append(route)
    return result


def _route(ld: Loading, item: YNode, index: int, names: dict[str, YScalar]) -> Route | None:
    where = f"route #{index}"
    if not isinstance(item, YMap):
        ld.report.error(item, f"{where} must be a mapping with name, match and group, got "
                        f"{describe(item)}")
        return None
    name = entry_name(ld, item, where, names, "route")
    if name is not None:
        where = f"route {name!r}"
    found = ld.keys(item, ROUTE_KEYS, (), ("name", "group"), where)
    group = ld.group(found["group"], f"{where}: group") if "group" in found else None
    ok = True
    route_methods: frozenset[str] | None = None
    when = None
    if (match_node := found.get("match")) is not None:
        matched = _match(ld, match_node, where)
        if matched is None:
            ok = False
        else:
            route_methods, when = matched
    no_answer: NoAnswer | None = None
    if (node := found.get("no_answer")) is not None:
        no_answer = _no_answer(ld, node, f"{where}: no_answer")
        ok = ok and no_answer is not None
    if not ok or name is None or group is None:
        return None
    return Route(name, group, route_methods, when, no_answer, item.line, item.column)


def entry_name(ld: Loading, item: YMap, where: str, names: dict[str, YScalar],
               kind: str) -> str | None:
    """The ``name`` of a route or test, unique among its kind."""
    node = item.get("name")
    if node is None:
        return None
    if not (isinstance(node, YScalar) and isinstance(node.value, str)):
        hint = " (quote it)" if isinstance(node, YScalar) else ""
        ld.report.error(node, f"{where}: name must be a string{hint}, got {describe(node)}")
        return None
    if not node.value.strip():
        ld.report.error(node, f"{where}: name must not be empty")
        return None
    first = names.get(node.value)
    if first is not None:
        ld.report.error(node, f"duplicate {kind} name {node.value!r} (first at "
                        f"{first.line}:{first.column})")
    else:
        names[node.value] = node
    return node.value


def _match(ld: Loading, node: YNode,
           where: str) -> tuple[frozenset[str] | None, Conditions | None] | None:
    match = get_map(ld.report, node, f"{where}: match")
    if match is None:
        return None
    what = f"{where}: match"
    ok = True
    for key, _ in match.items:
        if key.value in RESPONSE_ONLY:
            ld.report.error(key, f"{what}: {key.value!r} is about responses: a route picks where "
                            "a request goes; match on it in a rule")
            ok = False
    request_side = YMap(tuple((k, v) for k, v in match.items if k.value not in RESPONSE_ONLY),
                        match.line, match.column)
    found = ld.keys(request_side, ROUTE_MATCH_KEYS, (), (), what)
    route_methods: frozenset[str] | None = None
    if (m := found.get("method")) is not None:
        route_methods = methods(m, where, ld.report)
        ok = ok and route_methods is not None
    fine, when = conditions(ld, found, what, on_response=False)
    if not ok or not fine:
        return None
    return route_methods, when


def _no_answer(ld: Loading, node: YNode, where: str) -> NoAnswer | None:
    mapping = get_map(ld.report, node, where)
    if mapping is None:
        return None
    found = ld.keys(mapping, NO_ANSWER_KEYS, (), ("after", "to"), where)
    after = None
    if (a := found.get("after")) is not None:
        after = get_number(ld.report, a, f"{where}: after", 1, MAX_NO_ANSWER)
    to = ld.group(found["to"], f"{where}: to") if "to" in found else None
    reason: str | None = None
    ok = True
    if (d := found.get("diversion")) is not None:
        reason = diversion(ld, d, f"{where}: diversion")
        ok = reason is not None
    if after is None or to is None or not ok:
        return None
    return NoAnswer(after, to, reason)


def diversion(ld: Loading, node: YNode, what: str) -> str | None:
    """A Diversion reason of RFC 5806 4."""
    text = node.value if isinstance(node, YScalar) and isinstance(node.value, str) else None
    if text in DIVERSION_REASONS:
        return text
    shown = repr(text) if text is not None else describe(node)
    close = difflib.get_close_matches(text, DIVERSION_REASONS, n=1) if text else []
    maybe = f" (did you mean {close[0]!r}?)" if close else ""
    ld.report.error(node, f"{what}: {shown} is not a Diversion reason of RFC 5806{maybe}; "
                    f"expected one of: {', '.join(DIVERSION_REASONS)}")
    return None
