"""The pieces of ``workers: N`` that need no process (README "Workers"): which socket a
worker sends from, the addresses it gives the core and announces, its configuration, the key
the workers share."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from proxy.config import Config, Listen
from proxy.core.types import LocalAddress, Send
from proxy.runtime.workers import (
    Worker,
    WorkerEndpoint,
    bind_own,
    local_addresses,
    node_name,
    shared_secret,
    worker_config,
)
from proxy.transport.udp import UdpEndpoint

INVITE = b"INVITE sip:bob@example.com SIP/2.0\r\n\r\n"
OK = b"SIP/2.0 200 OK\r\n\r\n"


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True


def endpoints() -> tuple[WorkerEndpoint, FakeTransport, FakeTransport]:
    def deliver(*_: Any) -> None:
        pass

    shared = WorkerEndpoint(deliver, None, None, None)
    own = UdpEndpoint(deliver)
    st, ot = FakeTransport(), FakeTransport()
    shared.connection_made(st)  # type: ignore[arg-type]
    own.connection_made(ot)  # type: ignore[arg-type]
    shared.own = own
    return shared, st, ot


def test_requests_leave_from_the_own_socket_responses_from_the_shared_one() -> None:
    """RFC 3261 18.2.2: the response to what the worker forwards comes back to its Via's
    port, its own; RFC 3581 4: a response leaves from where the request came."""
    shared, st, ot = endpoints()
    shared.send(Send("udp", "127.0.0.1", 5070, INVITE))
    shared.send(Send("udp", "127.0.0.1", 6000, OK))
    assert ot.sent == [(INVITE, ("127.0.0.1", 5070))]
    assert st.sent == [(OK, ("127.0.0.1", 6000))]


def test_a_peer_heard_on_the_shared_socket_gets_requests_from_it() -> None:
    """A phone behind a port-restricted NAT registered to the shared address only lets in
    what comes from there; its datagrams hash to this worker, so its answers come back."""
    shared, st, ot = endpoints()
    shared.datagram_received(b"REGISTER sip:example.com SIP/2.0\r\n\r\n", ("192.0.2.7", 40000))
    shared.send(Send("udp", "192.0.2.7", 40000, INVITE))
    shared.send(Send("udp", "192.0.2.7", 40001, INVITE))
    assert st.sent == [(INVITE, ("192.0.2.7", 40000))]
    assert ot.sent == [(INVITE, ("192.0.2.7", 40001))]


def test_a_peer_whose_datagram_another_worker_read_is_heard_here_too() -> None:
    """``workers_spread: call``: a REGISTER read by another worker and handed on here
    (proxy.runtime.handoff) makes its source a peer heard on the shared socket by this worker,
    the one that handles it: requests to it leave from the shared socket, and it is
    delivered as a datagram read here would be."""
    delivered: list[tuple[bytes, Any]] = []
    shared, st, ot = endpoints()
    shared._deliver = lambda data, src: delivered.append((data, src))
    register = b"REGISTER sip:example.com SIP/2.0\r\n\r\n"
    shared.handed(register, ("192.0.2.8", 40000))
    assert [(d, (s.host, s.port)) for d, s in delivered] == [(register, ("192.0.2.8", 40000))]
    shared.send(Send("udp", "192.0.2.8", 40000, INVITE))
    assert st.sent == [(INVITE, ("192.0.2.8", 40000))] and ot.sent == []


def test_heard_peers_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.runtime import workers

    monkeypatch.setattr(workers, "PEERS_KEPT", 3)
    shared, _, _ = endpoints()
    for port in range(5):
        shared.datagram_received(b"\r\n\r\n", ("192.0.2.1", 1000 + port))
    assert list(shared.heard) == [("192.0.2.1", 1002), ("192.0.2.1", 1003), ("192.0.2.1", 1004)]


def test_closing_the_shared_socket_closes_the_own_one() -> None:
    shared, _, ot = endpoints()
    shared.connection_lost(None)
    assert ot.closed


def config(**kw: Any) -> Config:
    listen = (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    return Config(path=Path("/tmp/proxy.yaml"), listen=listen, workers=2, **kw)


def test_the_core_gets_the_own_port_as_via_sent_by_and_the_node_announces_it_alone() -> None:
    cfg = config()
    own = bind_own(cfg)
    try:
        port = own[0].getsockname()[1]
        local, announced = local_addresses(cfg, Worker(0, 2, None, own))
        assert local[0] == LocalAddress("udp", "127.0.0.1", 5060, "127.0.0.1:5060",
                                        f"127.0.0.1:{port}")
        assert local[1] == LocalAddress("tcp", "127.0.0.1", 5060, "127.0.0.1:5060")
        mine = LocalAddress("udp", "127.0.0.1", port, f"127.0.0.1:{port}")
        assert local[2:] == [mine] and announced == (mine,)
    finally:
        for sock in own.values():
            sock.close()


def test_a_lone_proxy_announces_its_listeners() -> None:
    local, announced = local_addresses(config(), None)
    assert [a.sent_by for a in local] == ["", ""] and announced == tuple(local)


def test_without_a_udp_listener_a_worker_still_has_an_own_udp_port() -> None:
    cfg = Config(path=Path("/tmp/proxy.yaml"), listen=(Listen("tcp", "127.0.0.1", 5060),))
    own = bind_own(cfg)
    try:
        assert list(own) == [-1] and own[-1].type == socket.SOCK_DGRAM
    finally:
        own[-1].close()


def test_each_worker_is_a_node_with_its_http_port() -> None:
    cfg = config(node="edge-1", http=("127.0.0.1", 9090))
    assert node_name(cfg, 1) == "edge-1/w1"
    w1 = worker_config(cfg, 1)
    assert (w1.node, w1.http) == ("edge-1/w1", ("127.0.0.1", 9091))
    assert worker_config(cfg, 0).http == ("127.0.0.1", 9090)
    assert node_name(config(), 0) == f"{socket.gethostname()}:5060/w0"


def test_the_workers_share_one_key() -> None:
    drawn = shared_secret(config())
    assert drawn.secret is not None and len(drawn.secret) == 64
    assert shared_secret(config(secret="configured-secret-0123456789")).secret == \
        "configured-secret-0123456789"
    # a Redis state agrees on the key through the store (proxy/runtime/state_key.py)
    assert shared_secret(config(state="redis://127.0.0.1:6379/0")).secret is None
