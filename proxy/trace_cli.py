"""``sip-policy-proxy trace CALL-ID [--http HOST:PORT] [--token T]``: the message ladder of
one recent call, as text, from the running proxy's ``GET /calls/CALL-ID`` (the same ladder
``/calls/CALL-ID/ladder`` draws).

The endpoint and the token default to the configuration's ``http:`` and ``http_token``
(``--config``, default ``./proxy.yaml``); ``--http`` and ``--token`` override them (then the
configuration is not read). Exit codes: 0 printed; 1 no such call, a refused token, or the
proxy does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

from proxy.config.syntax import split_hostport
from proxy.ladder import text
from proxy.sip import host_port_text


def add_parser(sub: Any, default_config: str) -> None:
    trace = sub.add_parser("trace", help="print the message ladder of a recent call",
                           description="The message ladder of one recent call (the proxy's "
                           "/calls/CALL-ID), with the policy decisions where they happened.")
    trace.add_argument("call_id", metavar="CALL-ID", help="the Call-ID (see GET /calls)")
    trace.add_argument("--http", metavar="HOST:PORT",
                       help="the proxy's http endpoint (default: http: of the configuration)")
    trace.add_argument("--token", metavar="T",
                       help="the bearer token (default: http_token of the configuration)")
    trace.add_argument("--config", default=default_config, metavar="PATH",
                       help=f"the configuration naming the endpoint (default: ./{default_config})")
    trace.add_argument("--json", action="store_true", help="print the call's JSON instead")
    trace.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                       help="how long to wait for the proxy (default: 5)")
    trace.set_defaults(func=cmd_trace)


def endpoint(args: argparse.Namespace) -> tuple[str, int, str | None] | None:
    """(host, port, token) from the options, else from the configuration; None: an error
    already printed."""
    token: str | None = args.token
    if args.http is not None:
        parsed = split_hostport(args.http.strip())
        if isinstance(parsed, str) or parsed[1] is None:
            why = parsed if isinstance(parsed, str) else "the port is missing"
            print(f"--http {args.http!r}: {why}; expected HOST:PORT", file=sys.stderr)
            return None
        return parsed[0], parsed[1], token
    from proxy.config import load_config
    from proxy.diagnostics import ConfigError, display_path

    try:
        config, _ = load_config(args.config)
    except ConfigError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        return None
    if config.http is None:
        print(f"{display_path(config.path)}: no http: HOST:PORT key; give --http HOST:PORT",
              file=sys.stderr)
        return None
    host, port = config.http
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return host, port, token if token is not None else config.http_token


def request(host: str, port: int, path: str, token: str | None, timeout: float,
            form: dict[str, str] | None = None) -> tuple[int, Any]:
    """(HTTP status, parsed JSON or the text) of a GET, or of a POST of ``form``."""
    url = f"http://{host_port_text(host, port)}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if form is not None:
        data = urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, headers=headers,
                                 method="POST" if form is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.strip()


def fetch_call(host: str, port: int, call_id: str, token: str | None,
               timeout: float) -> tuple[int, Any]:
    """(HTTP status, parsed JSON or the error text) of ``GET /calls/CALL-ID``."""
    return request(host, port, f"/calls/{quote(call_id, safe='', encoding='latin-1')}", token,
                   timeout)


def cmd_trace(args: argparse.Namespace) -> int:
    where = endpoint(args)
    if where is None:
        return 1
    host, port, token = where
    try:
        status, found = fetch_call(host, port, args.call_id, token, args.timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot read http://{host_port_text(host, port)}/calls: {exc}", file=sys.stderr)
        return 1
    if status == 401:
        print("the proxy refused the token (401): give --token or set http_token",
              file=sys.stderr)
        return 1
    if status != 200 or not isinstance(found, dict):
        why = found.get("error") if isinstance(found, dict) else found
        print(f"{args.call_id}: {why} (HTTP {status})", file=sys.stderr)
        return 1
    print(json.dumps(found, indent=2) if args.json else text(found))
    return 0
