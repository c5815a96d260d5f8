"""The state store's batches, its incarnation (epoch and generation) and the key it shares,
against every backend (memory, sqlite, a real redis-server, a real 3-node Redis Cluster).

* ``write_batch`` applies the changes in order in one round trip and bumps the generation once;
  a batch with a change it cannot apply is refused before anything is written;
* ``incarnation`` stays the same while the store lives, and changes when the store is reset
  (Redis flushed or restarted empty, the sqlite file replaced or removed under the proxy);
* ``shared_key`` is create-if-absent: the first candidate wins, the others read it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.store import StateStore, StoreChange
from proxy.store.base import Incarnation
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore
from tests.redis_harness import RedisServer
from tests.unit.test_store import BACKENDS, T0, binding, make_store, route


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    s = make_store(request.param, tmp_path, request)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def put(aor: str, key: str = "sip:x@192.0.2.1") -> StoreChange:
    return StoreChange("put_binding", "", binding=binding(aor, key))


# -- batches --------------------------------------------------------------------------------


async def test_a_batch_is_applied_in_order_with_one_generation_bump(store: StateStore) -> None:
    before = await store.generation()
    gen = await store.write_batch([
        put("sip:a@example.com"), put("sip:b@example.com"), put("sip:b@example.com", "k2"),
        StoreChange("remove_binding", "", aor="sip:b@example.com", key="k2"),
        put("sip:c@example.com"),
        StoreChange("remove_bindings", "", aor="sip:c@example.com"),
        put("sip:c@example.com", "k3"),  # after the removal: it stays
        StoreChange("put_route", "", route=route()),
        StoreChange("put_route", "", route=route(old="sip:gone@example.com")),
        StoreChange("remove_route", "", old_uri="sip:gone@example.com"),
    ])
    assert gen == before + 1 == await store.generation()
    left = [(b.aor, b.key) for b in await store.list_bindings(T0)]
    assert left == [("sip:a@example.com", "sip:x@192.0.2.1"),
                    ("sip:b@example.com", "sip:x@192.0.2.1"), ("sip:c@example.com", "k3")]
    assert await store.list_routes(T0) == [route()]


async def test_a_batch_with_a_change_it_cannot_apply_writes_nothing(store: StateStore) -> None:
    before = await store.generation()
    with pytest.raises(ValueError, match="clear_routes"):
        await store.write_batch([put("sip:a@example.com"), StoreChange("clear_routes", "")])
    with pytest.raises(ValueError, match="without its binding"):
        await store.write_batch([put("sip:a@example.com"), StoreChange("put_binding", "")])
    assert await store.list_bindings(T0) == []
    assert await store.generation() == before


async def test_a_large_batch_round_trips(store: StateStore) -> None:
    changes = [put(f"sip:u{i:04}@example.com") for i in range(1200)]
    await store.write_batch(changes)
    stored = await store.list_bindings(T0)
    assert [b.aor for b in stored] == [c.binding.aor for c in changes if c.binding]
    assert stored[0] == changes[0].binding


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


# -- incarnation ----------------------------------------------------------------------------


async def test_the_incarnation_is_stable_while_the_store_lives(store: StateStore) -> None:
    first = await store.incarnation()
    assert first.epoch
    await store.write_batch([put("sip:a@example.com")])
    second = await store.incarnation()
    assert second.epoch == first.epoch and second.generation == first.generation + 1
    assert not second.reset_since(first)


def test_a_reset_is_another_epoch_or_a_generation_that_went_back() -> None:
    seen = Incarnation("e1", 10)
    assert not Incarnation("e1", 10).reset_since(seen)
    assert not Incarnation("e1", 11).reset_since(seen)
    assert Incarnation("e1", 9).reset_since(seen)  # a restored backup, a lagging replica
    assert Incarnation("e2", 50).reset_since(seen)


async def test_sqlite_keeps_its_epoch_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with SqliteStore(path) as s:
        first = await s.incarnation()
    async with SqliteStore(path) as s:
        assert (await s.incarnation()).epoch == first.epoch


@pytest.mark.parametrize("how", ["removed", "replaced"])
async def test_sqlite_file_taken_away_under_the_store_is_a_new_epoch(
        tmp_path: Path, how: str) -> None:
    """The file at the path is not the one the store opened: the store opens (or creates)
    the one there now, and says so by its epoch; writes go to the new file."""
    path = tmp_path / "s.db"
    async with SqliteStore(path) as s:
        await s.write_batch([put("sip:a@example.com")])
        first = await s.incarnation()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            async with SqliteStore(tmp_path / "other.db") as other:
                await other.write_batch([put("sip:other@example.com")])
            os.replace(tmp_path / "other.db", path)
        now = await s.incarnation()
        assert now.reset_since(first)
        assert now.epoch != first.epoch
        await s.write_batch([put("sip:b@example.com")])
    async with SqliteStore(path) as fresh:
        aors = [b.aor for b in await fresh.list_bindings(T0)]
    expected = ["sip:b@example.com"] if how == "removed" else ["sip:b@example.com",
                                                                 "sip:other@example.com"]
    assert aors == expected


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


# -- the shared key ---------------------------------------------------------------------------


async def test_the_shared_key_is_made_by_the_first_and_read_by_the_others(
        store: StateStore) -> None:
    assert await store.shared_key(None) is None  # reading alone creates nothing
    assert await store.shared_key(b"k" * 32) == b"k" * 32
    assert await store.shared_key(b"z" * 32) == b"k" * 32  # create-if-absent: the first wins
    assert await store.shared_key(None) == b"k" * 32


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_two_stores_on_one_backend_agree_on_one_key(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    a, b = make_store(kind, tmp_path, request), make_store(kind, tmp_path, request)
    async with a, b:
        ka, kb = await asyncio.gather(a.shared_key(b"a" * 32), b.shared_key(b"b" * 32))
        assert ka == kb and ka in (b"a" * 32, b"b" * 32)
