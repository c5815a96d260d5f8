"""``sip-policy-proxy upstreams list | drain URI | down URI | up URI``: the running proxy's
upstreams and their states, and the operator's control of each (Kamailio's
``dispatcher.set_state``), through its HTTP side: ``GET /upstreams``, ``POST /upstreams/drain``
(README "Runtime control of upstreams").

The endpoint and the token default to the configuration's ``http:`` and ``http_token``
(``--config``, default ``./proxy.yaml``); ``--http`` and ``--token`` override them. Exit codes:
0 done; 1 an unknown upstream, a refused token, or the proxy does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
from typing import Any

from proxy.sip import host_port_text
from proxy.trace_cli import endpoint, request

ACTIONS = {
    "drain": "no new calls go to it; calls up go on until they end (in-dialog requests and "
             "responses keep flowing)",
    "down": "no new calls go to it and it is not probed",
    "up": "back in service: probing decides whether it is used",
}


def add_parser(sub: Any, default_config: str) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--http", metavar="HOST:PORT", default=argparse.SUPPRESS,
                        help="the proxy's http endpoint (default: http: of the configuration)")
    common.add_argument("--token", metavar="T", default=argparse.SUPPRESS,
                        help="the bearer token (default: http_token of the configuration)")
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"the configuration naming the endpoint (default: ./{default_config})")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, metavar="SECONDS",
                        help="how long to wait for the proxy (default: 5)")
    top = sub.add_parser(
        "upstreams", parents=[common], help="list the upstreams; drain, down or up one",
        description="The running proxy's upstreams with their probe and administrative "
        "states, and the operator's control of each (its HTTP side: GET /upstreams, POST "
        "/upstreams/ACTION). The state is kept in the state store: every proxy sharing it "
        "obeys, and it outlives a restart.")
    # the shared options' defaults are filled in by cmd_upstreams (set_defaults here would
    # change the default of the very actions the leaves share, overriding a value given
    # before the action)
    top.set_defaults(func=cmd_upstreams, default_config=default_config)
    actions = top.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[common], help="each upstream: group, probe, admin state, since, calls",
        description="Each upstream (its group), its probe state (up, down, off, not probed), "
        "its administrative state (up, drain, down), since when and set by which node, and "
        "the calls up that were sent to it.")
    listing.add_argument("--json", action="store_true", help="print the JSON of GET /upstreams")
    for action, meaning in ACTIONS.items():
        p = actions.add_parser(action, parents=[common], help=meaning,
                               description=f"{action}: {meaning}. Every proxy sharing the "
                               "state store obeys.")
        p.add_argument("uri", metavar="URI",
                       help="the upstream as written in proxy.yaml (or its host[:port])")


def table(found: dict[str, Any]) -> str:
    columns = ("UPSTREAM", "GROUP", "PROBE", "ADMIN", "SINCE", "BY", "CALLS")
    rows = [(u["upstream"], u["group"], u["probe"], u["admin"], u["since"] or "-",
             u["by"] or "-", str(u["calls"])) for u in found.get("upstreams", [])]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
             for r in (columns, *rows)]
    if not found.get("persistent", True):
        lines.append("state: memory: (states set here are lost at a restart and not shared)")
    return "\n".join(lines)


def cmd_upstreams(args: argparse.Namespace) -> int:
    for name, default in (("http", None), ("token", None), ("config", args.default_config),
                          ("timeout", 5.0), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    where = endpoint(args)
    if where is None:
        return 1
    host, port, token = where
    shown = f"http://{host_port_text(host, port)}"
    try:
        if args.action == "list":
            status, found = request(host, port, "/upstreams", token, args.timeout)
        else:
            status, found = request(host, port, f"/upstreams/{args.action}", token,
                                    args.timeout, {"upstream": args.uri})
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot reach {shown}/upstreams: {exc}", file=sys.stderr)
        return 1
    if status in (401, 403):
        print(f"the proxy refused ({status}): give --token or set http_token "
              f"({found if isinstance(found, str) else json.dumps(found)})", file=sys.stderr)
        return 1
    if status != 200 or not isinstance(found, dict):
        why = found.get("error") if isinstance(found, dict) else found
        print(f"{why} (HTTP {status})", file=sys.stderr)
        return 1
    if args.action == "list":
        print(json.dumps(found, indent=2) if args.json else table(found))
        return 0
    note = ("; not persisted or shared: state: memory:" if not found.get("persistent") else
            "" if found.get("stored") else
            "; the state store is unreachable: it is written when the store answers")
    print(f"{found['upstream']}: {found['admin']} (was {found['before']}; {ACTIONS[found['admin']]})"
          f"{note}")
    return 0
