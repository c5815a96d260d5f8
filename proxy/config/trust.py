"""The keys of ``proxy.yaml`` that say who may register what and how the proxy authenticates,
read for :mod:`proxy.config.loader`: ``registrar_max_bindings``, ``path``,
``auth.algorithms``, and the ``registrar_networks`` default, which depends on ``auth``.

Every error carries its FILE:LINE:COLUMN and an example of the right form.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from proxy.auth_users import Credentials
from proxy.config.model import (
    DEFAULT_ALGORITHMS,
    DEFAULT_REGISTRAR_NETWORKS,
    MAX_BINDINGS,
    PATH_MODES,
    unique,
)
from proxy.diagnostics import Reporter, YMap, YNode, YScalar, YSeq, describe, get_list, get_str

__all__ = ["algorithms", "ip_networks", "max_bindings", "path_mode", "registrar_defaults",
           "users_algorithms"]


def _shown(node: YNode) -> str:
    if isinstance(node, YScalar) and isinstance(node.value, str):
        return repr(node.value)
    return describe(node)


def ip_networks(report: Reporter, node: YNode) -> tuple[str, ...]:
    """``registrar_networks``: IP addresses or CIDR networks (host bits may be set)."""
    what = "registrar_networks"
    seq = get_list(report, node, what)
    if seq is None:
        return DEFAULT_REGISTRAR_NETWORKS
    result: list[str] = []
    for item in seq.items:
        text = get_str(report, item, f"an entry of {what}")
        if text is None:
            continue
        text = text.strip()
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            report.error(item, f"{what}: {text!r} is not an IP address or a CIDR "
                         "network (e.g. 10.0.0.0/8, 192.0.2.7 or fc00::/7)")
            continue
        is_address = "/" not in text
        result.append(str(network.network_address) if is_address else str(network))
    return unique(result)


def max_bindings(report: Reporter, node: YNode) -> int | None:
    """``registrar_max_bindings``: every binding the proxy holds, 1..10,000,000."""
    if (isinstance(node, YScalar) and type(node.value) is int
            and 1 <= node.value <= MAX_BINDINGS and node.text.isdigit()):
        return node.value
    report.expected(node, "registrar_max_bindings",
                    f"a whole number from 1 to {MAX_BINDINGS}", _shown(node))
    return None


def path_mode(report: Reporter, node: YNode) -> str | None:
    """``path``: ``always`` or ``when_supported`` (RFC 3327)."""
    if isinstance(node, YScalar) and isinstance(node.value, str) and node.value in PATH_MODES:
        return node.value
    report.expected(node, "path", " or ".join(PATH_MODES), _shown(node))
    return None


_ALGORITHM_HINT = ("e.g. algorithms: [SHA-256, MD5], or [MD5] for phones that give up on the "
                   "first challenge they cannot answer")


def algorithms(report: Reporter, node: YNode) -> tuple[str, ...] | None:
    """``auth.algorithms``: SHA-256 and/or MD5 (RFC 8760), most preferred first."""
    if not isinstance(node, YSeq):
        report.expected(node, "auth: algorithms", "a list of digest algorithms (SHA-256 and/or "
                        "MD5; [MD5] for phones that give up on the first challenge they cannot "
                        "answer)", _shown(node))
        return None
    if not node.items:
        report.error(node, f"auth: algorithms must name at least one of "
                     f"{', '.join(DEFAULT_ALGORITHMS)} ({_ALGORITHM_HINT})")
        return None
    canonical = {a.upper(): a for a in DEFAULT_ALGORITHMS}
    out: dict[str, YNode] = {}
    ok = True
    for item in node.items:
        name = item.value if isinstance(item, YScalar) and isinstance(item.value, str) else None
        algo = canonical.get(name.strip().upper()) if name is not None else None
        if algo is None:
            report.error(item, f"auth: algorithms: {_shown(item)} is not a digest algorithm of "
                         f"the proxy: use {' or '.join(DEFAULT_ALGORITHMS)} ({_ALGORITHM_HINT})")
            ok = False
        elif algo in out:
            first = out[algo]
            report.error(item, f"auth: algorithms: {algo} is listed twice (first at "
                         f"{first.line}:{first.column})")
            ok = False
        else:
            out[algo] = item
    return tuple(out) if ok else None


def users_algorithms(report: Reporter, at: YNode, users: Sequence[Credentials],
                     algos: Sequence[str]) -> None:
    """A warning for each user whose credentials answer none of ``algos``."""
    for u in users:
        has = [a for a, ha1 in (("SHA-256", u.ha1_sha256), ("MD5", u.ha1_md5)) if ha1]
        if not any(a in has for a in algos):
            report.warning(at, f"auth: user {u.user!r} has credentials for {', '.join(has)} "
                           f"only, none of auth.algorithms [{', '.join(algos)}]: it can "
                           "never authenticate")


def registrar_defaults(report: Reporter, tree: YMap, found: dict[str, YNode],
                       given: dict[str, YNode], values: dict[str, Any]) -> None:
    """``registrar_networks`` unset: with ``auth``, nobody (every REGISTER authenticates);
    without it, the loopback and private ranges, with a warning for the local registrar
    (anyone there can register, or unregister, any user)."""
    auth = values.get("auth") is not None or "auth" in given
    networks = given.get("registrar_networks")
    if networks is not None:
        if isinstance(networks, YSeq) and not networks.items and not auth:
            report.warning(networks, "registrar_networks is empty: no address is allowed to "
                           "register")
        return
    if auth:
        values["registrar_networks"] = ()
        return
    if values.get("registrar") == "local":
        report.warning(found.get("registrar", tree), "registrar: local without auth: anyone "
                       "on registrar_networks (by default "
                       f"{', '.join(DEFAULT_REGISTRAR_NETWORKS)}) can register any user and "
                       "remove its bindings; set auth (every REGISTER then authenticates) or "
                       "list only your phones' networks (e.g. registrar_networks: "
                       "[192.168.10.0/24])")
