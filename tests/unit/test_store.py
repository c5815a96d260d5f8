"""The state-store suite on the backends that need no server: the contract every backend keeps
(tests/store_suite.py) against memory and sqlite, then sqlite's own.

Learned routes (RFC 3261 21.3.2 301, 21.3.3 302 with expires) and registrations
(RFC 3261 10.3, RFC 5626 flows) through :class:`proxy.store.StateStore`; for sqlite also what
"persistent" promises: a restart keeps the state, another store object sees every write and
its generation, and a file the code cannot use is refused with a :class:`StoreError` that
says why. The same contract against a real redis-server and Redis Cluster, and sqlite shared
with another process, are system tests (tests/system/test_store_backends.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from proxy.store import (
    CorruptStoreError,
    SchemaVersionError,
    StoreError,
    open_store,
)
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.store_suite import T0, StoreContract, binding, route

LOCAL_BACKENDS = ["memory", "sqlite"]


@pytest.fixture(params=LOCAL_BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestStoreContract(StoreContract):
    """The contract (tests/store_suite.py) against memory and sqlite."""


# -- values ---------------------------------------------------------------------------------


def test_learned_route_only_from_301_or_302() -> None:
    with pytest.raises(ValueError, match="301 or a 302"):
        route(status=200)
    with pytest.raises(ValueError, match="old_uri"):
        route(old="")


def test_stored_binding_needs_aor_and_key() -> None:
    with pytest.raises(ValueError, match="aor and a key"):
        binding(key="")


def test_expiry_is_reached_at_expires_at() -> None:
    r = route(expires_at=T0)
    assert not r.expired(T0 - 0.001)
    assert r.expired(T0)
    assert binding(expires_at=T0).expired(T0)


# -- open_store -----------------------------------------------------------------------------


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory:"), MemoryStore)


def test_open_store_sqlite_absolute_path(tmp_path: Path) -> None:
    s = open_store(f"sqlite:{tmp_path / 'x.db'}")
    assert isinstance(s, SqliteStore)
    assert s.path == tmp_path / "x.db"


@pytest.mark.parametrize("spec", ["sqlite:", "sqlite:data/state.db", "postgres://db/1", "memory"])
def test_open_store_refuses_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="sqlite:"):
        open_store(spec)


@pytest.mark.parametrize("spec", ["redis://127.0.0.1:6379/0", "rediss://:pw@cache:6380/1",
                                  "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"])
def test_open_store_redis_forms_connect_to_nothing(spec: str) -> None:
    s = open_store(spec, node="a")
    assert isinstance(s, RedisStore)
    assert s.node == "a"
    assert "pw" not in repr(s)


def test_open_store_redis_cluster_needs_a_seed() -> None:
    with pytest.raises(ValueError, match="seed"):
        open_store("redis+cluster://")


# -- sqlite: persistence and sharing --------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "proxy" / "state.db"


async def test_sqlite_creates_the_parent_directory(db_path: Path) -> None:
    async with SqliteStore(db_path) as s:
        await s.put_route(route())
    assert db_path.is_file()


async def test_sqlite_restart_keeps_routes_bindings_and_generation(db_path: Path) -> None:
    first = SqliteStore(db_path)
    await first.open()
    await first.put_route(route())
    await first.put_binding(binding(instance="urn:uuid:1", key="urn:uuid:1|1", reg_id=1))
    generation = await first.generation()
    await first.close()

    second = SqliteStore(db_path)  # the proxy restarted
    await second.open()
    try:
        assert await second.get_route(route().old_uri, T0) == route()
        assert await second.list_bindings(T0) == [
            binding(instance="urn:uuid:1", key="urn:uuid:1|1", reg_id=1)
        ]
        assert await second.generation() == generation
    finally:
        await second.close()


async def test_sqlite_two_stores_on_one_file_see_each_others_writes(db_path: Path) -> None:
    async with SqliteStore(db_path) as proxy_side, SqliteStore(db_path) as cli_side:
        await proxy_side.put_route(route())
        assert await cli_side.get_route(route().old_uri, T0) == route()
        seen = await proxy_side.generation()
        assert await cli_side.generation() == seen

        assert await cli_side.remove_route(route().old_uri) is True
        assert await proxy_side.generation() > seen
        assert await proxy_side.get_route(route().old_uri, T0) is None

        await cli_side.put_binding(binding())
        assert await proxy_side.list_bindings(T0) == [binding()]


async def test_sqlite_concurrent_writers_each_bump_generation_once(db_path: Path) -> None:
    async with SqliteStore(db_path) as a, SqliteStore(db_path) as b:
        start = await a.generation()
        await asyncio.gather(
            *(a.put_route(route(f"sip:a{i}@x.example")) for i in range(20)),
            *(b.put_binding(binding(key=f"sip:bob@192.0.2.{i}")) for i in range(20)),
        )
        assert await a.generation() == start + 40
        assert len(await b.list_routes(T0)) == 20
        assert len(await a.list_bindings(T0)) == 20


async def test_sqlite_busy_file_gives_a_store_error(db_path: Path) -> None:
    async with SqliteStore(db_path, busy_timeout=0.1) as s:
        with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StoreError, match="locked"):
                await s.put_route(route())
            other.execute("ROLLBACK")
        await s.put_route(route())
        assert await s.get_route(route().old_uri, T0) == route()


# -- sqlite: schema versions and unusable files ---------------------------------------------


def _meta(path: Path) -> dict[str, int]:
    with closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT key, value FROM meta"))


async def test_sqlite_records_schema_version_and_uses_wal(db_path: Path) -> None:
    async with SqliteStore(db_path) as s:
        await s.put_route(route())
        meta = _meta(db_path)
        assert meta["schema_version"] == SCHEMA_VERSION >= 1
        assert meta["generation"] == await s.generation() == 1
        with closing(sqlite3.connect(db_path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_sqlite_refuses_a_newer_schema_version(db_path: Path) -> None:
    async with SqliteStore(db_path):
        pass
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
    s = SqliteStore(db_path)
    with pytest.raises(SchemaVersionError) as info:
        await s.open()
    message = str(info.value)
    assert str(db_path) in message
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in message
    assert f"({SCHEMA_VERSION})" in message
    with pytest.raises(StoreError, match="not open"):  # a refused store stays closed
        await s.list_routes(T0)
    assert _meta(db_path)["schema_version"] == SCHEMA_VERSION + 1  # left untouched


async def test_sqlite_migrates_an_older_schema(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', 0), ('generation', 7)")
    async with SqliteStore(db_path) as s:
        assert await s.generation() == 7
        await s.put_route(route())
        assert await s.get_route(route().old_uri, T0) == route()
    assert _meta(db_path) == {"schema_version": SCHEMA_VERSION, "generation": 8}


def _assert_clear(exc: StoreError, path: Path) -> None:
    assert str(path) in str(exc)
    assert "\n" not in str(exc)
    assert not isinstance(exc, sqlite3.Error)


async def test_sqlite_refuses_a_file_that_is_not_a_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is a text file, not a database\n" * 200)
    with pytest.raises(CorruptStoreError, match="damaged or is not an SQLite database") as info:
        await SqliteStore(db_path).open()
    _assert_clear(info.value, db_path)


async def test_sqlite_refuses_a_damaged_database(db_path: Path) -> None:
    async with SqliteStore(db_path) as s:
        await s.put_route(route())
    data = bytearray(db_path.read_bytes())
    data[100:1100] = b"\xff" * 1000  # the schema page, after the 100-byte file header
    db_path.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="damaged") as info:
        await SqliteStore(db_path).open()
    _assert_clear(info.value, db_path)


async def test_sqlite_refuses_another_applications_database(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    with pytest.raises(CorruptStoreError, match="not a sip-policy-proxy state store") as info:
        await SqliteStore(db_path).open()
    _assert_clear(info.value, db_path)
    with closing(sqlite3.connect(db_path)) as conn:  # and leaves it alone
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["users"]


async def test_sqlite_invalid_row_gives_a_corrupt_store_error(db_path: Path) -> None:
    async with SqliteStore(db_path) as s:
        with closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute(
                "INSERT INTO routes VALUES ('sip:a@x', 'sip:b@y', 'h:1', 'c', 999, 0, ?)",
                (T0 + 60,),
            )
        with pytest.raises(CorruptStoreError, match="stored row is invalid"):
            await s.list_routes(T0)


async def test_sqlite_unusable_path_gives_a_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(StoreError) as info:
        await SqliteStore(directory).open()
    _assert_clear(info.value, directory)


# -- redis: an unreachable server (the rest needs one: tests/system/test_store_backends.py) --


async def test_redis_unreachable_is_a_store_error_within_the_timeout() -> None:
    from tests.e2e.harness import free_port

    s = RedisStore(f"redis://127.0.0.1:{free_port(udp=False)}/0", timeout=0.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(StoreError, match="redis state store redis://127.0.0.1"):
        await s.open()
    assert loop.time() - start < 3
