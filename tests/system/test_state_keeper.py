"""The runtime's state keeper against real stores (sqlite, a real redis-server): the writes
pending at exit, a store reset under a running proxy, and the key shared through the store.

* 20,000 binding changes pending when the proxy exits are all written within the default
  drain_timeout (30 s), and the exit log says how many (the time it took is printed);
* a sqlite file replaced under the running keeper is noticed (its epoch) and gets this
  node's bindings written back; a Redis flushed likewise, while a live store's removal holds;
* without ``secret:`` two keepers on one store end with one key (the first one's), so a
  flow token one core mints decodes on the other; a configured secret wins and a difference
  is logged; a store down at start: the node's own key, then the store's, with the tokens
  minted meanwhile still valid.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.core.outbound.flowtoken import Flow
from proxy.core.registrar.location import Binding, BindingWrite, MemoryLocation
from proxy.core.types import LocalAddress, Source
from proxy.core.upstream_admin import AdminState
from proxy.runtime.state import StateKeeper
from proxy.store import StateStore, StoreChange, UpstreamState, open_store
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore
from tests.redis_harness import RedisServer
from tests.unit.core_harness import Harness

LOCAL = (LocalAddress("udp", "127.0.0.1", 5060, "127.0.0.1:5060"),)
FLOW = Flow("udp", "127.0.0.1", 5060, "192.0.2.9", 40000)


def keeper(store: StateStore, spec: str, *, node: str = "a", key: bytes = b"k" * 32,
           configured: bool = False) -> StateKeeper:
    core = Harness.make(registrar_local=True).core
    core.rekey(key, keep_old=False)
    assert isinstance(core.location, MemoryLocation)
    return StateKeeper(store, core, core.location, spec, node, LOCAL, lambda fx: None, key,
                       configured=configured)


def binding(i: int, now: float) -> Binding:
    uri = f"sip:u{i}@192.0.2.20:5060"
    return Binding(f"u{i}@example.com", f"<{uri}>", uri, now + 3600, 1.0, f"c{i}", 1,
                   Source("udp", "192.0.2.20", 5060), now)


def register(k: StateKeeper, count: int, start: int = 0) -> None:
    """``count`` REGISTERs' worth of changes, as the core journals them."""
    now = asyncio.get_running_loop().time()
    journal = k.location.journal
    assert journal is not None
    for i in range(start, start + count):
        b = binding(i, now)
        k.location.apply_save(b)
        journal.append(BindingWrite(b))
    k.bindings_changed(k.location.take_changes())


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) for a condition another task makes true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def spec_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.cli("flushall")
        return server.url
    return f"sqlite:{tmp_path / 'state.db'}"


# -- the exit -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_20000_changes_pending_at_exit_are_all_written_well_within_the_drain(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    spec = spec_of(kind, tmp_path, request)
    k = keeper(open_store(spec, node="a"), spec)
    await k.start()
    register(k, 20_000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with caplog.at_level(logging.INFO, "proxy.state"):
        await k.close(deadline=start + 30)
    took = loop.time() - start
    # The figure, for the record (speed is the benchmark's to prove): what counts here is
    # that all of them are written within the default drain_timeout.
    print(f"\n{kind}: 20,000 pending changes written at exit in {took:.2f} s")  # noqa: T201
    lines = [r.getMessage() for r in caplog.records if "at exit" in r.getMessage()]
    assert len(lines) == 1 and "20000 changes written at exit" in lines[0], lines
    # the store's generation moved under the once-a-second check: not mistaken for a reset
    assert not [r for r in caplog.records if "was reset" in r.getMessage()]
    async with open_store(spec, node="check") as s:
        assert len(await s.list_bindings(time.time())) == 20_000


async def test_what_cannot_be_written_at_exit_is_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from tests.e2e.harness import free_port

    spec = f"redis://127.0.0.1:{free_port(udp=False)}/0"  # nobody there
    store = RedisStore(spec, node="a", timeout=0.2)
    k = keeper(store, spec)
    with caplog.at_level(logging.INFO, "proxy.state"):
        await k.start()
        register(k, 10)
        await k.close(deadline=asyncio.get_running_loop().time() + 1)
    assert any("10 changes not written at exit" in r.getMessage() for r in caplog.records)


# -- a store reset under a running proxy -------------------------------------------------------


async def test_a_sqlite_file_replaced_under_the_proxy_gets_its_bindings_written_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    spec = f"sqlite:{path}"
    k = keeper(open_store(spec), spec)
    await k.start()
    try:
        register(k, 30)
        await until(lambda: k.written == 30)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)  # an operator's rm state.db*
        with caplog.at_level(logging.INFO, "proxy.state"):
            await until(lambda: any("written back" in r.getMessage()
                                    for r in caplog.records))
        async with SqliteStore(path) as fresh:
            assert len(await fresh.list_bindings(time.time())) == 30
        assert len(k.location.bindings()) == 30  # memory kept every one
    finally:
        await k.close()


async def test_redis_reset_is_written_back_but_a_removal_in_a_live_store_holds(
        tmp_path: Path, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    server: RedisServer = request.getfixturevalue("redis_server")
    server.cli("flushall")
    a = keeper(open_store(server.url, node="a"), server.url, node="a")
    await a.start()
    try:
        register(a, 5)
        await until(lambda: a.written == 5)
        # another writer (a `registrations remove`) removes one in the live store: it is
        # published, applied, and never written back
        async with RedisStore(server.url, node="cli") as cli:
            await cli.write_batch([StoreChange("remove_bindings", "", aor="u0@example.com")])
        await until(lambda: len(a.location.bindings()) == 4)
        with caplog.at_level(logging.INFO, "proxy.state"):
            server.cli("flushall")  # Redis restarted without its data
            await until(lambda: any("written back" in r.getMessage()
                                    for r in caplog.records))
        keys = set(server.cli("keys", "spp:reg:*").split())
        assert keys == {f"spp:reg:u{i}@example.com" for i in range(1, 5)}
    finally:
        await a.close()


# -- upstream states (README "Runtime control of upstreams") -----------------------------------


def set_here(k: StateKeeper, upstream: str, state: str, since: float) -> UpstreamState:
    """What the runtime does for ``upstreams STATE URI``: the core first, then the store."""
    s = UpstreamState(upstream, state, since, k.node)
    k.core.set_upstream_admin(AdminState(upstream, state, since, k.node), "here", 0.0)
    return s


async def test_upstream_states_reach_the_other_node_and_are_written_back_into_a_reset_redis(
        tmp_path: Path, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    server: RedisServer = request.getfixturevalue("redis_server")
    server.cli("flushall")
    a = keeper(open_store(server.url, node="a"), server.url, node="a")
    b = keeper(open_store(server.url, node="b"), server.url, node="b")
    await a.start()
    await b.start()
    try:
        t = time.time()
        assert await a.put_upstream_state(set_here(a, "sip:10.0.0.20:5060", "drain", t))
        assert await b.put_upstream_state(set_here(b, "sip:10.0.0.21:5060", "down", t + 1))
        await until(lambda: b.core.admin.state("sip:10.0.0.20:5060") == "drain")
        await until(lambda: a.core.admin.state("sip:10.0.0.21:5060") == "down")
        with caplog.at_level(logging.INFO, "proxy.state"):
            server.cli("flushall")  # Redis restarted without its data
            await until(lambda: sum("upstream states this node set written back"
                                    in r.getMessage() for r in caplog.records) == 2)
        async with RedisStore(server.url) as fresh:
            stored = {s.upstream: (s.state, s.node) for s in await fresh.list_upstream_states()}
        # each node wrote back what it set (memory is the truth for that), not the other's
        assert stored == {"sip:10.0.0.20:5060": ("drain", "a"),
                          "sip:10.0.0.21:5060": ("down", "b")}
        assert a.core.admin.state("sip:10.0.0.21:5060") == "down"
    finally:
        await a.close()
        await b.close()


async def test_an_upstream_state_set_while_the_store_is_away_is_written_when_it_answers(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server: RedisServer = request.getfixturevalue("own_redis")
    k = keeper(open_store(server.url, node="a"), server.url, node="a")
    await k.start()
    try:
        server.kill()
        await until(lambda: not k.up)
        s = set_here(k, "sip:10.0.0.20:5060", "drain", time.time())
        assert await k.put_upstream_state(s) is False  # kept, the call goes on
        assert k.core.admin.state("sip:10.0.0.20:5060") == "drain"  # obeyed at once
        server.start()  # without its data: a reset store, the state is written back into it
        await until(lambda: k.up and not k.upstreams.pending, timeout=15)
        async with RedisStore(server.url) as fresh:
            assert await fresh.list_upstream_states() == [s]
        # the reload after the outage did not undo it
        assert k.core.admin.state("sip:10.0.0.20:5060") == "drain"
    finally:
        await k.close()


# -- the shared key ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_keepers_without_secret_share_the_first_ones_key(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    spec = spec_of(kind, tmp_path, request)
    a = keeper(open_store(spec, node="a"), spec, node="a", key=b"a" * 32)
    b = keeper(open_store(spec, node="b"), spec, node="b", key=b"b" * 32)
    await a.start()
    await b.start()
    try:
        token = a.core.tokens.encode(FLOW)
        assert b.core.tokens.decode(token) == FLOW
        assert b.keys.key_id == a.keys.key_id
    finally:
        await a.close()
        await b.close()


async def test_a_configured_secret_wins_and_a_different_store_key_is_logged(
        tmp_path: Path, request: pytest.FixtureRequest,
        caplog: pytest.LogCaptureFixture) -> None:
    spec = spec_of("redis", tmp_path, request)
    a = keeper(open_store(spec, node="a"), spec, node="a", key=b"a" * 32)
    b = keeper(open_store(spec, node="b"), spec, node="b", key=b"s" * 32, configured=True)
    await a.start()
    try:
        with caplog.at_level(logging.WARNING, "proxy.state"):
            await b.start()
        token = b.core.tokens.encode(FLOW)
        assert b.core.tokens.decode(token) == FLOW and a.core.tokens.decode(token) is None
        warned = [r.getMessage() for r in caplog.records if "another key" in r.getMessage()]
        assert warned and "the state store" in warned[0], warned
    finally:
        await a.close()
        await b.close()


async def test_a_store_down_at_start_then_up_the_stores_key_is_adopted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path / "redis")  # not started yet
    b = keeper(RedisStore(server.url, node="b", timeout=0.3), server.url, node="b",
               key=b"b" * 32)
    with caplog.at_level(logging.INFO, "proxy.state"):
        await b.start()  # the store is down: b runs alone
        assert any("unreachable at start" in r.getMessage() for r in caplog.records)
        minted_alone = b.core.tokens.encode(FLOW)
        server.start()
        try:
            async with RedisStore(server.url, node="first") as first:
                await first.shared_key(b"f" * 32)  # another node made the key meanwhile
            await until(lambda: b.up, timeout=15)
            assert any("adopted its key" in r.getMessage() for r in caplog.records)
            other = keeper(open_store(server.url, node="c"), server.url, node="c",
                           key=b"f" * 32)
            assert other.core.tokens.decode(b.core.tokens.encode(FLOW)) == FLOW
            assert b.core.tokens.decode(minted_alone) == FLOW  # still valid on b
        finally:
            await b.close()
            server.kill()
