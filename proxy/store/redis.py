"""The Redis backends of :class:`proxy.store.StateStore`: ``redis://``, ``rediss://`` and
``redis+cluster://``, through the ``redis`` package's asyncio client (no hand-written RESP).

Imported only when a ``proxy.yaml`` names a Redis state, so that the other backends never
import the client library.

Layout (every key under one prefix, ``spp:`` by default):

* ``spp:schema``: the schema version (:data:`SCHEMA_VERSION`), written once by the first
  store that opens an empty database; a newer one is refused (:class:`SchemaVersionError`);
* ``spp:gen``: the generation counter, ``INCR``-ed by every write (once per batch);
* ``spp:epoch``: a random id made (``SET NX``) by the first store that finds it absent: a
  Redis restarted without its data (or flushed) has a new one, which tells the proxies to
  write what they hold into it again (:meth:`RedisStore.incarnation`);
* ``spp:key``: the key proxies without a configured ``secret`` share for flow tokens, branch
  MACs and digest nonces (hex), made by the first (``SET NX``), read by the others;
* ``spp:route:<old_uri>``: one learned route, a JSON object, expiring with the route
  (``PXAT``);
* ``spp:reg:<aor>``: the bindings of one address-of-record, a hash of binding key -> JSON
  object; the key expires with the latest of its bindings (``PEXPIREAT NX`` then ``GT``), and
  a binding that expired before its siblings is skipped (and deleted) when read;
* ``spp:upstream:<uri>``: the administrative state (up, drain, down) an operator set for
  one upstream, a JSON object, kept until set again;
* ``spp:node:<name>``: the SIP addresses of a running proxy (``node:``) and the id of its
  key (a hash, never the key), refreshed with a TTL, so that another node can send it the
  requests for the flows it holds, and say so when their keys differ;
* channel ``spp:changes``: every write publishes one JSON message (a :class:`StoreChange`),
  so that the other proxies update their in-memory view within a round trip; no polling.

Each key stands alone (no multi-key transaction), so the same code runs on a Redis Cluster,
where keys of different slots live on different nodes; listing scans every primary. A batch
of writes (:meth:`RedisStore.write_batch`) is one script call on one Redis (the changes in
order, each followed by its ``PUBLISH``, then the generation), and a pipeline of one script
per change on a cluster (in order, one round trip per node).

Expiry: the TTLs are computed against the store's clock (``clock``, the wall clock by default;
tests pass their own), and keys live one second longer than their value's ``expires_at`` so
that a reader with a slightly late clock still sees them until they expire for it.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple, Self, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

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

__all__ = ["SCHEMA_VERSION", "NodeInfo", "RedisStore", "open_redis", "redacted"]

SCHEMA_VERSION = 1
PREFIX = "spp:"
CHANNEL_SUFFIX = "changes"
GRACE = 1.0  # seconds a key outlives its value's expires_at
READ_BATCH = 500  # keys read per pipeline when listing
LISTING_BOUND = 60.0  # seconds a whole listing may take (each round trip has its timeout)
T = TypeVar("T")
# The writes of a batch: each changes one key (KEYS[1]) and publishes the change (ARGV[1]
# channel, ARGV[2] message); a binding's key expires with the latest of its bindings.
_PUT_BINDING = """
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[5], 'NX')
redis.call('PEXPIREAT', KEYS[1], ARGV[5], 'GT')
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
_REMOVE_BINDING = """
redis.call('HDEL', KEYS[1], ARGV[3])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
_PUT_ROUTE = """
redis.call('SET', KEYS[1], ARGV[3], 'PXAT', ARGV[4])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
_DELETE = """
redis.call('DEL', KEYS[1])
return redis.call('PUBLISH', ARGV[1], ARGV[2])
"""
# A whole batch on one Redis: KEYS[1] the generation, KEYS[2..] the key of each change;
# ARGV[1] the channel, then per change its op and arguments, the message last.
_BATCH = """
local ch, n = ARGV[1], 2
for i = 2, #KEYS do
  local k, op = KEYS[i], ARGV[n]
  if op == 'pb' then
    redis.call('HSET', k, ARGV[n + 1], ARGV[n + 2])
    redis.call('PEXPIREAT', k, ARGV[n + 3], 'NX')
    redis.call('PEXPIREAT', k, ARGV[n + 3], 'GT')
    n = n + 4
  elseif op == 'rb' then
    redis.call('HDEL', k, ARGV[n + 1])
    n = n + 2
  elseif op == 'pr' then
    redis.call('SET', k, ARGV[n + 1], 'PXAT', ARGV[n + 2])
    n = n + 3
  else
    redis.call('DEL', k)
    n = n + 1
  end
  redis.call('PUBLISH', ch, ARGV[n])
  n = n + 1
end
return redis.call('INCR', KEYS[1])
"""

_ROUTE_FIELDS = ("old_uri", "new_uri", "source", "call_id", "status", "created_at", "expires_at")
_BINDING_FIELDS = (
    "aor", "key", "contact", "uri", "expires_at", "q", "call_id", "cseq", "flow_transport",
    "flow_host", "flow_port", "registered_at", "instance", "reg_id", "node",
)


class NodeInfo(NamedTuple):
    """What a running proxy announces: its SIP addresses ("transport:host:port") and the id
    of the key it uses ("" when it did not say)."""

    addresses: list[str]
    key_id: str = ""


def redacted(spec: str) -> str:
    """``spec`` with its password replaced by ``***`` (for logs and error messages)."""
    scheme, sep, rest = spec.partition("://")
    if not sep or "@" not in rest:
        return spec
    cred, _, hosts = rest.rpartition("@")
    user = cred.split(":", 1)[0] if ":" in cred else ""
    return f"{scheme}://{user}:***@{hosts}"


def route_to_json(r: LearnedRoute) -> dict[str, Any]:
    return {f: getattr(r, f) for f in _ROUTE_FIELDS}


def route_from_json(d: Any) -> LearnedRoute:
    if not isinstance(d, dict):
        raise ValueError("a route is a JSON object")
    return LearnedRoute(
        str(d["old_uri"]), str(d["new_uri"]), str(d["source"]), str(d["call_id"]),
        int(d["status"]), float(d["created_at"]), float(d["expires_at"]),
    )


def binding_to_json(b: StoredBinding) -> dict[str, Any]:
    return {f: getattr(b, f) for f in _BINDING_FIELDS}


def binding_from_json(d: Any) -> StoredBinding:
    if not isinstance(d, dict):
        raise ValueError("a binding is a JSON object")
    reg_id = d.get("reg_id")
    instance = d.get("instance")
    return StoredBinding(
        aor=str(d["aor"]), key=str(d["key"]), contact=str(d["contact"]), uri=str(d["uri"]),
        expires_at=float(d["expires_at"]), q=float(d["q"]), call_id=str(d["call_id"]),
        cseq=int(d["cseq"]), flow_transport=str(d["flow_transport"]),
        flow_host=str(d["flow_host"]), flow_port=int(d["flow_port"]),
        registered_at=float(d["registered_at"]),
        instance=None if instance is None else str(instance),
        reg_id=None if reg_id is None else int(reg_id), node=str(d.get("node") or ""),
    )


def change_to_json(c: StoreChange) -> str:
    d: dict[str, Any] = {"op": c.op, "origin": c.origin}
    if c.upstream is not None:
        d["upstream"] = c.upstream.as_dict()
    if c.route is not None:
        d["route"] = route_to_json(c.route)
    if c.binding is not None:
        d["binding"] = binding_to_json(c.binding)
    if c.aor is not None:
        d["aor"] = c.aor
    if c.key is not None:
        d["key"] = c.key
    if c.old_uri is not None:
        d["old_uri"] = c.old_uri
    return json.dumps(d, separators=(",", ":"))


def change_from_json(text: str | bytes) -> StoreChange | None:
    """The change a message carries; None for one this code does not understand."""
    try:
        d = json.loads(text)
        if not isinstance(d, dict) or not isinstance(d.get("op"), str):
            return None
        return StoreChange(
            op=d["op"], origin=str(d.get("origin", "")),
            route=route_from_json(d["route"]) if "route" in d else None,
            binding=binding_from_json(d["binding"]) if "binding" in d else None,
            aor=d.get("aor"), key=d.get("key"), old_uri=d.get("old_uri"),
            upstream=UpstreamState.from_dict(d["upstream"]) if "upstream" in d else None,
        )
    except (ValueError, KeyError, TypeError):
        return None


def _cluster_seeds(rest: str) -> tuple[list[ClusterNode], str | None]:
    cred, _, hosts = rest.rpartition("@")
    password = unquote(cred.split(":", 1)[1]) if ":" in cred else None
    seeds: list[ClusterNode] = []
    for item in hosts.split("/", 1)[0].split(","):
        item = item.strip()
        if not item:
            continue
        u = urlsplit(f"//{item}")
        if not u.hostname:
            raise ValueError(f"redis+cluster seed {item!r} has no host")
        seeds.append(ClusterNode(u.hostname, u.port or 6379))
    if not seeds:
        raise ValueError("redis+cluster:// needs at least one HOST:PORT seed")
    return seeds, password


class RedisStore:
    """A :class:`proxy.store.StateStore` in Redis, Valkey or a Redis Cluster.

    ``node`` names the writer in the change messages (a proxy skips its own); ``timeout``
    bounds every command and connection attempt, so that an unreachable server costs at most
    that long and then raises :class:`StoreError`.
    """

    #: changes per write_batch the state keeper hands it: a batch is encoded on the event
    #: loop (about 40 µs a change), so it is kept small; round trips are cheap
    batch_size = 200

    def __init__(self, spec: str, *, node: str = "cli", timeout: float = 1.0,
                 prefix: str = PREFIX, clock: Callable[[], float] = time.time) -> None:
        scheme = spec.partition("://")[0].lower()
        if scheme not in ("redis", "rediss", "redis+cluster"):
            raise ValueError(f"not a redis state: {redacted(spec)}")
        self._spec = spec
        self._cluster = scheme == "redis+cluster"
        if self._cluster:
            _cluster_seeds(spec.partition("://")[2])  # validate now: a config error
        self.node = node
        self._timeout = timeout
        self._prefix = prefix
        self._clock = clock
        self._client: Any = None  # redis.asyncio.Redis | RedisCluster while open
        self.channel = prefix + CHANNEL_SUFFIX

    def __repr__(self) -> str:
        return f"RedisStore({redacted(self._spec)!r})"

    @property
    def name(self) -> str:
        return redacted(self._spec)

    # -- lifecycle --------------------------------------------------------------------------

    def _new_client(self) -> Any:
        opts: dict[str, Any] = {
            "socket_timeout": self._timeout, "socket_connect_timeout": self._timeout,
            "decode_responses": True,
        }
        if self._cluster:
            seeds, password = _cluster_seeds(self._spec.partition("://")[2])
            return RedisCluster(startup_nodes=seeds, password=password,
                                require_full_coverage=True, **opts)
        return aioredis.Redis.from_url(self._spec, retry_on_timeout=False, **opts)

    async def open(self) -> None:
        if self._client is not None:
            return
        client = self._new_client()
        try:
            await self._guard("open", self._open_on(client))
        except BaseException:
            await _close_quietly(client)
            raise
        self._client = client

    async def _open_on(self, client: Any) -> None:
        if self._cluster:
            await client.initialize()
        await client.ping()
        key = self._prefix + "schema"
        await client.set(key, SCHEMA_VERSION, nx=True)
        await client.set(self._prefix + "epoch", secrets.token_hex(8), nx=True)
        raw = await client.get(key)
        try:
            version = int(raw)
        except (TypeError, ValueError):
            raise CorruptStoreError(
                f"redis state store {self.name}: {key} is {raw!r}, not a schema version; "
                "is this database used by another application?") from None
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"redis state store {self.name}: schema version {version} is newer than this "
                f"sip-policy-proxy knows ({SCHEMA_VERSION}); upgrade sip-policy-proxy")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _close_quietly(client)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _c(self) -> Any:
        if self._client is None:
            raise StoreError(f"redis state store {self.name}: not open")
        return self._client

    async def _guard(self, what: str, aw: Awaitable[T], *, listing: bool = False) -> T:
        """``aw`` bounded in time, its failures as :class:`StoreError`. A listing makes one
        round trip per 500 keys (each bounded by the client's timeout): it gets a minute."""
        try:
            return await asyncio.wait_for(aw, LISTING_BOUND if listing else 4 * self._timeout + 1)
        except StoreError:
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"redis state store {self.name}: {what}: {text}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(
                f"redis state store {self.name}: a stored value is invalid: {exc}") from exc

    def _px(self, expires_at: float) -> int:
        """PXAT for a value expiring at ``expires_at`` on the store's clock, as real time."""
        left = expires_at + GRACE - self._clock()
        return max(1, int(math.ceil((time.time() + left) * 1000)))

    def _queue_change(self, pipe: Any, change: StoreChange) -> None:
        """One change of a batch onto ``pipe``: a script that writes it and publishes it,
        one reply (redis-py reads each reply: four commands cost four times one), on the
        change's own key (so that it runs on a Redis Cluster, whose pipelines refuse a bare
        PUBLISH)."""
        p, op = self._prefix, change.op
        msg = change_to_json(replace(change, origin=self.node))
        if op == "put_binding":
            b = change.binding
            assert b is not None
            pipe.eval(_PUT_BINDING, 1, p + "reg:" + b.aor, self.channel, msg, b.key,
                      json.dumps(binding_to_json(b)), self._px(b.expires_at))
        elif op == "remove_binding":
            pipe.eval(_REMOVE_BINDING, 1, p + "reg:" + str(change.aor), self.channel, msg,
                      str(change.key))
        elif op == "remove_bindings":
            pipe.eval(_DELETE, 1, p + "reg:" + str(change.aor), self.channel, msg)
        elif op == "put_route":
            r = change.route
            assert r is not None
            pipe.eval(_PUT_ROUTE, 1, p + "route:" + r.old_uri, self.channel, msg,
                      json.dumps(route_to_json(r)), self._px(r.expires_at))
        else:  # remove_route (check_batch let nothing else through)
            pipe.eval(_DELETE, 1, p + "route:" + str(change.old_uri), self.channel, msg)

    async def write_batch(self, changes: Sequence[StoreChange]) -> int:
        check_batch(changes)
        if not changes:
            return await self.generation()
        if not self._cluster:
            return await self._guard("write_batch", self._write_in_one_script(changes))

        async def run() -> int:
            # A cluster: one script per change (its keys live on different nodes).
            pipe = self._c().pipeline(transaction=False)
            for change in changes:
                self._queue_change(pipe, change)
            pipe.incr(self._prefix + "gen")
            return int((await pipe.execute())[-1])
        return await self._guard("write_batch", run())

    async def _write_in_one_script(self, changes: Sequence[StoreChange]) -> int:
        """A batch on one Redis: one script call for the lot (one reply: parsing a reply
        per change is what costs; 20,000 bindings: about 0.6 s against 2 s)."""
        p = self._prefix
        keys: list[str] = [p + "gen"]
        args: list[Any] = [self.channel]
        origin = json.dumps(self.node)
        for change in changes:
            op = change.op
            if op == "put_binding":
                b = change.binding
                assert b is not None
                value = json.dumps(binding_to_json(b))  # once: the message carries it too
                keys.append(p + "reg:" + b.aor)
                args += ["pb", b.key, value, self._px(b.expires_at),
                         f'{{"op":"put_binding","origin":{origin},"binding":{value}}}']
                continue
            msg = change_to_json(replace(change, origin=self.node))
            if op == "remove_binding":
                keys.append(p + "reg:" + str(change.aor))
                args += ["rb", str(change.key), msg]
            elif op == "put_route":
                r = change.route
                assert r is not None
                keys.append(p + "route:" + r.old_uri)
                args += ["pr", json.dumps(route_to_json(r)), self._px(r.expires_at), msg]
            else:  # remove_bindings, remove_route: the key goes
                keys.append(p + ("reg:" + str(change.aor) if op == "remove_bindings"
                                 else "route:" + str(change.old_uri)))
                args += ["del", msg]
        return int(await self._c().eval(_BATCH, len(keys), *keys, *args))

    async def incarnation(self) -> Incarnation:
        async def run() -> Incarnation:
            c, p = self._c(), self._prefix
            # One key per command, each alone: on a cluster they may live on different nodes.
            await c.set(p + "schema", SCHEMA_VERSION, nx=True)
            await c.set(p + "epoch", secrets.token_hex(8), nx=True)
            epoch = await c.get(p + "epoch")
            gen = await c.get(p + "gen")
            return Incarnation(str(epoch), 0 if gen is None else int(gen))
        return await self._guard("incarnation", run())

    async def shared_key(self, candidate: bytes | None) -> bytes | None:
        async def run() -> bytes | None:
            c, key = self._c(), self._prefix + "key"
            if candidate is not None:
                await c.set(key, candidate.hex(), nx=True)
            raw = await c.get(key)
            return None if raw is None else bytes.fromhex(raw)
        return await self._guard("shared_key", run())

    async def put_upstream_state(self, s: UpstreamState) -> None:
        async def run() -> None:
            await self._c().set(self._prefix + "upstream:" + s.upstream,
                                json.dumps(s.as_dict()))
            await self._wrote(StoreChange("put_upstream_state", self.node, upstream=s))
        await self._guard("put_upstream_state", run())

    async def list_upstream_states(self) -> list[UpstreamState]:
        async def run() -> list[UpstreamState]:
            found = [UpstreamState.from_dict(json.loads(raw))
                     for _, raw in await self._read_all("upstream", "get") if raw is not None]
            return sorted(found, key=lambda u: u.upstream)
        return await self._guard("list_upstream_states", run(), listing=True)

    async def _wrote(self, change: StoreChange) -> None:
        c = self._c()
        await c.incr(self._prefix + "gen")
        await c.publish(self.channel, change_to_json(change))

    async def _scan(self, kind: str) -> list[str]:
        c = self._c()
        return [k async for k in c.scan_iter(match=f"{self._prefix}{kind}:*", count=500)]

    # -- learned routes (RFC 3261 21.3.2) ---------------------------------------------------

    async def put_route(self, r: LearnedRoute) -> None:
        async def run() -> None:
            await self._c().set(self._prefix + "route:" + r.old_uri,
                                json.dumps(route_to_json(r)), pxat=self._px(r.expires_at))
            await self._wrote(StoreChange("put_route", self.node, route=r))
        await self._guard("put_route", run())

    async def get_route(self, old_uri: str, now: float) -> LearnedRoute | None:
        async def run() -> LearnedRoute | None:
            key = self._prefix + "route:" + old_uri
            raw = await self._c().get(key)
            if raw is None:
                return None
            r = route_from_json(json.loads(raw))
            if r.expired(now):
                await self._c().delete(key)
                return None
            return r
        return await self._guard("get_route", run())

    async def remove_route(self, old_uri: str) -> bool:
        async def run() -> bool:
            n = await self._c().delete(self._prefix + "route:" + old_uri)
            await self._wrote(StoreChange("remove_route", self.node, old_uri=old_uri))
            return bool(n)
        return await self._guard("remove_route", run())

    async def _read_all(self, kind: str, command: str) -> list[tuple[str, Any]]:
        """Every ``kind`` key with its value (``command``: get or hgetall), read by
        pipelines of :data:`READ_BATCH` keys (one round trip each, not one per key)."""
        keys = await self._scan(kind)
        out: list[tuple[str, Any]] = []
        for i in range(0, len(keys), READ_BATCH):
            chunk = keys[i:i + READ_BATCH]
            pipe = self._c().pipeline(transaction=False)
            for key in chunk:
                getattr(pipe, command)(key)
            out.extend(zip(chunk, await pipe.execute(), strict=True))
        return out

    async def _routes(self) -> list[tuple[str, LearnedRoute]]:
        return [(key, route_from_json(json.loads(raw)))
                for key, raw in await self._read_all("route", "get") if raw is not None]

    async def list_routes(self, now: float) -> list[LearnedRoute]:
        async def run() -> list[LearnedRoute]:
            live = []
            for key, r in await self._routes():
                if r.expired(now):
                    await self._c().delete(key)
                else:
                    live.append(r)
            return sorted(live, key=lambda r: r.old_uri)
        return await self._guard("list_routes", run(), listing=True)

    async def clear_routes(self) -> int:
        async def run() -> int:
            count = 0
            for key in await self._scan("route"):
                count += await self._c().delete(key)
            await self._wrote(StoreChange("clear_routes", self.node))
            return count
        return await self._guard("clear_routes", run(), listing=True)

    # -- registrations (RFC 3261 10.3, RFC 5626) --------------------------------------------

    async def put_binding(self, b: StoredBinding) -> None:
        async def run() -> None:
            c = self._c()
            key = self._prefix + "reg:" + b.aor
            at = self._px(b.expires_at)
            await c.hset(key, b.key, json.dumps(binding_to_json(b)))
            await c.pexpireat(key, at, nx=True)
            await c.pexpireat(key, at, gt=True)
            await self._wrote(StoreChange("put_binding", self.node, binding=b))
        await self._guard("put_binding", run())

    async def remove_binding(self, aor: str, key: str) -> None:
        async def run() -> None:
            await self._c().hdel(self._prefix + "reg:" + aor, key)
            await self._wrote(StoreChange("remove_binding", self.node, aor=aor, key=key))
        await self._guard("remove_binding", run())

    async def remove_bindings(self, aor: str) -> None:
        async def run() -> None:
            await self._c().delete(self._prefix + "reg:" + aor)
            await self._wrote(StoreChange("remove_bindings", self.node, aor=aor))
        await self._guard("remove_bindings", run())

    async def _purge_bindings(self, now: float) -> tuple[list[StoredBinding], int]:
        c = self._c()
        live: list[StoredBinding] = []
        purged = 0
        for rkey, fields in await self._read_all("reg", "hgetall"):
            for field, raw in fields.items():
                b = binding_from_json(json.loads(raw))
                if b.expired(now):
                    purged += await c.hdel(rkey, field)
                else:
                    live.append(b)
        return live, purged

    async def list_bindings(self, now: float) -> list[StoredBinding]:
        async def run() -> list[StoredBinding]:
            live, _ = await self._purge_bindings(now)
            return sorted(live, key=lambda b: (b.aor, b.key))
        return await self._guard("list_bindings", run(), listing=True)

    # -- housekeeping -----------------------------------------------------------------------

    async def purge_expired(self, now: float) -> int:
        async def run() -> int:
            count = 0
            for key, r in await self._routes():
                if r.expired(now):
                    count += await self._c().delete(key)
            _, purged = await self._purge_bindings(now)
            return count + purged
        return await self._guard("purge_expired", run(), listing=True)

    async def generation(self) -> int:
        async def run() -> int:
            raw = await self._c().get(self._prefix + "gen")
            return 0 if raw is None else int(raw)
        return await self._guard("generation", run())

    # -- several proxies as one -------------------------------------------------------------

    async def publish_node(self, name: str, addresses: list[str], ttl: float,
                           key_id: str = "") -> None:
        """Announce that proxy ``name`` listens on ``addresses`` ("transport:host:port") and
        uses the key ``key_id`` names, for ``ttl`` seconds (refresh it before then)."""
        value = json.dumps({"addresses": addresses, "key": key_id})
        await self._guard("publish_node", self._c().set(
            self._prefix + "node:" + name, value, px=int(ttl * 1000)))

    async def nodes(self) -> dict[str, NodeInfo]:
        """Every announced proxy: its addresses and key id (a bare list of addresses, as an
        older proxy announces, has no key id)."""
        async def run() -> dict[str, NodeInfo]:
            out: dict[str, NodeInfo] = {}
            start = len(self._prefix) + len("node:")
            for key in await self._scan("node"):
                raw = await self._c().get(key)
                if raw is None:
                    continue
                value = json.loads(raw)
                if isinstance(value, dict):
                    addresses, key_id = value.get("addresses"), str(value.get("key") or "")
                else:
                    addresses, key_id = value, ""
                if isinstance(addresses, list):
                    out[key[start:]] = NodeInfo([str(v) for v in addresses], key_id)
            return out
        return await self._guard("nodes", run())

    async def changes(self, ready: Callable[[], None] | None = None
                      ) -> AsyncIterator[StoreChange]:
        """The changes every writer publishes, as they come (RFC-free: Redis pub/sub).

        ``ready`` is called once the subscription is made (a change published after that is
        seen). Runs until cancelled; raises :class:`StoreError` when the connection is lost
        (changes published meanwhile are lost too: reload after reconnecting)."""
        pubsub = self._c().pubsub()
        try:
            await self._guard("subscribe", pubsub.subscribe(self.channel))
            await self._guard("subscribe", _confirmed(pubsub))
            if ready is not None:
                ready()
            while True:
                try:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except (RedisError, OSError) as exc:
                    raise StoreError(f"redis state store {self.name}: subscription: "
                                     f"{str(exc).splitlines()[0] if str(exc) else exc!r}"
                                     ) from exc
                if msg is None or msg.get("type") != "message":
                    continue
                change = change_from_json(msg["data"])
                if change is not None:
                    yield change
        finally:
            try:
                await asyncio.wait_for(pubsub.aclose(), self._timeout)
            except (RedisError, OSError, TimeoutError):
                pass


async def _confirmed(pubsub: Any) -> None:
    """Read until the server confirms the subscription (from then on nothing published is
    missed)."""
    while True:
        msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=1.0)
        if msg is not None and msg.get("type") == "subscribe":
            return


async def _close_quietly(client: Any) -> None:
    try:
        await asyncio.wait_for(client.aclose(), 2.0)
    except (RedisError, OSError, TimeoutError):
        pass


def open_redis(spec: str, *, node: str = "cli") -> RedisStore:
    """The (unopened) store for a ``redis://``, ``rediss://`` or ``redis+cluster://`` spec."""
    return RedisStore(spec, node=node)
