"""The transaction table (the ``t_lookup`` of Kamailio's tm): the only code that builds
transaction matching keys and reads or writes the tables of server and client transactions.

Server transactions are matched by RFC 3261 17.2.3 (the top Via's branch with its sent-by
and the method; the RFC 2543 fallback of 17.2.3 when the branch lacks the magic cookie).
Client transactions are matched by 17.1.3: the branch this proxy wrote in its Via and the
CSeq method; a branch's CANCEL (9.1) is the same branch with the method CANCEL. The branch
alone is the key (this proxy mints each one once: its branch id is the string the key is,
no second string per call) and the method is checked on the branch found. The table
also counts the live transactions on each stream connection, so that the transport keeps a
connection that still carries one (``limits.tcp_idle_timeout``).
"""

from __future__ import annotations

from collections.abc import Iterable

from proxy.core.context import Branch, ServerEntry
from proxy.sip import SipMessage

__all__ = ["TransactionTable", "server_key"]

_COOKIE = "z9hG4bK"  # RFC 3261 8.1.1.7


def server_key(msg: SipMessage, method: str) -> str:
    """RFC 3261 17.2.3 matching key of ``msg`` as a request of ``method`` (an ACK or CANCEL
    is looked up as its INVITE); the RFC 2543 fallback when the branch lacks the cookie."""
    via = msg.top_via
    branch = via.branch
    if branch is not None and branch.startswith(_COOKIE) and len(branch) > 7:
        host, port = via.sent_by()
        return f"{branch}|{host}:{port}|{method}"
    return f"2543|{msg.call_id}|{msg.cseq[0]}|{msg.from_tag}|{msg.get('via')}|{method}"


class TransactionTable:
    """The server and client transactions the core holds, and the stream connections they
    are counted on."""

    __slots__ = ("_server", "_client", "_cancel", "_conns")

    def __init__(self) -> None:
        self._server: dict[str, ServerEntry] = {}
        #: branch id -> the branch whose client transaction it names
        self._client: dict[str, Branch] = {}
        #: branch id -> the branch whose CANCEL transaction (RFC 3261 9.1) it names
        self._cancel: dict[str, Branch] = {}
        #: live server and client transactions per stream connection
        self._conns: dict[int, int] = {}

    # ------------------------------------------------------------------ server side

    def match_server(self, msg: SipMessage, method: str) -> tuple[str, ServerEntry | None]:
        """The key of ``msg`` as a request of ``method`` and the transaction it matches."""
        key = server_key(msg, method)
        return key, self._server.get(key)

    def find_server(self, msg: SipMessage, method: str) -> ServerEntry | None:
        return self._server.get(server_key(msg, method))

    def add_server(self, entry: ServerEntry, conn_id: int | None) -> None:
        """A new server transaction (its key was found by :meth:`match_server`)."""
        self._server[entry.key] = entry
        if conn_id is not None:
            entry.conn = conn_id
            self._hold(conn_id)

    def holds_server(self, entry: ServerEntry) -> bool:
        return self._server.get(entry.key) is entry

    def drop_server(self, entry: ServerEntry) -> None:
        """The server transaction ended (or was refused before it did anything)."""
        if self._server.get(entry.key) is entry:
            del self._server[entry.key]
            self._free(entry.conn)
            entry.conn = None

    def servers(self) -> Iterable[ServerEntry]:
        return self._server.values()

    # ------------------------------------------------------------------ client side

    def match_branch(self, branch_id: str | None, method: str) -> Branch | None:
        """RFC 3261 17.1.3: the branch whose client transaction (or CANCEL, for ``method``
        CANCEL) a response with this top Via branch and CSeq method belongs to."""
        if not branch_id:
            return None
        if method == "CANCEL":
            br = self._cancel.get(branch_id)
            if br is not None:
                return br
        br = self._client.get(branch_id)
        if br is not None and br.ctx.method == method:
            return br
        return None

    def add_branch(self, br: Branch, conn_id: int | None) -> None:
        """A branch's client transaction (RFC 3261 16.6 step 10)."""
        self._client[br.branch_id] = br
        if conn_id is not None:
            br.conn = conn_id
            self._hold(conn_id)

    def holds_branch(self, br: Branch) -> bool:
        return self._client.get(br.branch_id) is br

    def carried_on(self, br: Branch, conn_id: int) -> None:
        """The stream connection the transport opened for ``br`` carries its transaction."""
        if br.conn is None and self.holds_branch(br):
            br.conn = conn_id
            self._hold(conn_id)

    def drop_branch(self, br: Branch) -> None:
        """The branch's client transaction ended, or Timer C gave up on it after a CANCEL."""
        client = self._client
        if client.get(br.branch_id) is br:
            del client[br.branch_id]
            self._free(br.conn)
            br.conn = None

    def add_cancel(self, br: Branch) -> None:
        """The CANCEL client transaction of ``br`` (RFC 3261 9.1): its branch, method CANCEL."""
        self._cancel[br.branch_id] = br

    def drop_cancel(self, br: Branch) -> None:
        cancel = self._cancel
        if cancel.get(br.branch_id) is br:
            del cancel[br.branch_id]

    # ------------------------------------------------------------------ counts

    def __len__(self) -> int:
        """Every transaction held, including those only absorbing retransmissions."""
        return len(self._server) + len(self._client) + len(self._cancel)

    @property
    def server_count(self) -> int:
        return len(self._server)

    @property
    def client_count(self) -> int:
        return len(self._client) + len(self._cancel)

    def conn_in_use(self, conn_id: int) -> bool:
        """Whether a live transaction is counted on stream connection ``conn_id``."""
        return conn_id in self._conns

    def conn_closed(self, conn_id: int) -> None:
        """The connection closed: it is no longer counted (ids are never reused)."""
        self._conns.pop(conn_id, None)

    @property
    def conns(self) -> dict[int, int]:
        """A copy of the per-connection counts (for tests and diagnostics)."""
        return dict(self._conns)

    def _hold(self, conn_id: int) -> None:
        self._conns[conn_id] = self._conns.get(conn_id, 0) + 1

    def _free(self, conn_id: int | None) -> None:
        if conn_id is None:
            return
        n = self._conns.get(conn_id, 0) - 1
        if n > 0:
            self._conns[conn_id] = n
        else:
            self._conns.pop(conn_id, None)
