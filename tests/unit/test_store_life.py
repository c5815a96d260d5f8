"""The state store's batches, its incarnation (epoch and generation) and the key it shares,
against the backends that need no server (memory, sqlite); the same against a real
redis-server and a real 3-node Redis Cluster is in tests/system/test_store_backends.py.

* ``write_batch`` applies the changes in order in one round trip and bumps the generation once;
  a batch with a change it cannot apply is refused before anything is written;
* ``incarnation`` stays the same while the store lives, and changes when the store is reset
  (Redis flushed or restarted empty, the sqlite file replaced or removed under the proxy);
* ``shared_key`` is create-if-absent: the first candidate wins, the others read it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from proxy.store.base import Incarnation
from proxy.store.sqlite import SqliteStore
from tests.store_suite import T0, StoreBatchContract, make_store, put


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestStoreBatchContract(StoreBatchContract):
    """Batches, a stable incarnation and the create-if-absent key (tests/store_suite.py)
    against memory and sqlite."""


# -- incarnation ----------------------------------------------------------------------------


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


# -- the shared key ---------------------------------------------------------------------------


async def test_two_stores_on_one_backend_agree_on_one_key(tmp_path: Path) -> None:
    a, b = make_store("sqlite", tmp_path), make_store("sqlite", tmp_path)
    async with a, b:
        ka, kb = await asyncio.gather(a.shared_key(b"a" * 32), b.shared_key(b"b" * 32))
        assert ka == kb and ka in (b"a" * 32, b"b" * 32)
