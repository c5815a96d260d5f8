"""``sip-policy-proxy status --config PATH``: ask the running proxy (its ``http:`` endpoint,
``/status``) how it is doing, and print a table: upstreams up or down, registrations, learned
routes, transactions in progress, calls up, the policy version and the uptime.

Exit codes: 0 printed; 1 the configuration is invalid, has no ``http:`` key, or the proxy does
not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from proxy.config import load_config
from proxy.diagnostics import ConfigError, display_path
from proxy.sip import host_port_text


def add_parser(sub: Any, default_config: str) -> None:
    status = sub.add_parser(
        "status", help="show the running proxy's state (its http endpoint)", description=(
            "Ask the running proxy, at the http: HOST:PORT of its configuration (/status), how "
            "it is doing, and print a table: each upstream up or DOWN, registrations, learned "
            "routes, transactions in progress, calls up, the policy version and the uptime. "
            "Exit 1 when the configuration is invalid, has no http: key, or the proxy does not "
            "answer."))
    status.add_argument("--config", default=default_config, metavar="PATH",
                        help=f"the configuration naming the http endpoint (default: ./"
                        f"{default_config})")
    status.add_argument("--json", action="store_true", help="print the raw JSON instead")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="how long to wait for the proxy (default: 5)")
    status.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        return 1
    if config.http is None:
        print(f"{display_path(config.path)}: no http: HOST:PORT key, so the proxy serves no "
              "status; add e.g. http: 127.0.0.1:9090", file=sys.stderr)
        return 1
    host, port = config.http
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    url = f"http://{host_port_text(host, port)}/status"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as r:
            status = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot read {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=2) if args.json else status_table(status))
    return 0


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def status_table(st: dict[str, Any]) -> str:
    """The ``/status`` answer as a two-column table."""
    rows: list[tuple[str, str]] = []
    ups = st.get("upstreams", [])
    probing = "" if st.get("probing") else " (not probed)"
    for u in ups:
        groups = f" ({', '.join(u['groups'])})" if u.get("groups") else ""
        if u.get("resolved"):
            groups += f" target {u.get('target')}"  # a resolved address of a name (RFC 3263)
        held = u.get("held_for") or 0
        state = f"DOWN (held down {held:g} s more by the policy)" if held else (
            ("up" if u["up"] else "DOWN") + probing)
        admin = u.get("admin", "up")  # drained or down by an operator (`upstreams list`)
        rows.append((f"upstream {u['upstream']}{groups}",
                     state + ("" if admin == "up" else f", {admin.upper()} by an operator")))
    if not ups:
        rows.append(("upstreams", "(none)"))
    rows += [
        ("registrations", str(st.get("registrations", "?"))),
        ("learned routes", str(st.get("learned_routes", "?"))),
        ("transactions in progress", str(st.get("transactions", "?"))),
        ("calls up", str(st.get("dialogs", "?"))),
        ("policy version", f"{st.get('policy_version', '?')} ({st.get('policy', '?')})"),
        ("uptime", _duration(float(st.get("uptime_seconds", 0)))),
        ("state", "draining" if st.get("draining") else "serving"),
        ("state store", "ok" if st.get("store_ok", True) else "UNREACHABLE"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
