"""The ``sqlite:PATH`` backend of :class:`proxy.store.StateStore`.

One stdlib :mod:`sqlite3` connection, created, used and closed by one dedicated worker thread
(sqlite connections are bound to the thread that made them), so the event loop never blocks
on the disk and the operations of one store object run in the order they were awaited.

Durability and sharing:

* WAL journal with ``synchronous=FULL``: a commit is fsync'd before the ``await`` returns,
  readers never block the writer, and another process (``sip-policy-proxy routes ...``)
  can open the same file while the proxy runs;
* every write is one ``BEGIN IMMEDIATE`` transaction that also bumps ``meta.generation``,
  so a generation read by any process moves with every committed write of any process;
* a busy timeout lets a writer wait for another process's transaction instead of failing.

Batches (:meth:`SqliteStore.write_batch`) are one transaction, ``executemany`` by runs of the
same op, one fsync and one generation bump for the lot.

Its life (:meth:`SqliteStore.incarnation`): the ``identity`` table holds the ``epoch``, made
when the file is created, and the key proxies without a ``secret`` share (``flow_key``). A
file replaced or removed under the running proxy is noticed by its inode: the store then
opens whatever is at the path now (creating it), whose epoch differs.

The schema is versioned in the ``meta`` table (``schema_version``, ``generation``).
:meth:`SqliteStore.open` creates it, applies the migrations the file lacks, and refuses a
file written by a newer schema (:class:`SchemaVersionError`), a damaged file and a database
that is not a state store (:class:`CorruptStoreError`).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from proxy.store.base import (
    CorruptStoreError,
    Incarnation,
    LearnedRoute,
    SchemaVersionError,
    StoreChange,
    StoredBinding,
    StoreError,
    UpstreamState,
    check_batch,
)

__all__ = ["SCHEMA_VERSION", "SqliteStore"]

P = ParamSpec("P")
T = TypeVar("T")

# Each entry upgrades the schema by one version: _MIGRATIONS[0] takes an empty file to 1.
# Never edit a released entry; append a new one and the code's SCHEMA_VERSION follows.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE routes (
            old_uri TEXT NOT NULL PRIMARY KEY,
            new_uri TEXT NOT NULL,
            source TEXT NOT NULL,
            call_id TEXT NOT NULL,
            status INTEGER NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX routes_expires_at ON routes (expires_at)",
        """CREATE TABLE bindings (
            aor TEXT NOT NULL,
            key TEXT NOT NULL,
            contact TEXT NOT NULL,
            uri TEXT NOT NULL,
            expires_at REAL NOT NULL,
            q REAL NOT NULL,
            call_id TEXT NOT NULL,
            cseq INTEGER NOT NULL,
            flow_transport TEXT NOT NULL,
            flow_host TEXT NOT NULL,
            flow_port INTEGER NOT NULL,
            registered_at REAL NOT NULL,
            instance TEXT,
            reg_id INTEGER,
            PRIMARY KEY (aor, key)
        ) WITHOUT ROWID""",
        "CREATE INDEX bindings_expires_at ON bindings (expires_at)",
    ),
    # 2: the node (``node:`` of proxy.yaml) whose socket holds a binding's flow.
    ("ALTER TABLE bindings ADD COLUMN node TEXT NOT NULL DEFAULT ''",),
    # 3: the store's epoch and the key shared by proxies without a configured secret.
    ("CREATE TABLE identity (name TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL) "
     "WITHOUT ROWID",),
    # 4: the administrative state of each upstream (up, drain, down) an operator set.
    ("CREATE TABLE upstreams (upstream TEXT NOT NULL PRIMARY KEY, state TEXT NOT NULL, "
     "since REAL NOT NULL, node TEXT NOT NULL) WITHOUT ROWID",),
)
SCHEMA_VERSION = len(_MIGRATIONS)

# SQLite primary result codes meaning "this file is not a (healthy) database".
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_ROUTE_COLUMNS = "old_uri, new_uri, source, call_id, status, created_at, expires_at"
_BINDING_COLUMNS = (
    "aor, key, contact, uri, expires_at, q, call_id, cseq, flow_transport, flow_host, "
    "flow_port, registered_at, instance, reg_id, node"
)
_PUT_ROUTE = f"INSERT OR REPLACE INTO routes ({_ROUTE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
_GET_ROUTE = f"SELECT {_ROUTE_COLUMNS} FROM routes WHERE old_uri = ?"
_LIST_ROUTES = f"SELECT {_ROUTE_COLUMNS} FROM routes WHERE expires_at > ? ORDER BY old_uri"
_PUT_BINDING = (
    f"INSERT OR REPLACE INTO bindings ({_BINDING_COLUMNS}) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LIST_BINDINGS = (
    f"SELECT {_BINDING_COLUMNS} FROM bindings WHERE expires_at > ? ORDER BY aor, key"
)
_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'generation'"
_NEW_IDENTITY = "INSERT OR IGNORE INTO identity (name, value) VALUES (?, ?)"
_IDENTITY = "SELECT value FROM identity WHERE name = ?"
_GENERATION = "SELECT value FROM meta WHERE key = 'generation'"


class SqliteStore:
    """A :class:`proxy.store.StateStore` in one SQLite file (WAL, ``synchronous=FULL``).

    ``busy_timeout`` is how long a write waits for another process's transaction before
    failing with :class:`StoreError`.
    """

    #: changes per write_batch the state keeper hands it: one transaction and one fsync
    #: each, in the worker thread (the loop only builds the list)
    batch_size = 2000

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None  # set while open (event loop side)
        self._conn: sqlite3.Connection | None = None  # touched by the worker thread only
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of the file open

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"

    @property
    def path(self) -> Path:
        return self._path

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        # Published before the worker runs: calls made meanwhile queue behind the open.
        self._executor = executor
        try:
            await self._submit(executor, "open", self._open_sync)
        except BaseException:
            self._executor = None
            executor.shutdown(wait=False)
            raise

    async def close(self) -> None:
        executor = self._executor
        if executor is None:
            return
        self._executor = None
        try:
            await self._submit(executor, "close", self._close_sync)
        finally:
            executor.shutdown(wait=False)  # the worker is idle once the close has run

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- learned routes (RFC 3261 21.3.2) ---------------------------------------------------

    async def put_route(self, r: LearnedRoute) -> None:
        await self._run("put_route", _put_route, r)

    async def get_route(self, old_uri: str, now: float) -> LearnedRoute | None:
        return await self._run("get_route", _get_route, old_uri, now)

    async def remove_route(self, old_uri: str) -> bool:
        return await self._run("remove_route", _remove_route, old_uri)

    async def list_routes(self, now: float) -> list[LearnedRoute]:
        return await self._run("list_routes", _list_routes, now)

    async def clear_routes(self) -> int:
        return await self._run("clear_routes", _clear_routes)

    # -- registrations (RFC 3261 10.3, RFC 5626) --------------------------------------------

    async def put_binding(self, b: StoredBinding) -> None:
        await self._run("put_binding", _put_binding, b)

    async def remove_binding(self, aor: str, key: str) -> None:
        await self._run("remove_binding", _remove_binding, aor, key)

    async def remove_bindings(self, aor: str) -> None:
        await self._run("remove_bindings", _remove_bindings, aor)

    async def list_bindings(self, now: float) -> list[StoredBinding]:
        return await self._run("list_bindings", _list_bindings, now)

    # -- housekeeping -----------------------------------------------------------------------

    async def purge_expired(self, now: float) -> int:
        return await self._run("purge_expired", _purge_expired, now)

    async def generation(self) -> int:
        return await self._run("generation", _generation)

    async def write_batch(self, changes: Sequence[StoreChange]) -> int:
        check_batch(changes)
        return await self._run("write_batch", _write_batch, list(changes))

    async def incarnation(self) -> Incarnation:
        executor = self._executor
        if executor is None:
            raise StoreError(f"sqlite state store {self._path}: not open")
        return await self._submit(executor, "incarnation", self._incarnation_sync)

    async def shared_key(self, candidate: bytes | None) -> bytes | None:
        return await self._run("shared_key", _shared_key, candidate)

    async def put_upstream_state(self, s: UpstreamState) -> None:
        await self._run("put_upstream_state", _put_upstream_state, s)

    async def list_upstream_states(self) -> list[UpstreamState]:
        return await self._run("list_upstream_states", _list_upstream_states)

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(
        self,
        what: str,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        executor = self._executor
        if executor is None:
            raise StoreError(f"sqlite state store {self._path}: not open")
        return await self._submit(executor, what, partial(self._with_conn, fn, *args, **kwargs))

    async def _submit(self, executor: ThreadPoolExecutor, what: str, job: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, job)
        except sqlite3.Error as exc:
            raise self._error(what, exc) from exc
        except OSError as exc:
            raise StoreError(f"sqlite state store {self._path}: {what}: {exc}") from exc

    def _with_conn(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        conn = self._conn
        if conn is None:  # the open failed while this call was queued behind it
            raise StoreError(f"sqlite state store {self._path}: not open")
        try:
            return fn(conn, *args, **kwargs)
        except (ValueError, TypeError) as exc:  # a row that does not decode
            raise CorruptStoreError(
                f"sqlite state store {self._path}: a stored row is invalid: {exc}"
            ) from exc

    def _error(self, what: str, exc: sqlite3.Error) -> StoreError:
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return CorruptStoreError(
                f"sqlite state store {self._path}: the file is damaged or is not an SQLite "
                f"database ({exc}); move it aside to start with an empty store"
            )
        return StoreError(f"sqlite state store {self._path}: {what}: {exc}")

    def _open_sync(self) -> None:
        """In the worker: connect, set the pragmas, create or migrate the schema."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"sqlite state store {self._path}: cannot use the WAL journal "
                    f"(journal_mode is {mode!r})"
                )
            conn.execute("PRAGMA synchronous=FULL")
            with _transaction(conn, bump=False):
                self._migrate(conn)
                conn.execute(_NEW_IDENTITY, ("epoch", secrets.token_hex(8)))
            st = os.stat(self._path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._file = (st.st_dev, st.st_ino)

    def _incarnation_sync(self) -> Incarnation:
        """In the worker: the epoch and generation of the file at the path *now*; a file
        replaced or removed since it was opened is let go and the one there opened (or
        created) instead."""
        try:
            st = os.stat(self._path)
            here: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            here = None
        if self._conn is None or here != self._file:
            self._close_sync()
            self._open_sync()
        return self._with_conn(_incarnation)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        self._file = None
        if conn is not None:
            conn.close()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = self._schema_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"sqlite state store {self._path}: schema version {version} is newer than "
                f"this sip-policy-proxy knows ({SCHEMA_VERSION}); upgrade sip-policy-proxy "
                "or point `state:` at another file"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,)
            )

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version; an empty file gets a ``meta`` table at version 0."""
        tables = {
            str(row[0])
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "meta" not in tables:
            if tables:
                raise CorruptStoreError(
                    f"sqlite state store {self._path}: not a sip-policy-proxy state store "
                    f"(it has the tables {', '.join(sorted(tables))} but no meta table)"
                )
            conn.execute(
                "CREATE TABLE meta (key TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)"
            )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', 0), ('generation', 0)"
            )
            return 0
        try:
            meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
        except sqlite3.OperationalError as exc:
            raise CorruptStoreError(
                f"sqlite state store {self._path}: its meta table is not ours ({exc})"
            ) from exc
        version = meta.get("schema_version")
        if not isinstance(version, int) or version < 0:
            raise CorruptStoreError(
                f"sqlite state store {self._path}: meta.schema_version is {version!r}, "
                "not a version number"
            )
        if not isinstance(meta.get("generation"), int):
            raise CorruptStoreError(
                f"sqlite state store {self._path}: meta.generation is "
                f"{meta.get('generation')!r}, not a counter"
            )
        return version


# -- worker-side operations: each runs in the store's thread with its connection -------------


@contextmanager
def _transaction(conn: sqlite3.Connection, *, bump: bool = True) -> Iterator[None]:
    """One write transaction; ``bump`` also moves the generation in it.

    ``BEGIN IMMEDIATE`` takes the write lock up front, so two processes never deadlock on a
    read-to-write upgrade; the busy timeout makes the second one wait.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        if bump:
            conn.execute(_BUMP)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error says more
        raise


def _route(row: tuple[Any, ...]) -> LearnedRoute:
    return LearnedRoute(*row)


def _binding(row: tuple[Any, ...]) -> StoredBinding:
    return StoredBinding(*row)


def _put_route(conn: sqlite3.Connection, r: LearnedRoute) -> None:
    with _transaction(conn):
        conn.execute(_PUT_ROUTE, _route_row(r))


def _get_route(conn: sqlite3.Connection, old_uri: str, now: float) -> LearnedRoute | None:
    row = conn.execute(_GET_ROUTE, (old_uri,)).fetchone()
    if row is None:
        return None
    route = _route(row)
    if not route.expired(now):
        return route
    with _transaction(conn, bump=False):
        # Conditional: another process may have stored a fresh route meanwhile.
        conn.execute("DELETE FROM routes WHERE old_uri = ? AND expires_at <= ?", (old_uri, now))
    return None


def _remove_route(conn: sqlite3.Connection, old_uri: str) -> bool:
    with _transaction(conn):
        cur = conn.execute("DELETE FROM routes WHERE old_uri = ?", (old_uri,))
    return cur.rowcount > 0


def _list_routes(conn: sqlite3.Connection, now: float) -> list[LearnedRoute]:
    _purge(conn, "routes", now)
    return [_route(row) for row in conn.execute(_LIST_ROUTES, (now,))]


def _clear_routes(conn: sqlite3.Connection) -> int:
    with _transaction(conn):
        cur = conn.execute("DELETE FROM routes")
    return cur.rowcount


def _put_binding(conn: sqlite3.Connection, b: StoredBinding) -> None:
    with _transaction(conn):
        conn.execute(_PUT_BINDING, _binding_row(b))


def _binding_row(b: StoredBinding) -> tuple[object, ...]:
    return (b.aor, b.key, b.contact, b.uri, b.expires_at, b.q, b.call_id, b.cseq,
            b.flow_transport, b.flow_host, b.flow_port, b.registered_at, b.instance, b.reg_id,
            b.node)


def _route_row(r: LearnedRoute) -> tuple[object, ...]:
    return (r.old_uri, r.new_uri, r.source, r.call_id, r.status, r.created_at, r.expires_at)


#: op -> (statement, the parameters of one change), for :func:`_write_batch`
_BATCH: dict[str, tuple[str, Callable[[StoreChange], tuple[object, ...]]]] = {
    "put_binding": (_PUT_BINDING, lambda c: _binding_row(c.binding)),  # type: ignore[arg-type]
    "remove_binding": ("DELETE FROM bindings WHERE aor = ? AND key = ?",
                       lambda c: (c.aor, c.key)),
    "remove_bindings": ("DELETE FROM bindings WHERE aor = ?", lambda c: (c.aor,)),
    "put_route": (_PUT_ROUTE, lambda c: _route_row(c.route)),  # type: ignore[arg-type]
    "remove_route": ("DELETE FROM routes WHERE old_uri = ?", lambda c: (c.old_uri,)),
}


def _write_batch(conn: sqlite3.Connection, changes: list[StoreChange]) -> int:
    """The changes in order, in one transaction (``executemany`` by runs of one op), with one
    generation bump; returns the generation read inside that transaction (so that it is this
    batch's, not a later writer's)."""
    with _transaction(conn, bump=False):
        for op, run in itertools.groupby(changes, key=lambda c: c.op):
            statement, params = _BATCH[op]
            conn.executemany(statement, [params(c) for c in run])
        conn.execute(_BUMP)
        generation = _generation(conn)
    return generation


def _incarnation(conn: sqlite3.Connection) -> Incarnation:
    row = conn.execute(_IDENTITY, ("epoch",)).fetchone()
    if row is None:  # a file of schema 3 whose epoch was deleted by hand: a new life
        with _transaction(conn, bump=False):
            conn.execute(_NEW_IDENTITY, ("epoch", secrets.token_hex(8)))
        row = conn.execute(_IDENTITY, ("epoch",)).fetchone()
    return Incarnation(str(row[0]), _generation(conn))


def _shared_key(conn: sqlite3.Connection, candidate: bytes | None) -> bytes | None:
    if candidate is not None:
        with _transaction(conn, bump=False):
            conn.execute(_NEW_IDENTITY, ("flow_key", candidate.hex()))
    row = conn.execute(_IDENTITY, ("flow_key",)).fetchone()
    return None if row is None else bytes.fromhex(str(row[0]))


def _put_upstream_state(conn: sqlite3.Connection, s: UpstreamState) -> None:
    with _transaction(conn):
        conn.execute("INSERT OR REPLACE INTO upstreams (upstream, state, since, node) "
                     "VALUES (?, ?, ?, ?)", (s.upstream, s.state, s.since, s.node))


def _list_upstream_states(conn: sqlite3.Connection) -> list[UpstreamState]:
    rows = conn.execute("SELECT upstream, state, since, node FROM upstreams ORDER BY upstream")
    return [UpstreamState(str(u), str(st), float(since), str(node))
            for u, st, since, node in rows]


def _remove_binding(conn: sqlite3.Connection, aor: str, key: str) -> None:
    with _transaction(conn):
        conn.execute("DELETE FROM bindings WHERE aor = ? AND key = ?", (aor, key))


def _remove_bindings(conn: sqlite3.Connection, aor: str) -> None:
    with _transaction(conn):
        conn.execute("DELETE FROM bindings WHERE aor = ?", (aor,))


def _list_bindings(conn: sqlite3.Connection, now: float) -> list[StoredBinding]:
    _purge(conn, "bindings", now)
    return [_binding(row) for row in conn.execute(_LIST_BINDINGS, (now,))]


def _purge_expired(conn: sqlite3.Connection, now: float) -> int:
    return _purge(conn, "routes", now) + _purge(conn, "bindings", now)


def _purge(conn: sqlite3.Connection, table: str, now: float) -> int:
    """Delete the expired rows of ``table``; takes the write lock only when there are some."""
    probe = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE expires_at <= ?)"
    if not conn.execute(probe, (now,)).fetchone()[0]:
        return 0
    with _transaction(conn, bump=False):
        cur = conn.execute(f"DELETE FROM {table} WHERE expires_at <= ?", (now,))
    return cur.rowcount


def _generation(conn: sqlite3.Connection) -> int:
    row = conn.execute(_GENERATION).fetchone()
    if row is None or not isinstance(row[0], int):
        raise ValueError("meta.generation is missing")
    return row[0]
