"""Response contexts and branches (RFC 3261 16.7), the proxy's per-request state.

A :class:`ResponseContext` is one server transaction and the client branches forked from it
(the Kamailio tm "cell"). A :class:`Branch` wraps one client transaction plus the per-branch
proxy timer, Timer C (RFC 3261 16.8). Both expose ``deadline`` so that the core can keep them
in one :class:`~proxy.transaction.TimerQueue`.
"""

from __future__ import annotations

from enum import Enum

from proxy.core.types import Source, Target
from proxy.policy import Decision, Policy
from proxy.sip import SipMessage
from proxy.transaction import ClientTransaction, ServerTransaction


class BranchState(Enum):
    PENDING = "pending"  # no final response yet
    DONE = "done"  # final response (received or synthesised) processed


class Branch:
    """One forwarded copy of a request (RFC 3261 16.6) and its client transaction."""

    __slots__ = (
        "ctx",
        "branch_id",
        "target",
        "txn",
        "data",
        "dest",
        "state",
        "provisional",
        "cancel_wanted",
        "cancel_txn",
        "timer_c",
        "deadline",
        "final_status",
    )

    def __init__(
        self, ctx: ResponseContext, branch_id: str, target: Target, txn: ClientTransaction,
        data: bytes, dest: tuple[str, str, int, int | None],
    ) -> None:
        self.ctx = ctx
        self.branch_id = branch_id
        self.target = target
        self.txn = txn
        self.data = data  # the request as forwarded on this branch
        self.dest = dest  # (transport, host, port, conn_id)
        self.state = BranchState.PENDING
        self.provisional = False  # RFC 3261 9.1: CANCEL only after a provisional response
        self.cancel_wanted = False
        self.cancel_txn: ClientTransaction | None = None
        self.timer_c: float | None = None
        self.deadline: float | None = None
        self.final_status = 0


class ServerEntry:
    """A server transaction in the core's tables, with the address its responses go to."""

    __slots__ = ("key", "txn", "ctx", "reply", "deadline")

    def __init__(self, key: str, txn: ServerTransaction, reply: tuple[str, str, int, int | None]):
        self.key = key
        self.txn = txn
        self.ctx: ResponseContext | None = None
        self.reply = reply  # (transport, host, port, conn_id) per RFC 3261 18.2.2 / RFC 3581
        self.deadline: float | None = None


class Response(tuple):
    """A final response kept for best-response selection: (status, message or None, decision)."""

    __slots__ = ()

    def __new__(cls, status: int, msg: SipMessage | None, decision: Decision | None) -> Response:
        return tuple.__new__(cls, (status, msg, decision))

    @property
    def status(self) -> int:
        return self[0]  # type: ignore[no-any-return]

    @property
    def msg(self) -> SipMessage | None:
        return self[1]  # type: ignore[no-any-return]


class ResponseContext:
    """RFC 3261 16.7: everything the proxy knows about one proxied request."""

    __slots__ = (
        "server",
        "request",
        "source",
        "method",
        "policy",
        "groups",
        "branches",
        "pending",
        "responses",
        "final_sent",
        "got_2xx",
        "stopped",
        "cancelled",
        "from_location",
        "serial",
        "redirects",
        "tried",
        "loop_hash",
        "to_tag",
        "edits",
        "append",
        "deadline",
        "recursed",
        "waiting",
        "flow_attempts",
        "path",
    )

    def __init__(
        self, server: ServerEntry, request: SipMessage, source: Source, policy: Policy,
        groups: list[list[Target]], *, from_location: bool, serial: bool, loop_hash: str,
    ) -> None:
        self.server = server
        self.request = request
        self.source = source
        self.method = request.method
        self.policy = policy  # snapshot: a reload does not change a call in progress
        self.groups = groups  # targets not tried yet, each group forked in parallel
        self.branches: list[Branch] = []
        self.pending = 0  # branches without a final response
        self.responses: list[Response] = []
        self.final_sent = False
        self.got_2xx = False
        self.stopped = False  # policy "stop" (or a 6xx): no new branch of any kind (16.7 step 5)
        self.cancelled = False
        self.from_location = from_location
        self.serial = serial  # continue with the next group when a group ends (q-value forking)
        self.redirects = 0
        self.tried: set[str] = set()
        self.loop_hash = loop_hash
        self.to_tag: str | None = None
        self.edits: dict[int, str | None] = {}  # header edits shared by every branch (16.6)
        self.append: list[str] = []
        self.deadline: float | None = None  # bound on waiting for cancelled branches (stop)
        self.recursed: set[str] = set()  # URIs taken from 3xx Contacts (16.7 step 4)
        self.waiting = False  # a learned route is being written: branches start after it
        self.flow_attempts: dict[str, int] = {}  # per +sip.instance (RFC 5626 7)
        #: REGISTER to an upstream registrar: (flow token of the UA's flow, ";ob" or "") for
        #: the Path value each branch inserts (RFC 3327 5.1, RFC 5626 5.1)
        self.path: tuple[str, str] | None = None

    @property
    def may_branch(self) -> bool:
        return not (self.stopped or self.cancelled or self.got_2xx or self.final_sent)

    def drop_response(self, msg: SipMessage) -> None:
        self.responses = [r for r in self.responses if r[1] is not msg]


def select_best(responses: list[Response]) -> Response | None:
    """Choose the response to forward (RFC 3261 16.7 step 6).

    Any 6xx wins; otherwise the lowest response class; within a class, the first received.
    Real responses are preferred over ones synthesised for timeouts and transport errors.
    """
    best: Response | None = None
    best_rank: tuple[int, int] = (99, 1)
    for r in responses:
        cls = r[0] // 100
        rank = (0 if cls == 6 else cls, 0 if r[1] is not None else 1)
        if rank < best_rank:
            best, best_rank = r, rank
    return best
