"""The key of flow tokens, branch MACs and digest nonces, shared through the state store.

Proxies on one store act as one with no other setting. Without ``secret:`` in proxy.yaml,
the first proxy that reaches the store puts its random key there (create-if-absent: Redis
``SET NX``, sqlite ``INSERT OR IGNORE``) and every other one reads that key and uses it, so a
flow token one node writes into a Path or Record-Route (RFC 5626 5.2), the MAC of a branch
and a digest nonce (RFC 3261 22.4) verify on every node; with sqlite the key also outlives a
restart. The key is agreed on before the proxy listens (:meth:`ProxyCore.rekey` before the
first message, so nothing was minted with the random key of the start).

When the store cannot be reached at start, the node runs with its own random key, says so,
and adopts the store's key once the store answers. Flow tokens it minted meanwhile (in the
Record-Routes of calls and the Paths of registrations made meanwhile) keep verifying on this
node (``keep_old``); branch MACs and digest nonces of that time do not (a stray response to
an old branch is no longer forwarded statelessly, a nonce of that time is challenged again).

A configured ``secret:`` always wins: it is never written to the store. When it differs from
the key in the store (proxies without ``secret:`` use that one), or when another node
announces a key of another id, a warning says so once per node: their tokens do not verify
on each other. Nodes announce only a key id (a hash), never the key.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from proxy.store import StateStore

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore

log = logging.getLogger("proxy.state")

_TOLD_LIMIT = 1024  # (node, key id) pairs warned about, remembered; beyond, forgotten


def key_id(key: bytes) -> str:
    """A short public id of ``key`` (SHA-256 of a label and the key): equal ids, equal keys."""
    return hashlib.sha256(b"sip-policy-proxy key id|" + key).hexdigest()[:12]


class KeyKeeper:
    """This node's key, agreed on with the state store (see the module docstring)."""

    def __init__(self, store: StateStore, core: ProxyCore, key: bytes, configured: bool,
                 name: str, memory: bool) -> None:
        self.store = store
        self.core = core
        self.key = key
        self.configured = configured
        self.name = name
        self.memory = memory  # memory: nothing to share
        self._told: set[tuple[str, str]] = set()
        self._said = False

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def running_alone(self) -> None:
        """The store is unreachable at start: say which key this node uses meanwhile."""
        if self.configured or self.memory:
            return
        log.warning("state store %s unreachable at start: this node uses a key of its own "
                    "(id %s) for flow tokens, branch MACs and digest nonces until it answers, "
                    "then the store's; flow tokens minted meanwhile keep verifying here",
                    self.name, self.key_id)

    async def agree(self, *, listening: bool) -> None:
        """Agree on the key with the store (it answers now): the store's unless ``secret:``
        is configured. ``listening``: tokens were minted with the key used so far."""
        if self.memory:
            return
        if self.configured:
            theirs = await self.store.shared_key(None)
            if theirs is not None and theirs != self.key:
                self._differs("the state store", key_id(theirs))
            return
        theirs = await self.store.shared_key(self.key)
        if theirs is None or theirs == self.key:
            if not self._said:
                log.info("key for flow tokens, branch MACs and digest nonces: id %s, shared "
                         "through the state store %s", self.key_id, self.name)
                self._said = True
            return
        before = self.key_id
        self.core.rekey(theirs, keep_old=listening)
        self.key = theirs
        self._said = True
        if listening:
            log.warning("state store %s: adopted its key (id %s) for flow tokens, branch MACs "
                        "and digest nonces in place of this node's own (id %s); flow tokens "
                        "minted with that one keep verifying here", self.name, self.key_id,
                        before)
        else:
            log.info("key for flow tokens, branch MACs and digest nonces: id %s, read from "
                     "the state store %s", self.key_id, self.name)

    def compare(self, nodes: dict[str, Any]) -> None:
        """Warn (once per node and key) about nodes that announce another key id."""
        for name, info in nodes.items():
            theirs = getattr(info, "key_id", "")
            if theirs and theirs != self.key_id:
                self._differs(f"node {name}", theirs)

    def _differs(self, who: str, theirs: str) -> None:
        if (who, theirs) in self._told:
            return
        if len(self._told) >= _TOLD_LIMIT:
            self._told.clear()
        self._told.add((who, theirs))
        mine = f"{self.key_id}, from `secret:`" if self.configured else self.key_id
        log.warning("%s uses another key (id %s) than this node (id %s): the flow tokens, "
                    "nonces and branch MACs of one do not verify on the other (403); give "
                    "every node the same `secret:`, or none (then they share the state "
                    "store's key)", who, theirs, mine)
