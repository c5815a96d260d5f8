"""The runtime's driver (proxy/runtime/server.py): feeds the core, carries out its Effects and
keeps one timer armed. Tested as uvicorn tests its protocols: the real Runtime on a real event
loop, with mock transports in place of sockets, so nothing leaves the process."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from proxy.config import Config, Listen, Upstream
from proxy.core.types import Send, Source
from proxy.policy import BUILTIN_POLICY
from proxy.runtime.server import Runtime
from proxy.sip import parse_message
from tests.unit.core_harness import request

CALLER = Source("udp", "127.0.0.1", 6000)


class MockTransport:
    """Records every Send instead of writing to a socket (proxy.transport.base.Transport)."""

    transport = None  # no asyncio transport to close behind it

    def __init__(self) -> None:
        self.sent: list[Send] = []

    def send(self, s: Send) -> None:
        self.sent.append(s)

    def to(self, port: int) -> list[bytes]:
        return [s.data for s in self.sent if s.port == port]


def make_runtime(tmp_path: Path) -> tuple[Runtime, MockTransport]:
    config = Config(
        path=tmp_path / "proxy.yaml",
        listen=(Listen("udp", "127.0.0.1", 5060),),
        upstreams=(Upstream("sip:127.0.0.1:5080", "127.0.0.1", 5080, "udp"),
                   Upstream("sip:127.0.0.1:5081", "127.0.0.1", 5081, "udp")),
    )
    rt = Runtime(config, BUILTIN_POLICY)
    mock = MockTransport()
    rt.udp[socket.AF_INET] = mock  # type: ignore[assignment]
    return rt, mock


async def test_a_message_in_gives_its_sends_out_and_arms_the_timer(tmp_path: Path) -> None:
    """deliver(): 100 Trying to the caller, the INVITE to the first upstream, and one timer
    armed at the core's next deadline (Timer A/B of the new branch)."""
    rt, mock = make_runtime(tmp_path)
    rt.deliver(request(), CALLER)
    assert [parse_message(d).status for d in mock.to(6000)] == [100]
    assert [parse_message(d).method for d in mock.to(5080)] == ["INVITE"]
    assert rt._timer is not None
    assert rt._armed_at == rt.core.next_deadline()
    rt.close()


async def test_a_failed_send_is_fed_back_and_fails_over(tmp_path: Path) -> None:
    """failed(token): RFC 3261 16.9, a transport error is a 503 to the response context; the
    default policy fails over to the next upstream."""
    rt, mock = make_runtime(tmp_path)
    rt.deliver(request(), CALLER)
    [branch] = [s for s in mock.sent if s.port == 5080]
    rt.failed(branch.token)
    assert [parse_message(d).method for d in mock.to(5081)] == ["INVITE"]
    rt.close()


async def test_the_timer_fires_the_core_and_rearms(tmp_path: Path) -> None:
    """_fire(): the core's timers run (Timer A retransmits the INVITE over UDP) and the next
    deadline is armed again."""
    rt, mock = make_runtime(tmp_path)
    rt.deliver(request(), CALLER)
    first = rt._armed_at
    rt._fire()
    assert len(mock.to(5080)) == 2, "Timer A retransmitted the INVITE"
    assert rt._armed_at > first
    rt.close()


async def test_an_internal_error_is_logged_and_the_process_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in the core for one message must not stop the runtime: it is logged and counted,
    the timers stay armed, and the next message is handled."""
    rt, mock = make_runtime(tmp_path)
    rt.deliver(request(), CALLER)
    real = rt.core

    class Broken:
        """The core with a bug in on_message (a wrapper: a compiled class is not patchable)."""

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def on_message(self, *args: object) -> object:
            raise RuntimeError("boom")

    monkeypatch.setattr(rt, "core", Broken())
    rt.deliver(request(call_id="second"), CALLER)
    assert rt.errors == 1 and "internal error handling a message" in caplog.text
    assert rt._timer is not None
    monkeypatch.setattr(rt, "core", real)
    rt.deliver(request(call_id="third", branch="z9hG4bKthird"), CALLER)
    assert len(mock.to(5080)) == 2
    rt.close()
