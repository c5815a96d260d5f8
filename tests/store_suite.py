"""The state-store contract: what every backend of :class:`proxy.store.StateStore` must do,
written once and run against each (RFC 3261 21.3.2 301, 21.3.3 302 with expires; RFC 3261
10.3 and RFC 5626 registrations with their flows).

Not a test module itself: ``tests/unit/test_store.py`` and ``tests/unit/test_store_life.py``
run the contract against memory and sqlite, ``tests/system/test_store_backends.py`` against a
real ``redis-server`` and a real 3-node Redis Cluster. Each of those modules defines the
``kind`` fixture (its backends) and a ``Test...`` subclass of the classes here.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from proxy.store import (
    LearnedRoute,
    StateStore,
    StoreChange,
    StoredBinding,
    StoreError,
    UpstreamState,
    open_store,
)
from proxy.store.redis import RedisStore
from tests.redis_harness import RedisClusterServers, RedisServer

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
    """A closed store of ``kind`` (memory, sqlite, redis, redis-cluster); the Redis kinds use
    the session's servers (tests/redis_harness.py), flushed first."""
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

def put(aor: str, key: str = "sip:x@192.0.2.1") -> StoreChange:
    return StoreChange("put_binding", "", binding=binding(aor, key))

class OpenStore:
    """The ``store`` fixture: an open store of the module's ``kind``, closed afterwards."""

    @pytest.fixture
    async def store(self, kind: str, request: pytest.FixtureRequest, tmp_path: Path
                    ) -> AsyncIterator[StateStore]:
        s = make_store(kind, tmp_path, request)
        await s.open()
        try:
            yield s
        finally:
            await s.close()


class StoreContract(OpenStore):
    """One store's behaviour, whatever keeps it. Needs a ``kind`` fixture in the module."""

    # -- lifecycle ------------------------------------------------------------------------------

    async def test_store_refuses_use_before_open_and_after_close(
            self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
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

    async def test_store_is_an_async_context_manager(
            self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        backend = make_store(kind, tmp_path, request)
        async with backend as s:
            await s.put_route(route())
            assert await s.get_route(route().old_uri, T0) == route()
        with pytest.raises(StoreError, match="not open"):
            await backend.generation()

    # -- learned routes -------------------------------------------------------------------------

    async def test_put_then_get_route_returns_the_same_value(self, store: StateStore) -> None:
        r = route(status=302, expires_at=T0 + 0.125)
        await store.put_route(r)
        got = await store.get_route(r.old_uri, T0)
        assert got == r
        assert got is not None and (got.created_at, got.expires_at) == (T0, T0 + 0.125)

    async def test_get_unknown_route_is_none(self, store: StateStore) -> None:
        await store.put_route(route())
        assert await store.get_route("sip:nobody@old.example.com", T0) is None

    async def test_put_route_replaces_the_route_for_the_same_old_uri(self, store: StateStore) -> None:
        await store.put_route(route(new="sip:alice@first.example.com"))
        await store.put_route(route(new="sip:alice@second.example.com", call_id="call-2@host"))
        got = await store.get_route(route().old_uri, T0)
        assert got is not None
        assert (got.new_uri, got.call_id) == ("sip:alice@second.example.com", "call-2@host")
        assert len(await store.list_routes(T0)) == 1

    async def test_expired_route_is_none_and_deleted(self, store: StateStore) -> None:
        r = route(expires_at=T0 + 10)
        await store.put_route(r)
        assert await store.get_route(r.old_uri, T0 + 9.999) == r
        assert await store.get_route(r.old_uri, T0 + 10) is None
        # Deleted, not merely hidden: an earlier clock no longer finds it.
        assert await store.get_route(r.old_uri, T0) is None
        assert await store.remove_route(r.old_uri) is False

    async def test_remove_route_reports_whether_there_was_one(self, store: StateStore) -> None:
        await store.put_route(route())
        assert await store.remove_route(route().old_uri) is True
        assert await store.get_route(route().old_uri, T0) is None
        assert await store.remove_route(route().old_uri) is False

    async def test_list_routes_is_unexpired_and_sorted_by_old_uri(self, store: StateStore) -> None:
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

    async def test_clear_routes_removes_all_and_counts(self, store: StateStore) -> None:
        for i in range(5):
            await store.put_route(route(f"sip:u{i}@x.example"))
        await store.put_binding(binding())
        assert await store.clear_routes() == 5
        assert await store.list_routes(T0) == []
        assert await store.clear_routes() == 0
        assert await store.list_bindings(T0) == [binding()]  # registrations are not routes

    # -- registrations --------------------------------------------------------------------------

    async def test_put_and_list_bindings_sorted_by_aor_and_key(self, store: StateStore) -> None:
        b1 = binding("sip:zed@example.com", "sip:zed@192.0.2.1")
        uuid = "urn:uuid:f81d4fae"
        b2 = binding("sip:bob@example.com", f"{uuid}|2", instance=uuid, reg_id=2)
        b3 = binding("sip:bob@example.com", f"{uuid}|1", instance=uuid, reg_id=1)
        for b in (b1, b2, b3):
            await store.put_binding(b)
        assert await store.list_bindings(T0) == [b3, b2, b1]

    async def test_binding_fields_round_trip_exactly(self, store: StateStore) -> None:
        outbound = binding("sip:bob@example.com", "urn:uuid:1|1", instance="urn:uuid:1", reg_id=1)
        plain = binding("sip:carol@example.com", "sip:carol@192.0.2.30", expires_at=T0 + 0.75)
        await store.put_binding(outbound)
        await store.put_binding(plain)
        got = await store.list_bindings(T0)
        assert got == [outbound, plain]
        assert (got[1].instance, got[1].reg_id) == (None, None)
        flow = (got[0].flow_transport, got[0].flow_host, got[0].flow_port)
        assert flow == ("tcp", "2001:db8::20", 50123)

    async def test_put_binding_replaces_the_same_aor_and_key(self, store: StateStore) -> None:
        await store.put_binding(binding(cseq=1))
        await store.put_binding(binding(cseq=2, expires_at=T0 + 7200))
        got = await store.list_bindings(T0)
        assert len(got) == 1
        assert (got[0].cseq, got[0].expires_at) == (2, T0 + 7200)

    async def test_remove_binding_removes_only_that_key(self, store: StateStore) -> None:
        keep = binding(key="sip:bob@192.0.2.21")
        await store.put_binding(binding())
        await store.put_binding(keep)
        await store.remove_binding(binding().aor, binding().key)
        assert await store.list_bindings(T0) == [keep]
        await store.remove_binding("sip:nobody@example.com", "sip:x@y")  # unknown: no error
        assert await store.list_bindings(T0) == [keep]

    async def test_remove_bindings_removes_only_that_aor(self, store: StateStore) -> None:
        other = binding("sip:carol@example.com", "sip:carol@192.0.2.30")
        await store.put_binding(binding())
        await store.put_binding(binding(key="sip:bob@192.0.2.21"))
        await store.put_binding(other)
        await store.remove_bindings(binding().aor)
        assert await store.list_bindings(T0) == [other]

    async def test_expired_bindings_are_not_listed_and_are_deleted(self, store: StateStore) -> None:
        live = binding(key="sip:bob@192.0.2.21", expires_at=T0 + 60)
        await store.put_binding(binding(expires_at=T0 + 30))
        await store.put_binding(live)
        assert await store.list_bindings(T0 + 30) == [live]
        assert await store.list_bindings(T0) == [live]  # deleted, not merely hidden

    async def test_purge_expired_deletes_routes_and_bindings(self, store: StateStore) -> None:
        await store.put_route(route("sip:a@x.example", expires_at=T0 + 1))
        await store.put_route(route("sip:b@x.example", expires_at=T0 + 100))
        await store.put_binding(binding(expires_at=T0 + 1))
        assert await store.purge_expired(T0 + 1) == 2
        assert await store.purge_expired(T0 + 1) == 0
        assert [r.old_uri for r in await store.list_routes(T0)] == ["sip:b@x.example"]
        assert await store.list_bindings(T0) == []

    # -- generation -----------------------------------------------------------------------------

    async def test_generation_increases_on_each_write(self, store: StateStore) -> None:
        writes: list[Callable[[], Awaitable[object]]] = [
            lambda: store.put_route(route()),
            lambda: store.put_route(route(new="sip:alice@newer.example.com")),
            lambda: store.remove_route(route().old_uri),
            lambda: store.remove_route(route().old_uri),  # nothing to remove: still a write
            lambda: store.clear_routes(),
            lambda: store.put_binding(binding()),
            lambda: store.remove_binding(binding().aor, binding().key),
            lambda: store.remove_bindings(binding().aor),
            lambda: store.put_upstream_state(UpstreamState("sip:10.0.0.20:5060", "drain", T0)),
        ]
        seen = [await store.generation()]
        for write in writes:
            await write()
            seen.append(await store.generation())
        assert all(b > a for a, b in itertools.pairwise(seen)), seen

    # -- upstream states (README "Runtime control of upstreams") ------------------------------

    async def test_upstream_states_round_trip_sorted_and_replaced(self, store: StateStore) -> None:
        assert await store.list_upstream_states() == []
        b = UpstreamState("sip:10.0.0.21:5060;transport=tcp", "down", T0, "node-b")
        a = UpstreamState("sip:10.0.0.20:5060", "drain", T0 + 0.5, "node-a")
        await store.put_upstream_state(b)
        await store.put_upstream_state(a)
        assert await store.list_upstream_states() == [a, b]
        back = UpstreamState("sip:10.0.0.20:5060", "up", T0 + 60, "node-b")
        await store.put_upstream_state(back)
        assert await store.list_upstream_states() == [back, b]
        # never expires, never purged
        assert await store.purge_expired(T0 + 10**9) == 0
        assert await store.list_upstream_states() == [back, b]

    async def test_reads_and_expiry_housekeeping_leave_generation_alone(self, store: StateStore) -> None:
        await store.put_route(route(expires_at=T0 + 1))
        await store.put_binding(binding(expires_at=T0 + 1))
        before = await store.generation()
        assert await store.get_route(route().old_uri, T0) is not None
        assert await store.get_route(route().old_uri, T0 + 1) is None  # deletes the expired row
        assert await store.list_routes(T0 + 1) == []
        assert await store.list_bindings(T0 + 1) == []
        assert await store.purge_expired(T0 + 1) == 0
        assert await store.generation() == before


class StoreBatchContract(OpenStore):
    """Batches, the incarnation and the shared key (tests/unit/test_store_life.py says what
    each promises). Needs a ``kind`` fixture in the module."""

    async def test_a_batch_is_applied_in_order_with_one_generation_bump(self, store: StateStore) -> None:
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

    async def test_a_batch_with_a_change_it_cannot_apply_writes_nothing(self, store: StateStore) -> None:
        before = await store.generation()
        with pytest.raises(ValueError, match="clear_routes"):
            await store.write_batch([put("sip:a@example.com"), StoreChange("clear_routes", "")])
        with pytest.raises(ValueError, match="without its binding"):
            await store.write_batch([put("sip:a@example.com"), StoreChange("put_binding", "")])
        assert await store.list_bindings(T0) == []
        assert await store.generation() == before

    async def test_a_large_batch_round_trips(self, store: StateStore) -> None:
        changes = [put(f"sip:u{i:04}@example.com") for i in range(1200)]
        await store.write_batch(changes)
        stored = await store.list_bindings(T0)
        assert [b.aor for b in stored] == [c.binding.aor for c in changes if c.binding]
        assert stored[0] == changes[0].binding

    async def test_the_incarnation_is_stable_while_the_store_lives(self, store: StateStore) -> None:
        first = await store.incarnation()
        assert first.epoch
        await store.write_batch([put("sip:a@example.com")])
        second = await store.incarnation()
        assert second.epoch == first.epoch and second.generation == first.generation + 1
        assert not second.reset_since(first)

    async def test_the_shared_key_is_made_by_the_first_and_read_by_the_others(
            self, store: StateStore) -> None:
        assert await store.shared_key(None) is None  # reading alone creates nothing
        assert await store.shared_key(b"k" * 32) == b"k" * 32
        assert await store.shared_key(b"z" * 32) == b"k" * 32  # create-if-absent: the first wins
        assert await store.shared_key(None) == b"k" * 32
