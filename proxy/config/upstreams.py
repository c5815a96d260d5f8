"""``upstreams`` in proxy.yaml: a list of SIP URIs (one group, named ``default``) or a mapping
of named groups, each a list of SIP URIs tried in order; the first group is where calls go
when no route of the policy says otherwise::

    upstreams: [sip:10.0.0.20:5060, sip:10.0.0.21:5060]      # the group `default`

    upstreams:
      pbx: [sip:10.0.0.20:5060, sip:10.0.0.21:5060]
      voicemail: [sip:10.0.0.30:5060]

An upstream appears at most once in a group; it may belong to several groups (it is one
upstream for probing and hold-downs whatever group leads to it).
"""

from __future__ import annotations

import ipaddress

from proxy.config.model import DEFAULT_GROUP, Upstream, UpstreamGroup
from proxy.config.syntax import parse_upstream
from proxy.diagnostics import Reporter, YMap, YNode, YScalar, YSeq, get_str
from proxy.policy.load_match import GROUP_NAME

__all__ = ["parse_upstreams"]


def parse_upstreams(report: Reporter, node: YNode) -> tuple[UpstreamGroup, ...]:
    """The groups of ``upstreams`` (errors reported; bad entries left out)."""
    if isinstance(node, YSeq):
        return (UpstreamGroup(DEFAULT_GROUP, _members(report, node, "upstream")),)
    if not isinstance(node, YMap):
        report.expected(node, "upstreams", "a list of SIP URIs, or a mapping of named groups of "
                        "them (pbx: [sip:10.0.0.20:5060])")
        return ()
    groups: list[UpstreamGroup] = []
    for key, value in node.items:
        name = str(key.value)
        if not GROUP_NAME.fullmatch(name) or _is_address(name):
            report.error(key, f"upstreams: {name!r} is not a group name (letters, digits, "
                         "'_', '.', '-'; up to 64, not an IP address)")
            continue
        items: YNode = value
        if isinstance(value, YScalar) and isinstance(value.value, str):
            items = YSeq((value,), value.line, value.column)  # one upstream written alone
        if not isinstance(items, YSeq):
            report.expected(value, f"upstreams: group {name!r}", "a list of SIP URIs")
            continue
        if not items.items:
            report.error(value, f"upstreams: group {name!r} has no upstreams")
            continue
        members = _members(report, items, f"upstream of group {name!r}")
        if members:
            groups.append(UpstreamGroup(name, members))
    return tuple(groups)


def _members(report: Reporter, seq: YSeq, what: str) -> tuple[Upstream, ...]:
    result: list[Upstream] = []
    seen: dict[tuple[str, int, str], YNode] = {}
    for item in seq.items:
        text = get_str(report, item, "an upstream")
        if text is None:
            continue
        up = parse_upstream(text)
        if isinstance(up, str):
            report.error(item, f"{what} {text!r}: {up}")
            continue
        key = (up.host.lower(), up.port, up.transport)
        first = seen.get(key)
        if first is not None:
            report.error(item, f"{what} {text!r}: duplicate upstream (first at "
                         f"{first.line}:{first.column})")
            continue
        seen[key] = item
        result.append(up)
    return tuple(result)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
