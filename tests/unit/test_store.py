"""The state-store suite: one set of behaviours run against every backend, then sqlite's own.

Learned routes (RFC 3261 21.3.2 301, 21.3.3 302 with expires) and registrations
(RFC 3261 10.3, RFC 5626 flows) through :class:`proxy.store.StateStore`; for sqlite also what
"persistent" promises: a restart keeps the state, another store object or another process
sees every write and its generation, and a file the code cannot use is refused with a
:class:`StoreError` that says why.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path

import pytest

from proxy.store import (
    CorruptStoreError,
    LearnedRoute,
    SchemaVersionError,
    StateStore,
    StoredBinding,
    StoreError,
    open_store,
)
from proxy.store.memory import MemoryStore
from proxy.store.redis import NodeInfo, RedisStore
from proxy.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.redis_harness import RedisClusterServers, RedisServer

BACKENDS = ["memory", "sqlite", "redis", "redis-cluster"]
T0 = 1_700_000_000.25  # a wall-clock "now" with a fraction, to prove floats round-trip


def route(
    old: str = "sip:alice@old.example.com",
    new: str = "sip:alice@new.example.com",
    *,
    expires_at: float = T0 + 3600,
    status: int = 301,
    call_id: str = "call-1@host",
) -> LearnedRoute:
    return LearnedRoute(
        old_uri=old,
        new_uri=new,
        source="192.0.2.10:5060",
        call_id=call_id,
        status=status,
        created_at=T0,
        expires_at=expires_at,
    )


def binding(
    aor: str = "sip:bob@example.com",
    key: str = "sip:bob@192.0.2.20:5062",
    *,
    expires_at: float = T0 + 3600,
    instance: str | None = None,
    reg_id: int | None = None,
    cseq: int = 1,
) -> StoredBinding:
    uri = key if instance is None else "sip:bob@192.0.2.20;ob"
    return StoredBinding(
        aor=aor,
        key=key,
        contact=f"<{uri}>;q=0.5" if instance is None else f'<{uri}>;+sip.instance="{instance}"',
        uri=uri,
        expires_at=expires_at,
        q=0.5,
        call_id="reg-1@bob",
        cseq=cseq,
        flow_transport="tcp",
        flow_host="2001:db8::20",
        flow_port=50123,
        registered_at=T0,
        instance=instance,
        reg_id=reg_id,
    )


def make_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None
               ) -> StateStore:
    if kind == "memory":
        return open_store("memory:")
    if kind in ("redis", "redis-cluster"):
        assert request is not None
        server: RedisServer | RedisClusterServers = request.getfixturevalue(
            "redis_server" if kind == "redis" else "redis_cluster")
        if isinstance(server, RedisServer):
            server.cli("flushall")
        else:
            server.flush()
        # The suite's clock is T0 (2023): the keys' TTLs are reckoned against it.
        return RedisStore(server.url, node="test", clock=lambda: T0)
    return open_store(f"sqlite:{tmp_path / 'state' / 'proxy.db'}")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    s = make_store(request.param, tmp_path, request)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


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


# -- lifecycle, every backend ---------------------------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
async def test_store_refuses_use_before_open_and_after_close(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = make_store(kind, tmp_path, request)
    with pytest.raises(StoreError, match="not open"):
        await s.get_route("sip:a@b", T0)
    await s.open()
    await s.open()  # idempotent
    await s.put_route(route())
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreError, match="not open"):
        await s.put_route(route())


@pytest.mark.parametrize("kind", BACKENDS)
async def test_store_is_an_async_context_manager(kind: str, tmp_path: Path) -> None:
    backend = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "cm.db")
    async with backend as s:
        await s.put_route(route())
        assert await s.get_route(route().old_uri, T0) == route()
    with pytest.raises(StoreError, match="not open"):
        await backend.generation()


# -- learned routes -------------------------------------------------------------------------


async def test_put_then_get_route_returns_the_same_value(store: StateStore) -> None:
    r = route(status=302, expires_at=T0 + 0.125)
    await store.put_route(r)
    got = await store.get_route(r.old_uri, T0)
    assert got == r
    assert got is not None and (got.created_at, got.expires_at) == (T0, T0 + 0.125)


async def test_get_unknown_route_is_none(store: StateStore) -> None:
    await store.put_route(route())
    assert await store.get_route("sip:nobody@old.example.com", T0) is None


async def test_put_route_replaces_the_route_for_the_same_old_uri(store: StateStore) -> None:
    await store.put_route(route(new="sip:alice@first.example.com"))
    await store.put_route(route(new="sip:alice@second.example.com", call_id="call-2@host"))
    got = await store.get_route(route().old_uri, T0)
    assert got is not None
    assert (got.new_uri, got.call_id) == ("sip:alice@second.example.com", "call-2@host")
    assert len(await store.list_routes(T0)) == 1


async def test_expired_route_is_none_and_deleted(store: StateStore) -> None:
    r = route(expires_at=T0 + 10)
    await store.put_route(r)
    assert await store.get_route(r.old_uri, T0 + 9.999) == r
    assert await store.get_route(r.old_uri, T0 + 10) is None
    # Deleted, not merely hidden: an earlier clock no longer finds it.
    assert await store.get_route(r.old_uri, T0) is None
    assert await store.remove_route(r.old_uri) is False


async def test_remove_route_reports_whether_there_was_one(store: StateStore) -> None:
    await store.put_route(route())
    assert await store.remove_route(route().old_uri) is True
    assert await store.get_route(route().old_uri, T0) is None
    assert await store.remove_route(route().old_uri) is False


async def test_list_routes_is_unexpired_and_sorted_by_old_uri(store: StateStore) -> None:
    for old in ("sip:carol@x.example", "sip:alice@x.example", "sip:bob@x.example"):
        await store.put_route(route(old))
    await store.put_route(route("sip:aaron@x.example", expires_at=T0 + 5))
    listed = await store.list_routes(T0 + 5)
    assert [r.old_uri for r in listed] == [
        "sip:alice@x.example",
        "sip:bob@x.example",
        "sip:carol@x.example",
    ]
    assert await store.get_route("sip:aaron@x.example", T0) is None  # purged by the listing


async def test_clear_routes_removes_all_and_counts(store: StateStore) -> None:
    for i in range(5):
        await store.put_route(route(f"sip:u{i}@x.example"))
    await store.put_binding(binding())
    assert await store.clear_routes() == 5
    assert await store.list_routes(T0) == []
    assert await store.clear_routes() == 0
    assert await store.list_bindings(T0) == [binding()]  # registrations are not routes


# -- registrations --------------------------------------------------------------------------


async def test_put_and_list_bindings_sorted_by_aor_and_key(store: StateStore) -> None:
    b1 = binding("sip:zed@example.com", "sip:zed@192.0.2.1")
    uuid = "urn:uuid:f81d4fae"
    b2 = binding("sip:bob@example.com", f"{uuid}|2", instance=uuid, reg_id=2)
    b3 = binding("sip:bob@example.com", f"{uuid}|1", instance=uuid, reg_id=1)
    for b in (b1, b2, b3):
        await store.put_binding(b)
    assert await store.list_bindings(T0) == [b3, b2, b1]


async def test_binding_fields_round_trip_exactly(store: StateStore) -> None:
    outbound = binding("sip:bob@example.com", "urn:uuid:1|1", instance="urn:uuid:1", reg_id=1)
    plain = binding("sip:carol@example.com", "sip:carol@192.0.2.30", expires_at=T0 + 0.75)
    await store.put_binding(outbound)
    await store.put_binding(plain)
    got = await store.list_bindings(T0)
    assert got == [outbound, plain]
    assert (got[1].instance, got[1].reg_id) == (None, None)
    flow = (got[0].flow_transport, got[0].flow_host, got[0].flow_port)
    assert flow == ("tcp", "2001:db8::20", 50123)


async def test_put_binding_replaces_the_same_aor_and_key(store: StateStore) -> None:
    await store.put_binding(binding(cseq=1))
    await store.put_binding(binding(cseq=2, expires_at=T0 + 7200))
    got = await store.list_bindings(T0)
    assert len(got) == 1
    assert (got[0].cseq, got[0].expires_at) == (2, T0 + 7200)


async def test_remove_binding_removes_only_that_key(store: StateStore) -> None:
    keep = binding(key="sip:bob@192.0.2.21")
    await store.put_binding(binding())
    await store.put_binding(keep)
    await store.remove_binding(binding().aor, binding().key)
    assert await store.list_bindings(T0) == [keep]
    await store.remove_binding("sip:nobody@example.com", "sip:x@y")  # unknown: no error
    assert await store.list_bindings(T0) == [keep]


async def test_remove_bindings_removes_only_that_aor(store: StateStore) -> None:
    other = binding("sip:carol@example.com", "sip:carol@192.0.2.30")
    await store.put_binding(binding())
    await store.put_binding(binding(key="sip:bob@192.0.2.21"))
    await store.put_binding(other)
    await store.remove_bindings(binding().aor)
    assert await store.list_bindings(T0) == [other]


async def test_expired_bindings_are_not_listed_and_are_deleted(store: StateStore) -> None:
    live = binding(key="sip:bob@192.0.2.21", expires_at=T0 + 60)
    await store.put_binding(binding(expires_at=T0 + 30))
    await store.put_binding(live)
    assert await store.list_bindings(T0 + 30) == [live]
    assert await store.list_bindings(T0) == [live]  # deleted, not merely hidden


async def test_purge_expired_deletes_routes_and_bindings(store: StateStore) -> None:
    await store.put_route(route("sip:a@x.example", expires_at=T0 + 1))
    await store.put_route(route("sip:b@x.example", expires_at=T0 + 100))
    await store.put_binding(binding(expires_at=T0 + 1))
    assert await store.purge_expired(T0 + 1) == 2
    assert await store.purge_expired(T0 + 1) == 0
    assert [r.old_uri for r in await store.list_routes(T0)] == ["sip:b@x.example"]
    assert await store.list_bindings(T0) == []


# -- generation -----------------------------------------------------------------------------


async def test_generation_increases_on_each_write(store: StateStore) -> None:
    writes: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put_route(route()),
        lambda: store.put_route(route(new="sip:alice@newer.example.com")),
        lambda: store.remove_route(route().old_uri),
        lambda: store.remove_route(route().old_uri),  # nothing to remove: still a write
        lambda: store.clear_routes(),
        lambda: store.put_binding(binding()),
        lambda: store.remove_binding(binding().aor, binding().key),
        lambda: store.remove_bindings(binding().aor),
    ]
    seen = [await store.generation()]
    for write in writes:
        await write()
        seen.append(await store.generation())
    assert all(b > a for a, b in itertools.pairwise(seen)), seen


async def test_reads_and_expiry_housekeeping_leave_generation_alone(store: StateStore) -> None:
    await store.put_route(route(expires_at=T0 + 1))
    await store.put_binding(binding(expires_at=T0 + 1))
    before = await store.generation()
    assert await store.get_route(route().old_uri, T0) is not None
    assert await store.get_route(route().old_uri, T0 + 1) is None  # deletes the expired row
    assert await store.list_routes(T0 + 1) == []
    assert await store.list_bindings(T0 + 1) == []
    assert await store.purge_expired(T0 + 1) == 0
    assert await store.generation() == before


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


# -- redis: TTLs, schema, change messages, an unreachable server -----------------------------


@pytest.fixture(params=["redis", "redis-cluster"])
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
            if len(seen) == 3:
                return

    task = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 5)  # the server confirmed the subscription
    writer = RedisStore(shared._spec, node="writer", clock=lambda: T0)  # noqa: SLF001
    async with writer:
        await writer.put_binding(binding())
        await writer.remove_binding(binding().aor, binding().key)
        await writer.put_route(route())
    await asyncio.wait_for(task, 5)
    ops = [(c.op, c.origin) for c in seen]  # type: ignore[attr-defined]
    assert ops == [("put_binding", "writer"), ("remove_binding", "writer"),
                   ("put_route", "writer")]
    assert seen[0].binding == binding()  # type: ignore[attr-defined]


async def test_redis_node_addresses_are_published_with_a_ttl(shared: RedisStore) -> None:
    await shared.publish_node("a", ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"], 30, "k1")
    assert await shared.nodes() == {
        "a": NodeInfo(["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"], "k1")}
    # the bare list an older proxy announces: its addresses, no key id
    await shared._c().set("spp:node:old", '["udp:127.0.0.1:5070"]')  # noqa: SLF001
    assert (await shared.nodes())["old"] == NodeInfo(["udp:127.0.0.1:5070"], "")
    assert 0 < await _pttl(shared, "spp:node:a") <= 30_000


async def test_redis_unreachable_is_a_store_error_within_the_timeout() -> None:
    from tests.e2e.harness import free_port

    s = RedisStore(f"redis://127.0.0.1:{free_port(udp=False)}/0", timeout=0.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(StoreError, match="redis state store redis://127.0.0.1"):
        await s.open()
    assert loop.time() - start < 3
