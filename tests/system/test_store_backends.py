"""The state store against real servers: the contract every backend keeps
(tests/store_suite.py) against a real ``redis-server`` and a real 3-node Redis Cluster (the
session's, tests/redis_harness.py), Redis's own keys, TTLs and change messages, and sqlite
changed by another process while the proxy has it open.

The same contract against memory and sqlite is in tests/unit/test_store.py and
tests/unit/test_store_life.py.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.store import SchemaVersionError, StoreChange, UpstreamState
from proxy.store.redis import NodeInfo, RedisStore
from proxy.store.sqlite import SqliteStore
from tests.redis_harness import RedisServer
from tests.store_suite import T0, StoreBatchContract, StoreContract, binding, make_store, put, route

SERVER_BACKENDS = ["redis", "redis-cluster"]


@pytest.fixture(params=SERVER_BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestStoreContract(StoreContract):
    """The contract (tests/store_suite.py) against redis-server and a Redis Cluster."""


class TestStoreBatchContract(StoreBatchContract):
    """Batches, a stable incarnation and the create-if-absent key against redis-server and a
    Redis Cluster."""


# -- sqlite: another process --------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "proxy" / "state.db"


_CLI_SCRIPT = """
import asyncio, sys
from proxy.store import open_store

async def main():
    store = open_store("sqlite:" + sys.argv[1])
    await store.open()
    try:
        removed = await store.remove_route(sys.argv[2])
        print(removed, await store.generation())
    finally:
        await store.close()

asyncio.run(main())
"""


async def test_sqlite_another_process_changes_the_store_while_it_is_open(db_path: Path) -> None:
    async with SqliteStore(db_path) as proxy_side:
        await proxy_side.put_route(route())
        before = await proxy_side.generation()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLI_SCRIPT, str(db_path), route().old_uri,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        assert out.decode().split() == ["True", str(before + 1)]
        assert await proxy_side.generation() == before + 1
        assert await proxy_side.get_route(route().old_uri, T0) is None


# -- redis: TTLs, schema, change messages -------------------------------------------------------


@pytest.fixture(params=SERVER_BACKENDS)
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RedisStore]:
    s = make_store(request.param, tmp_path, request)
    assert isinstance(s, RedisStore)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _pttl(s: RedisStore, key: str) -> int:
    client = s._c()  # noqa: SLF001 - the test looks at the raw keys
    ttl: int = await client.pttl(key)
    return ttl


async def test_redis_keys_expire_with_their_route_and_binding(shared: RedisStore) -> None:
    await shared.put_route(route(expires_at=T0 + 30))
    await shared.put_binding(binding(expires_at=T0 + 60))
    await shared.put_binding(binding(key="sip:bob@192.0.2.21", expires_at=T0 + 90))
    await shared.put_binding(binding(key="sip:bob@192.0.2.22", expires_at=T0 + 45))
    route_ttl = await _pttl(shared, "spp:route:" + route().old_uri)
    reg_ttl = await _pttl(shared, "spp:reg:" + binding().aor)
    assert 30_000 < route_ttl <= 31_000  # expiry + 1 s of grace
    assert 90_000 < reg_ttl <= 91_000  # the latest binding of the AOR


async def test_redis_refuses_a_newer_schema(shared: RedisStore) -> None:
    await shared._c().set("spp:schema", 99)  # noqa: SLF001
    other = RedisStore(shared._spec)  # noqa: SLF001
    with pytest.raises(SchemaVersionError, match="schema version 99 is newer"):
        await other.open()
    await shared._c().set("spp:schema", 1)  # noqa: SLF001


async def test_redis_every_write_is_published_with_its_origin(shared: RedisStore) -> None:
    seen: list[object] = []

    subscribed = asyncio.Event()

    async def listen() -> None:
        async for change in shared.changes(subscribed.set):
            seen.append(change)
            if len(seen) == 4:
                return

    task = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 5)  # the server confirmed the subscription
    writer = RedisStore(shared._spec, node="writer", clock=lambda: T0)  # noqa: SLF001
    async with writer:
        await writer.put_binding(binding())
        await writer.remove_binding(binding().aor, binding().key)
        await writer.put_route(route())
        await writer.put_upstream_state(UpstreamState("sip:10.0.0.20:5060", "drain", T0, "w"))
    await asyncio.wait_for(task, 5)
    ops = [(c.op, c.origin) for c in seen]  # type: ignore[attr-defined]
    assert ops == [("put_binding", "writer"), ("remove_binding", "writer"),
                   ("put_route", "writer"), ("put_upstream_state", "writer")]
    assert seen[0].binding == binding()  # type: ignore[attr-defined]
    assert seen[3].upstream == UpstreamState(  # type: ignore[attr-defined]
        "sip:10.0.0.20:5060", "drain", T0, "w")


async def test_redis_node_addresses_are_published_with_a_ttl(shared: RedisStore) -> None:
    await shared.publish_node("a", ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"], 30, "k1")
    assert await shared.nodes() == {
        "a": NodeInfo(["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"], "k1")}
    # the bare list an older proxy announces: its addresses, no key id
    await shared._c().set("spp:node:old", '["udp:127.0.0.1:5070"]')  # noqa: SLF001
    assert (await shared.nodes())["old"] == NodeInfo(["udp:127.0.0.1:5070"], "")
    assert 0 < await _pttl(shared, "spp:node:a") <= 30_000


# -- redis: batches and a reset ------------------------------------------------------------------


async def test_redis_a_batch_publishes_each_change_with_this_node_as_origin(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server: RedisServer = request.getfixturevalue("redis_server")
    server.cli("flushall")
    listener = RedisStore(server.url, node="listener", clock=lambda: T0)
    writer = RedisStore(server.url, node="writer", clock=lambda: T0)
    async with listener, writer:
        seen: list[StoreChange] = []
        subscribed = asyncio.Event()

        async def listen() -> None:
            async for change in listener.changes(subscribed.set):
                seen.append(change)
                if len(seen) == 3:
                    return

        task = asyncio.create_task(listen())
        await asyncio.wait_for(subscribed.wait(), 5)
        await writer.write_batch([put("sip:a@example.com"),
                                  StoreChange("remove_bindings", "", aor="sip:a@example.com"),
                                  StoreChange("put_route", "", route=route())])
        await asyncio.wait_for(task, 5)
    assert [(c.op, c.origin) for c in seen] == [
        ("put_binding", "writer"), ("remove_bindings", "writer"), ("put_route", "writer")]
    assert seen[0].binding == binding("sip:a@example.com", "sip:x@192.0.2.1")



async def test_redis_flushed_is_a_new_epoch_and_the_store_goes_on(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    server: RedisServer = request.getfixturevalue("redis_server")
    store = make_store("redis", tmp_path, request)
    async with store:
        await store.write_batch([put("sip:a@example.com")])
        first = await store.incarnation()
        server.cli("flushall")  # what a restart without persistence leaves
        now = await store.incarnation()
        assert now.epoch != first.epoch and now.reset_since(first)
        assert server.cli("get", "spp:schema").strip() == "1"  # the schema is made again
        assert await store.incarnation() == now  # and stays




async def test_two_stores_on_one_backend_agree_on_one_key(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    a, b = make_store("redis", tmp_path, request), make_store("redis", tmp_path, request)
    async with a, b:
        ka, kb = await asyncio.gather(a.shared_key(b"a" * 32), b.shared_key(b"b" * 32))
        assert ka == kb and ka in (b"a" * 32, b"b" * 32)
