"""The command line: ``sip-policy-proxy run | check | explain | status | routes |
registrations`` (also ``python -m proxy``); ``COMMAND --help`` describes each.

Exit codes: 0 success; 1 an invalid configuration or policy file (its diagnostics on stderr,
one ``FILE:LINE:COLUMN: message`` per line), a ``routes`` command that failed (a
``memory:`` state, a store error, no such route), or output whose reader went away (a closed
pipe); 2 a usage error (bad option or argument).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from proxy import COMPILED, __version__, build_kind
from proxy.config import LOG_LEVELS, Config, load_config, load_config_and_policy
from proxy.diagnostics import ConfigError, Diagnostic, display_path
from proxy.policy import MAX_STATUS, MIN_STATUS, Policy, load_policy
from proxy.policy_check import explain_chain, explain_route, parse_instant, run_tests
from proxy.status_cli import add_parser as add_status_parser
from proxy.store import LearnedRoute, StateStore, StoredBinding, StoreError, open_store
from proxy.trace_cli import add_parser as add_trace_parser
from proxy.upstreams_cli import add_parser as add_upstreams_parser

__all__ = ["explain_chain", "main", "version_text"]

PROG = "sip-policy-proxy"
DEFAULT_CONFIG = "proxy.yaml"
_METHOD = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")  # RFC 3261 25.1 token
MEMORY_STATE_MESSAGE = "state is memory: nothing is persisted; use sqlite: or redis://"

RUN_DESCRIPTION = (
    "Run the proxy in the foreground with the configuration, logging to stderr. It prints "
    "'listening on TRANSPORT:HOST:PORT' for each socket and 'sip-policy-proxy ready' once it "
    "serves. SIGHUP reloads the policy file (a broken one is refused and the running policy "
    "stays) and the TLS certificates. SIGTERM or SIGINT drains: new requests get 503 with "
    "Retry-After, calls up go on until their BYE, for at most drain_timeout seconds, then exit "
    "0; a second signal exits at once. Exit 1 when the configuration or the policy is invalid "
    "(FILE:LINE:COLUMN lines on stderr) or a socket cannot be bound. With workers above 1 "
    "(workers: N in the configuration, or --workers), a supervisor forks N processes on the "
    "same addresses, says 'sip-policy-proxy ready (N workers)' once all are, passes the "
    "signals on and restarts a worker that dies.")
CHECK_DESCRIPTION = (
    f"Validate a configuration and the policy file it names (--config, default "
    f"./{DEFAULT_CONFIG}), or one policy file alone (--policy), without starting anything: "
    "nothing is bound and no state store is connected. Prints 'OK: ...' and exits 0 when "
    "valid; otherwise one 'FILE:LINE:COLUMN: message' line per error on stderr and exit 1. "
    "Warnings ('FILE:LINE:COLUMN: warning: ...') do not fail.")
EXPLAIN_DESCRIPTION = (
    "Print the policy rule that decides a final response with STATUS and its action, e.g. "
    "`explain --policy policies/default.yaml 604` prints 'global-failure: stop'. With --config "
    f"(default ./{DEFAULT_CONFIG} when --policy is not given) it also says what follows with "
    "that configuration: the next upstreams of a failover, which redirects are followed and "
    "for how long a 301 is remembered.")

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse's exits are returned too).

    Output piped into a reader that stops early (``registrations list | head``) ends the
    command quietly with status 1, as the Python documentation recommends for SIGPIPE
    (the ``signal`` module, "Note on SIGPIPE"), instead of a BrokenPipeError traceback.
    """
    parser = _parser()
    try:
        try:
            args = parser.parse_args(None if argv is None else list(argv))
        except SystemExit as exc:  # --help, usage errors
            sys.stdout.flush()
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if args.command == "run":  # logs to stderr; its own errors are its own
            code: int = args.func(args)
            return code
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _quiet_closed_pipe()
        return 1


def _quiet_closed_pipe() -> None:
    """The reader of stdout (or stderr) has gone: point both at /dev/null, so that Python's
    final flush at exit does not fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):  # no file descriptor (captured by a test)
            pass
    os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A SIP proxy whose final-response handling is a YAML policy.",
        epilog=f"`{PROG} COMMAND --help` says what each command does. Exit status: 0 done, 1 "
        "an invalid file or a failed command, 2 a usage error.",
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the version and the build (compiled with mypyc or pure "
                        "Python), then exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy in the foreground",
                         description=RUN_DESCRIPTION)
    run.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH",
                     help=f"the configuration file (default: ./{DEFAULT_CONFIG})")
    run.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                     help="override log_level of the configuration")
    run.add_argument("--workers", type=_workers, default=None, metavar="N",
                     help="override workers of the configuration: N processes on the same "
                     "addresses, or 'auto' (one per core)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate a configuration (and its policy) or a policy",
                           description=CHECK_DESCRIPTION)
    what = check.add_mutually_exclusive_group()
    what.add_argument("--config", metavar="PATH",
                      help=f"the configuration file (default: ./{DEFAULT_CONFIG})")
    what.add_argument("--policy", metavar="PATH", help="check this policy file alone")
    check.set_defaults(func=_cmd_check)

    explain = sub.add_parser("explain", help="which rule decides a status, and what happens",
                             description=EXPLAIN_DESCRIPTION)
    source = explain.add_mutually_exclusive_group()
    source.add_argument("--policy", metavar="PATH", help="the policy file")
    source.add_argument("--config", metavar="PATH",
                        help="the configuration (its policy and upstreams; "
                        f"default: ./{DEFAULT_CONFIG})")
    explain.add_argument("status", type=_status, metavar="STATUS",
                         help=f"a response status {MIN_STATUS}..{MAX_STATUS}")
    explain.add_argument("--method", type=_method, default="INVITE",
                         help="the request method (default: INVITE)")
    call = explain.add_argument_group(
        "a call (with --config): the route it takes, then the rule deciding STATUS from the "
        "first upstream of its group")
    call.add_argument("--ruri", metavar="URI", help="the Request-URI (also the To)")
    call.add_argument("--from", dest="from_uri", metavar="URI", help="the From URI")
    call.add_argument("--source", type=_address, metavar="IP",
                      help="the address the request comes from")
    call.add_argument("--time", type=_instant, metavar="ISO",
                      help="when, ISO 8601 with an offset (default: now)")
    explain.set_defaults(func=_cmd_explain)

    # `--config` is accepted before or after the action (`routes --config X list` and
    # `routes list --config X`); given after, it wins (SUPPRESS keeps the default out).
    config_help = f"the configuration naming the state store (default: ./{DEFAULT_CONFIG})"
    leaf_config = argparse.ArgumentParser(add_help=False)
    leaf_config.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                             help=config_help)
    _routes_parser(sub, leaf_config, config_help)
    add_status_parser(sub, DEFAULT_CONFIG)
    add_trace_parser(sub, DEFAULT_CONFIG)
    add_upstreams_parser(sub, DEFAULT_CONFIG)
    _registrations_parser(sub, leaf_config, config_help)
    return parser


def _routes_parser(sub: Any, leaf_config: argparse.ArgumentParser, config_help: str) -> None:
    actions, listing = _store_command(
        sub, leaf_config, config_help, "routes",
        "list or forget the rewrites learned from 301/302 (the state store)",
        "The Request-URI rewrites learned from 301 (and 302 with an expiry), as persisted in "
        "the state store named by the configuration (RFC 3261 21.3.2).",
        "print every unexpired learned route")
    listing.set_defaults(func=_cmd_routes_list)
    remove = actions.add_parser(
        "remove", parents=[leaf_config], help="forget the route learned for one Request-URI",
        description="Forget the route learned for one Request-URI (as `routes list` shows it); "
        "a running proxy forgets it too, within a second. Exit 1 when there is none.")
    remove.add_argument("uri", metavar="URI", help="the old Request-URI, as `routes list` shows it")
    remove.set_defaults(func=_cmd_routes_remove)
    clear = actions.add_parser(
        "clear", parents=[leaf_config], help="forget every learned route",
        description="Forget every learned route in the state store; running proxies forget "
        "them too, within a second.")
    clear.set_defaults(func=_cmd_routes_clear)


def version_text() -> str:
    """``sip-policy-proxy 0.1.0 (compiled: mypyc)`` or ``... (pure Python)``."""
    kind = build_kind()
    return f"{PROG} {__version__} ({'compiled: mypyc' if kind == COMPILED else kind})"


class _VersionAction(argparse.Action):
    """``--version``: like argparse's, but the build is looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(version_text())
        parser.exit()


def _status(text: str) -> int:
    if not text.isdigit() or not text.isascii() or not MIN_STATUS <= int(text) <= MAX_STATUS:
        raise argparse.ArgumentTypeError(
            f"invalid status {text!r}: expected an integer {MIN_STATUS}..{MAX_STATUS}"
        )
    return int(text)


def _method(text: str) -> str:
    if not _METHOD.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid method {text!r}: expected a token like INVITE")
    if text != text.upper():
        raise argparse.ArgumentTypeError(
            f"method {text!r} must be uppercase (SIP methods are case-sensitive, RFC 3261 7.1)"
        )
    return text


def _address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected an IP address "
                                         "like 10.1.2.3") from None


def _instant(text: str) -> float:
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: expected ISO 8601 with an offset, like "
            f"2026-03-02T09:30:00+01:00 ({exc})") from None


def _print_all(diagnostics: Sequence[Diagnostic], stream: TextIO) -> None:
    for d in diagnostics:
        print(d, file=stream)


def _reported(load: Callable[[], T]) -> T | None:
    """``load()``; None when it raises :class:`ConfigError`, whose diagnostics go to stderr."""
    try:
        return load()
    except ConfigError as exc:
        _print_all(exc.diagnostics, sys.stderr)
        return None


def _load_policy_or_config(args: argparse.Namespace) -> tuple[Config | None, Policy] | None:
    """The policy of ``--policy`` alone (config None), or else the configuration of
    ``--config`` (default ./proxy.yaml) with its policy. Warnings are printed on stderr;
    None when a file is invalid (its errors printed)."""
    config: Config | None = None
    if args.policy is not None:
        policy_only = _reported(lambda: load_policy(args.policy))
        if policy_only is None:
            return None
        policy, warnings = policy_only
    else:
        loaded = _reported(lambda: load_config_and_policy(args.config or DEFAULT_CONFIG))
        if loaded is None:
            return None
        config, policy, warnings = loaded
    _print_all(warnings, sys.stderr)
    return config, policy


# ---------------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    loaded = _reported(lambda: load_config_and_policy(args.config))
    if loaded is None:
        return 1
    config, policy, warnings = loaded
    if args.log_level is not None:
        config = dataclasses.replace(config, log_level=args.log_level)
    if args.workers is not None:
        config = dataclasses.replace(config, workers=args.workers)
    from proxy.runtime.server import run_server  # the only owner of the event loop

    if config.workers > 1:  # a supervisor forking the workers (README "Workers")
        from proxy.runtime.workers import supervise

        return supervise(config, policy, warnings,
                         lambda cfg, pol, worker: run_server(cfg, pol, None, worker))
    code: int = run_server(config, policy, warnings)
    return code


def _workers(text: str) -> int:
    """``--workers N`` (1..256) or ``auto``."""
    from proxy.config.workers import MAX_WORKERS, cores

    if text.strip().lower() == "auto":
        return min(cores(), MAX_WORKERS)
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_WORKERS} or auto, got {text!r}")
    return int(text)


def _cmd_check(args: argparse.Namespace) -> int:
    loaded = _load_policy_or_config(args)
    if loaded is None:
        return 1
    config, policy = loaded
    if config is None:
        print(f"OK: {args.policy} (version {policy.version}, {_rules(policy)})")
        if policy.tests:
            n = len(policy.tests)
            print(f"tests: {n} not run: they need the upstream groups of a configuration "
                  "(check --config PATH)")
        return 0
    passed, failures = run_tests(config, policy)
    if failures:
        for line in failures:
            print(line, file=sys.stderr)
        print(f"tests: {len(failures)} failed, {passed} passed", file=sys.stderr)
        return 1
    print(f"OK: {args.config or DEFAULT_CONFIG} (policy {_policy_name(config)} "
          f"version {policy.version}, {_rules(policy)})")
    if policy.tests:
        print(f"tests: {passed} passed")
    if config.state_kind == "redis":
        print(_state_plan(config))
    return 0


def _state_plan(config: Config) -> str:
    """What `run` will do with a Redis state, said without connecting to it (`check`)."""
    import socket

    from proxy.config.loader import redacted_state

    node = config.node or f"{socket.gethostname()}:{config.listen[0].port}"
    return (f"state {redacted_state(config.state)} (node {node}): not connected by check; run "
            "connects at start and, while the store is unreachable, relays calls on what it "
            "holds in memory and retries in the background")


def _cmd_explain(args: argparse.Namespace) -> int:
    status: int = args.status
    method: str = args.method
    call = (args.ruri, args.from_uri, args.source, args.time)
    if args.policy is not None and any(v is not None for v in call):
        print(f"{PROG} explain: --ruri, --from, --source and --time need --config (the "
              "upstream groups), not --policy", file=sys.stderr)
        return 2
    loaded = _load_policy_or_config(args)
    if loaded is None:
        return 1
    config, policy = loaded
    if config is None:
        print(policy.explain(status, method))
    elif any(v is not None for v in call):
        for line in explain_route(config, policy, status, method, args.ruri or "",
                                  args.from_uri or "", args.source or "", args.time):
            print(line)
    else:
        print(explain_chain(config, policy, status, method))
    return 0


# ---------------------------------------------------------------------------------------------
# routes: the learned rewrites in the state store (RFC 3261 21.3.2)


class _RoutesFailed(Exception):
    """A ``routes`` command cannot go on; the reason is already on stderr."""


def _cmd_routes_list(args: argparse.Namespace) -> int:
    try:
        none: list[LearnedRoute] = []
        routes = _with_store(args.config, lambda store: store.list_routes(time.time()), none)
    except _RoutesFailed:
        return 1
    if args.json:
        print(json.dumps([_route_json(r) for r in routes], indent=2))
    elif not routes:
        print("no learned routes")
    else:
        print(_route_table(routes))
    return 0


def _cmd_routes_remove(args: argparse.Namespace) -> int:
    wanted = _candidate_keys(args.uri)

    async def remove(store: StateStore) -> str | None:
        for key in wanted:
            if await store.remove_route(key):
                return key
        return None

    try:
        removed = _with_store(args.config, remove, None)
    except _RoutesFailed:
        return 1
    if removed is None:
        print(f"no learned route for {_printable(args.uri)}", file=sys.stderr)
        return 1
    print(f"removed the learned route for {_printable(removed)}")
    return 0


def _cmd_routes_clear(args: argparse.Namespace) -> int:
    try:
        count = _with_store(args.config, lambda store: store.clear_routes(), 0)
    except _RoutesFailed:
        return 1
    print(f"removed {count} learned route{'' if count == 1 else 's'}")
    return 0


def _with_store(config_path: str, action: Callable[[StateStore], Awaitable[T]], missing: T) -> T:
    """Run ``action`` on the opened state store of the configuration at ``config_path``.

    Raises :class:`_RoutesFailed`, with the reason printed on stderr, when that is not
    possible (an invalid configuration, a ``memory:`` state, a store error). ``missing`` is
    the result when the sqlite file does not exist yet: looking at (or clearing) a store that
    was never written does not create it.
    """
    loaded = _reported(lambda: load_config(config_path))
    if loaded is None:
        raise _RoutesFailed
    config, _ = loaded
    shown = display_path(config.path)
    if config.state_kind == "memory":
        print(f"{shown}: {MEMORY_STATE_MESSAGE}", file=sys.stderr)
        raise _RoutesFailed
    if config.state_kind == "sqlite" and not Path(config.state[len("sqlite:"):]).exists():
        return missing
    try:
        store = open_store(config.state)
    except (ValueError, NotImplementedError) as exc:
        print(f"{shown}: state {config.state}: {exc}", file=sys.stderr)
        raise _RoutesFailed from None

    async def run() -> T:
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise _RoutesFailed from None


def _candidate_keys(text: str) -> list[str]:
    """The store keys ``text`` may stand for: as given (``<>`` removed), then with the scheme
    and host lower-cased as the parser writes them (both case-insensitive, RFC 3261 19.1.4)."""
    from proxy.sip import ParseError, parse_uri

    uri = text.strip()
    if uri.startswith("<") and uri.endswith(">"):
        uri = uri[1:-1].strip()
    keys = [uri]
    try:
        canonical = str(parse_uri(uri))
    except ParseError:
        return keys
    if canonical != uri:
        keys.append(canonical)
    return keys


def _iso(t: float) -> str:
    """Unix time -> ``2023-11-14T22:13:20Z`` (UTC, ISO 8601)."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _route_json(r: LearnedRoute) -> dict[str, Any]:
    return {
        "old_uri": r.old_uri,
        "new_uri": r.new_uri,
        "status": r.status,
        "source": r.source,
        "call_id": r.call_id,
        "learned_at": _iso(r.created_at),
        "expires_at": _iso(r.expires_at),
        "learned_at_unix": r.created_at,
        "expires_at_unix": r.expires_at,
    }


ROUTE_COLUMNS = ("OLD URI", "NEW URI", "STATUS", "SOURCE", "CALL-ID", "LEARNED AT (UTC)",
                 "EXPIRES AT (UTC)")


def _route_table(routes: Sequence[LearnedRoute]) -> str:
    rows = [ROUTE_COLUMNS] + [
        (_printable(r.old_uri), _printable(r.new_uri), str(r.status), _printable(r.source),
         _printable(r.call_id), _iso(r.created_at), _iso(r.expires_at))
        for r in routes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(ROUTE_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _printable(text: str) -> str:
    """``text`` with control characters escaped: stored values came from the network and must
    not drive the operator's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _rules(policy: Policy) -> str:
    n = len(policy.rules)
    text = f"{n} rule" if n == 1 else f"{n} rules"
    if policy.routes:
        r = len(policy.routes)
        text += f", {r} route" if r == 1 else f", {r} routes"
    return text


def _policy_name(config: Config) -> str:
    return display_path(config.policy_path) if config.policy_path is not None else "builtin"


# ---------------------------------------------------------------------------------------------
# registrations: the bindings in the state store (RFC 3261 10.3, RFC 5626)


def _store_command(
    sub: Any, leaf_config: argparse.ArgumentParser, config_help: str, name: str, help: str,
    description: str, list_help: str,
) -> tuple[Any, argparse.ArgumentParser]:
    """A command over the state store (``routes``, ``registrations``): ``--config`` and a
    ``list [--json]`` action; returns its actions (for more) and the ``list`` parser."""
    command = sub.add_parser(name, help=help, description=description)
    command.add_argument("--config", default=DEFAULT_CONFIG, metavar="PATH", help=config_help)
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[leaf_config], help=list_help,
        description=f"{list_help[0].upper()}{list_help[1:]} in the state store named by the "
        "configuration, as a table (or a JSON array with --json).")
    listing.add_argument("--json", action="store_true",
                         help="print a JSON array (for scripts) instead of a table")
    return actions, listing


def _registrations_parser(sub: Any, leaf_config: argparse.ArgumentParser, config_help: str
                          ) -> None:
    actions, listing = _store_command(
        sub, leaf_config, config_help, "registrations",
        "list or remove the registrations (bindings) in the state store",
        "The registrations (bindings of each address-of-record, RFC 3261 10.3) as persisted "
        "in the state store named by the configuration. With a Redis state every running "
        "proxy sees a removal within a second.",
        "print every unexpired binding")
    listing.set_defaults(func=_cmd_registrations_list)
    remove = actions.add_parser(
        "remove", parents=[leaf_config], help="remove every binding of one address-of-record",
        description="Remove every binding of one address-of-record (e.g. "
        "sip:alice@example.com): calls to it are no longer routed to the phone until it "
        "registers again. Exit 1 when it has none.")
    remove.add_argument("aor", metavar="AOR", help="the address-of-record, e.g. sip:alice@example.com")
    remove.set_defaults(func=_cmd_registrations_remove)


def _cmd_registrations_list(args: argparse.Namespace) -> int:
    try:
        none: list[StoredBinding] = []
        found = _with_store(args.config, lambda store: store.list_bindings(time.time()), none)
    except _RoutesFailed:
        return 1
    if args.json:
        print(json.dumps([_binding_json(b) for b in found], indent=2))
    elif not found:
        print("no registrations")
    else:
        print(_table(BINDING_COLUMNS, [
            (_printable(b.aor), _printable(b.contact), _iso(b.expires_at), f"{b.q:g}",
             _printable(f"{b.flow_transport}:{b.flow_host}:{b.flow_port}"),
             _printable(b.node or "-"))
            for b in found]))
    return 0


def _cmd_registrations_remove(args: argparse.Namespace) -> int:
    wanted = _candidate_keys(args.aor)
    try:
        from proxy.sip import SipUri, parse_uri

        uri = parse_uri(wanted[-1])
        if isinstance(uri, SipUri):
            wanted.append(uri.aor)  # the key the registrar stores: user@host (RFC 3261 10.3)
    except Exception:  # noqa: BLE001 - not a URI: only the text as given is tried
        pass

    async def remove(store: StateStore) -> str | None:
        aors = {b.aor for b in await store.list_bindings(time.time())}
        for key in wanted:
            if key in aors:
                await store.remove_bindings(key)
                return key
        return None

    try:
        removed = _with_store(args.config, remove, None)
    except _RoutesFailed:
        return 1
    if removed is None:
        print(f"no registration for {_printable(args.aor)}", file=sys.stderr)
        return 1
    print(f"removed the registrations of {_printable(removed)}")
    return 0


BINDING_COLUMNS = ("AOR", "CONTACT", "EXPIRES AT (UTC)", "Q", "FLOW", "NODE")


def _binding_json(b: StoredBinding) -> dict[str, Any]:
    return {
        "aor": b.aor, "key": b.key, "contact": b.contact, "uri": b.uri, "q": b.q,
        "expires_at": _iso(b.expires_at), "expires_at_unix": b.expires_at,
        "registered_at": _iso(b.registered_at), "registered_at_unix": b.registered_at,
        "call_id": b.call_id, "cseq": b.cseq, "instance": b.instance, "reg_id": b.reg_id,
        "flow": {"transport": b.flow_transport, "host": b.flow_host, "port": b.flow_port},
        "node": b.node or None,
    }


def _table(columns: tuple[str, ...], body: list[tuple[str, ...]]) -> str:
    rows = [columns, *body]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
