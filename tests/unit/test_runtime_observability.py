"""The runtime side of observability: the Prometheus collector over a core driven by hand,
the HTTP endpoint (standard library server, answers computed on the event loop), the JSON
log format, and the configuration keys (http, log_format, upstream_probe)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import load_config
from proxy.core.observe.metrics import CallLog
from proxy.core.types import Source
from proxy.runtime import http as http_side
from proxy.runtime import logs
from proxy.runtime.logs import JsonFormatter, emit_calls
from proxy.runtime.metrics import METRIC_NAMES, PREFIX, make_registry, render
from proxy.runtime.watchers import PolicyReloader
from tests.unit.core_harness import Harness, request, response_to

PBX = Source("udp", "127.0.0.1", 5080)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return found[(PREFIX + name, frozenset(labels.items()))]


def scraped(h: Harness, reloads: Counter[str] | None = None) -> dict:  # type: ignore[type-arg]
    return samples(render(make_registry(h.core, reloads or Counter(), 1.7e9)).decode())


def test_every_named_metric_is_exported_after_a_603_call() -> None:
    h = Harness.make(probe_interval=10.0)
    h.take(h.core.start_probes(h.now))
    h.feed(request())
    inv = [s for s in h.sent if s.port == 5080 and s.data.startswith(b"INVITE")][-1]
    h.now += 0.2
    h.feed(response_to(inv.data, 603), PBX)
    h.feed(b"garbage\r\n\r\n")
    h.feed(request("OPTIONS", branch="z9hG4bKrelay", call_id="relay@stranger",
                   extra=("Route: <sip:gw.example.net;lr>",)), Source("udp", "127.0.0.2", 6000))
    h.core.metrics.redirects["followed"] += 1
    h.core.metrics.flow_retries += 1
    found = scraped(h, Counter({"ok": 2, "refused": 1}))
    assert value(found, "requests_total", method="INVITE") == 1
    assert value(found, "responses_total", code="603") == 1
    assert value(found, "policy_decisions_total", rule="global-failure", action="stop") == 1
    assert value(found, "redirects_total", outcome="followed") == 1
    assert value(found, "redirects_total", outcome="learned") == 0
    assert value(found, "redirects_total", outcome="refused") == 0
    assert value(found, "flow_retries_total") == 1
    assert value(found, "bad_messages_total", reason="unparsable") == 1
    assert value(found, "refusals_total", reason="relay") == 1
    assert value(found, "policy_reloads_total", result="ok") == 2
    assert value(found, "policy_reloads_total", result="refused") == 1
    assert value(found, "learned_routes") == 0
    assert value(found, "registrations") == 0
    assert value(found, "transactions") >= 1
    assert value(found, "dialogs") == 0
    assert value(found, "upstream_up", upstream="sip:127.0.0.1:5080", group="default",
                 target="udp:127.0.0.1:5080") == 1
    assert value(found, "final_response_seconds_count") == 1
    assert value(found, "final_response_seconds_bucket", le="0.25") == 1
    assert value(found, "final_response_seconds_bucket", le="0.1") == 0
    assert value(found, "final_response_seconds_bucket", le="+Inf") == 1
    assert abs(value(found, "final_response_seconds_sum") - 0.2) < 1e-9
    assert any(name == "process_cpu_seconds_total" for name, _ in found)
    names = {n for n, _ in found if n.startswith(PREFIX)}
    for m in METRIC_NAMES:
        assert any(n.startswith(PREFIX + m) for n in names), m


def test_datagrams_the_flood_gate_dropped_are_refusals_of_reason_flood() -> None:
    """limits.udp_flood_rps: what the gate dropped before parsing is in refusals_total
    {reason="flood"} (datagrams) and flood_episodes_total (sources it started dropping)."""
    from proxy.transport.udp_gate import FloodGate

    h = Harness.make()
    gate = FloodGate(10)
    for _ in range(25):
        gate.admit("127.0.0.2", 6000, 1.0)
    found = samples(render(make_registry(h.core, Counter(), 1.7e9, gate=gate)).decode())
    assert value(found, "refusals_total", reason="flood") == 15
    assert value(found, "flood_episodes_total") == 1
    assert value(scraped(h), "refusals_total", reason="flood") == 0  # no gate: 0, still there


def test_refusals_are_counted_by_reason() -> None:
    """Every refusal is counted: a stranger's preloaded Route to another host (no open relay)
    shows as refusals_total{reason="relay"}."""
    h = Harness.make()
    stranger = Source("udp", "127.0.0.2", 6000)
    out = h.feed(request(via_host="127.0.0.2:6000",
                         extra=("Route: <sip:gw.example.net;lr>",)), stranger)
    assert any(s.data.startswith(b"SIP/2.0 403") for s in out)
    assert value(scraped(h), "refusals_total", reason="relay") == 1


def test_dialogs_and_upstream_down_show_in_the_gauges() -> None:
    h = Harness.make(probe_interval=5.0, probe_timeout=1.0)
    out = h.take(h.core.start_probes(h.now))
    [probe] = [s for s in out if s.port == 5081]
    h.feed(response_to(probe.data, 200), Source("udp", "127.0.0.1", 5081))
    h.advance(1.5)
    h.feed(request())
    inv = [s for s in h.sent if s.port == 5081 and s.data.startswith(b"INVITE")][-1]
    h.feed(response_to(inv.data, 200), Source("udp", "127.0.0.1", 5081))
    found = scraped(h)
    assert value(found, "dialogs") == 1
    assert value(found, "upstream_up", upstream="sip:127.0.0.1:5080", group="default",
                 target="udp:127.0.0.1:5080") == 0


def test_policy_reloads_count_ok_and_refused(tmp_path: Path) -> None:
    from tests.unit.core_harness import DEFAULT_POLICY, default_policy

    counts: Counter[str] = Counter()
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_POLICY.read_text())
    reloader = PolicyReloader(path, default_policy(), counts, lambda policy: None)
    path.write_text("rules: [\n")
    assert reloader.reload_now() is None
    path.write_text(DEFAULT_POLICY.read_text().replace("\n", "\n\n", 1))  # changed, valid
    assert reloader.reload_now() is not None
    assert counts == Counter({"refused": 1, "ok": 1})


# ------------------------------------------------------------------ HTTP


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_http_endpoints_answer_from_the_event_loop() -> None:
    h = Harness.make()
    rt = SimpleNamespace(core=h.core, store_ok=True, listening=True, started=1.7e9,
                         reloads=Counter(), loop=asyncio.get_running_loop(), tcp=None, tls=None,
                         ws=None, wss=None)
    ep = http_side.start(rt, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{ep.port}"
    try:
        assert await asyncio.to_thread(fetch, base + "/health") == (200, "ok\n")
        assert await asyncio.to_thread(fetch, base + "/ready") == (200, "ready\n")
        status, body = await asyncio.to_thread(fetch, base + "/metrics")
        assert status == 200 and "sip_policy_proxy_transactions 0.0" in body
        assert 'sip_policy_proxy_connections{state="open",transport="tcp"} 0.0' in body
        status, body = await asyncio.to_thread(fetch, base + "/status")
        assert status == 200 and json.loads(body)["upstreams"][0]["up"] is True
        rt.store_ok = False
        assert (await asyncio.to_thread(fetch, base + "/ready"))[0] == 503
        rt.store_ok = True
        h.core.drain(h.now)
        assert await asyncio.to_thread(fetch, base + "/ready") == (503, "draining\n")
        assert (await asyncio.to_thread(fetch, base + "/nope"))[0] == 404
    finally:
        ep.close()


# ------------------------------------------------------------------ logs


def test_json_lines_parse_and_carry_the_call() -> None:
    fmt = JsonFormatter()
    rec = logging.LogRecord("proxy.calls", logging.INFO, __file__, 1, "call %s", ("x",), None)
    rec.call = {"call_id": "abc", "status": 603}
    obj = json.loads(fmt.format(rec))
    assert obj["message"] == "call x" and obj["call"]["status"] == 603
    assert obj["level"] == "INFO" and obj["logger"] == "proxy.calls"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("proxy", logging.ERROR, __file__, 1, "bad", (), sys.exc_info())
    line = fmt.format(rec)
    assert "\n" not in line and "boom" in json.loads(line)["exception"]


def test_call_lines_go_to_the_calls_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "proxy.calls")
    emit_calls([CallLog("c1", "<sip:a@x>;tag=1", "<sip:b@y>", ("sip:up",),
                        (("global-failure", "stop", 603),), 603, 0.5)])
    [rec] = caplog.records
    assert "Call-ID=c1" in rec.getMessage() and "global-failure:stop(603)" in rec.getMessage()
    assert rec.call["status"] == 603  # type: ignore[attr-defined]


CALL = CallLog("c1", "<sip:a@x>;tag=1", "<sip:b@y>", ("sip:up",),
               (("global-failure", "stop", 603),), 603, 0.5)


@pytest.fixture
def installed_logging() -> Iterator[io.StringIO]:
    """logs.setup() as the proxy runs it, its stream a StringIO; the root logger restored."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield io.StringIO()
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        logs._installed = None


def lines_both_ways(stream: io.StringIO) -> tuple[str, str]:
    """The call line written directly, then through logging (a pass-through filter on the
    calls logger turns the direct write off, as any filter must)."""
    assert logs._installed is not None
    logs._installed.setStream(stream)
    assert logs._direct_handler() is logs._installed
    emit_calls([CALL])
    keep_all = logging.Filter()
    logs.calls_log.addFilter(keep_all)
    try:
        assert logs._direct_handler() is None
        emit_calls([CALL])
    finally:
        logs.calls_log.removeFilter(keep_all)
    direct, logged = stream.getvalue().splitlines()
    return direct, logged


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_call_line_written_directly_is_the_line_logging_writes(
    installed_logging: io.StringIO, fmt: str,
) -> None:
    """The per-call line skips the logging machinery when nothing else could see its record
    (the handler setup() installed is the only one): the same bytes but the time."""
    logs.setup("info", fmt)
    direct, logged = lines_both_ways(installed_logging)
    if fmt == "text":
        assert direct[23:] == logged[23:]  # after "YYYY-MM-DD HH:MM:SS,mmm"
        assert " INFO proxy.calls: call Call-ID=c1 " in direct
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", direct[:23])
    else:
        a, b = json.loads(direct), json.loads(logged)
        assert a.pop("time")[-1] == "Z" and b.pop("time")[-1] == "Z"
        assert a == b and a["call"]["status"] == 603


def test_a_call_line_goes_through_logging_when_anything_else_listens(
    installed_logging: io.StringIO, caplog: pytest.LogCaptureFixture,
) -> None:
    """Another handler (here caplog's, on the root), a level that hides info, a handler on
    the calls logger: the direct write steps aside and logging decides."""
    logs.setup("info", "text")
    assert logs._installed is not None
    logs._installed.setStream(installed_logging)
    root = logging.getLogger()
    root.addHandler(caplog.handler)  # setup() replaced every root handler, caplog's too
    try:
        assert logs._direct_handler() is None
        emit_calls([CALL])
    finally:
        root.removeHandler(caplog.handler)
    assert [r.name for r in caplog.records] == ["proxy.calls"]
    assert caplog.records[0].call["status"] == 603  # type: ignore[attr-defined]
    assert "Call-ID=c1" in installed_logging.getvalue()  # and the installed handler wrote it
    logs.setup("warning", "text")
    assert logs._direct_handler() is None
    logs.setup("info", "text")
    extra = logging.NullHandler()
    logs.calls_log.addHandler(extra)
    try:
        assert logs._direct_handler() is None
    finally:
        logs.calls_log.removeHandler(extra)
    assert logs._direct_handler() is logs._installed


# ------------------------------------------------------------------ config


def write(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "proxy.yaml"
    p.write_text("listen: [udp:127.0.0.1:5060]\nupstreams: [sip:127.0.0.1:5080]\n" + extra)
    return p


def test_observability_keys_and_defaults(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, ""))
    assert config.http is None and config.log_format == "text"
    assert (config.upstream_probe.interval, config.drain_timeout) == (10.0, 30.0)
    config, _ = load_config(write(tmp_path, "http: 127.0.0.1:9090\nlog_format: json\n"
                                  "upstream_probe: {interval: 0, timeout: 1.5}\n"))
    assert config.http == ("127.0.0.1", 9090) and config.log_format == "json"
    assert (config.upstream_probe.interval, config.upstream_probe.timeout) == (0.0, 1.5)


@pytest.mark.parametrize(("text", "message"), [
    ("http: 127.0.0.1", "http '127.0.0.1': the port is missing"),
    ("log_format: xml", "log_format must be one of text, json"),
    ("upstream_probe: {interval: -1}", "upstream_probe: interval must be between 0 and 3600"),
    ("upstream_probe: {every: 3}", "upstream_probe: unknown key 'every'"),
])
def test_observability_key_errors(tmp_path: Path, text: str, message: str) -> None:
    from proxy.diagnostics import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text + "\n"))
    assert any(message in str(d) for d in info.value.diagnostics), info.value.diagnostics


def test_text_lines_keep_the_standard_time_format() -> None:
    """The text formatter formats the date once per second; its lines are what
    logging.Formatter(TEXT_FORMAT) writes, milliseconds included, across a second's change."""
    from proxy.runtime.logs import TEXT_FORMAT, TextFormatter

    ours, standard = TextFormatter(), logging.Formatter(TEXT_FORMAT)
    for created in (1764547200.001, 1764547200.999, 1764547201.5, 1764547200.25):
        rec = logging.LogRecord("proxy.calls", logging.INFO, __file__, 1, "call %s", ("x",), None)
        rec.created, rec.msecs = created, (created - int(created)) * 1000
        assert ours.format(rec) == standard.format(rec)
