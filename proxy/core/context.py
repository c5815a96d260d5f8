"""Response contexts and branches (RFC 3261 16.7), the proxy's per-request state.

A :class:`ResponseContext` is one server transaction and the client branches forked from it
(the Kamailio tm "cell"). A :class:`Branch` wraps one client transaction plus the per-branch
proxy timer, Timer C (RFC 3261 16.8). Both expose ``deadline`` so that the core can keep them
in one :class:`~proxy.transaction.TimerQueue`.
"""

from __future__ import annotations

from enum import Enum
from typing import Final, NamedTuple

from proxy.core.types import Dest, Source, Target
from proxy.policy import Decision, Policy, RequestView, Route
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
        "conn",
        "group",
        "upstream",
        "superseded",
    )

    def __init__(
        self, ctx: ResponseContext, branch_id: str, target: Target, txn: ClientTransaction,
        data: bytes, dest: Dest,
    ) -> None:
        self.ctx = ctx
        self.branch_id = branch_id
        self.target = target
        self.txn = txn
        #: the request as forwarded on this branch, for its CANCEL and its ACK to a non-2xx
        #: (RFC 3261 9.1, 17.1.1.3); None once its final response arrived and was ACKed
        #: (:func:`proxy.core.proxy.responses.client_effects`): a call waiting for Timers
        #: D, K and M keeps no copy of it
        self.data: bytes | None = data
        self.dest = dest
        self.state = BranchState.PENDING
        self.provisional = False  # RFC 3261 9.1: CANCEL only after a provisional response
        self.cancel_wanted = False
        self.cancel_txn: ClientTransaction | None = None
        self.timer_c: float | None = None
        self.deadline: float | None = None
        self.final_status = 0
        #: the stream connection this transaction is counted on (the transaction table), if any
        self.conn: int | None = None
        #: the upstream group this branch went to and the upstream (as configured) it is
        #: of; None for any other target (a registered phone, a redirect target)
        self.group: str | None = None
        self.upstream: Target | None = None
        #: CANCELled by a route's ``no_answer`` timer: its final response decides nothing
        self.superseded = False


class ServerEntry:
    """A server transaction in the core's tables, with the address its responses go to."""

    __slots__ = ("key", "txn", "ctx", "reply", "deadline", "request", "started", "conn")

    def __init__(
        self, key: str, txn: ServerTransaction, reply: Dest,
        request: SipMessage | None = None, started: float = 0.0,
    ) -> None:
        self.key = key
        self.txn = txn
        self.ctx: ResponseContext | None = None
        self.reply = reply  # RFC 3261 18.2.2 / RFC 3581
        self.deadline: float | None = None
        self.request = request  # for the metrics and the per-call log line
        self.started = started
        #: the stream connection this transaction is counted on (the transaction table), if any
        self.conn: int | None = None


class ContextState(Enum):
    """Where a response context stands (RFC 3261 16.7). ``*_STORE``: a learned route is being
    written; the context's final response waits for it (docs/BEHAVIOUR.md, routing)."""

    __hash__ = object.__hash__  # identity hashing: cheap table lookups (see transaction states)

    PROCEEDING = "proceeding"  # branches may be created (16.7 step 4 recursion, failover)
    WAITING_STORE = "waiting store"  # ... and a learned route is being written
    STOPPING = "stopping"  # policy stop / 6xx (16.7 step 5): no new branch, waiting for the rest
    STOPPING_STORE = "stopping, waiting store"
    CANCELLING = "cancelling"  # CANCEL received (16.10): branches cancelled, 487 follows
    CANCELLING_STORE = "cancelling, waiting store"
    ANSWERED = "answered"  # a 2xx went upstream: every later 2xx follows it (16.7 step 5)
    COMPLETED = "completed"  # a non-2xx final went upstream: nothing more goes up


class ContextEvent(Enum):
    __hash__ = object.__hash__

    STORE_WRITE = "store write started"
    STORED = "store write done"
    POLICY_STOP = "policy stop"
    CANCEL = "CANCEL"
    GOT_2XX = "2xx"
    FINAL_SENT = "final sent"


_C: Final = ContextState
_V: Final = ContextEvent
_LIVE: Final = (_C.PROCEEDING, _C.WAITING_STORE, _C.STOPPING, _C.STOPPING_STORE, _C.CANCELLING,
         _C.CANCELLING_STORE)

#: ``(state, event) -> next state``; a missing key: the event changes nothing (a 2xx after a
#: non-2xx final is not forwarded; a store write that ends after the final is ignored). A
#: dict, not a Mapping, to the compiler: :meth:`ResponseContext.fire` looks it up natively.
CONTEXT_TABLE: Final[dict[tuple[ContextState, ContextEvent], ContextState]] = {
    (_C.PROCEEDING, _V.STORE_WRITE): _C.WAITING_STORE,
    (_C.WAITING_STORE, _V.STORE_WRITE): _C.WAITING_STORE,
    (_C.WAITING_STORE, _V.STORED): _C.PROCEEDING,
    (_C.STOPPING_STORE, _V.STORED): _C.STOPPING,
    (_C.CANCELLING_STORE, _V.STORED): _C.CANCELLING,
    (_C.PROCEEDING, _V.POLICY_STOP): _C.STOPPING,
    (_C.WAITING_STORE, _V.POLICY_STOP): _C.STOPPING_STORE,
    (_C.STOPPING, _V.POLICY_STOP): _C.STOPPING,
    (_C.STOPPING_STORE, _V.POLICY_STOP): _C.STOPPING_STORE,
    (_C.PROCEEDING, _V.CANCEL): _C.CANCELLING,
    (_C.WAITING_STORE, _V.CANCEL): _C.CANCELLING_STORE,
    (_C.STOPPING, _V.CANCEL): _C.CANCELLING,
    (_C.STOPPING_STORE, _V.CANCEL): _C.CANCELLING_STORE,
    (_C.CANCELLING, _V.CANCEL): _C.CANCELLING,
    (_C.CANCELLING_STORE, _V.CANCEL): _C.CANCELLING_STORE,
    **{(s, _V.GOT_2XX): _C.ANSWERED for s in (*_LIVE, _C.ANSWERED)},
    **{(s, _V.FINAL_SENT): _C.COMPLETED for s in _LIVE},
}
_MAY_BRANCH: Final = frozenset({_C.PROCEEDING, _C.WAITING_STORE})
_HOLDING: Final = frozenset({_C.WAITING_STORE, _C.STOPPING_STORE, _C.CANCELLING_STORE})
_CANCELLED: Final = frozenset({_C.CANCELLING, _C.CANCELLING_STORE})
_FINAL: Final = frozenset({_C.ANSWERED, _C.COMPLETED})


class Response(NamedTuple):
    """A final response kept for best-response selection (RFC 3261 16.7 step 6)."""

    status: int
    msg: SipMessage | None
    decision: Decision | None


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
        "state",
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
        "flow_attempts",
        "path",
        "from_tag",
        "group",
        "route",
        "view",
        "diversion",
        "reply",
        "timer",
    )

    def __init__(
        self, server: ServerEntry, request: SipMessage, source: Source, policy: Policy,
        groups: list[list[Target]], *, from_location: bool, serial: bool, loop_hash: str,
    ) -> None:
        self.server = server
        #: the request as received; None once the context is settled (:meth:`settle`)
        self.request: SipMessage | None = request
        self.from_tag = request.from_tag  # dialogs: kept for 2xx retransmissions (16.7 step 5)
        self.source = source
        self.method = request.method
        self.policy = policy  # snapshot: a reload does not change a call in progress
        self.groups = groups  # targets not tried yet, each group forked in parallel
        #: a tuple, not a list: a call holds it until its last timer, and one branch is the
        #: usual count (a 1-tuple is half a 1-list's bytes)
        self.branches: tuple[Branch, ...] = ()
        self.pending = 0  # branches without a final response
        self.responses: list[Response] = []
        self.state = ContextState.PROCEEDING
        self.from_location = from_location
        self.serial = serial  # continue with the next group when a group ends (q-value forking)
        self.redirects = 0
        self.tried: set[str] = set()
        self.loop_hash = loop_hash
        self.to_tag: str | None = None
        self.edits: dict[int, str | None] = {}  # header edits shared by every branch (16.6)
        self.append: list[str] = []
        self.deadline: float | None = None  # bound on waiting for cancelled branches (stop)
        #: URIs taken from 3xx Contacts (16.7 step 4) and attempts per +sip.instance (RFC
        #: 5626 7): the shared empty ones until the first is added (:meth:`recurse`,
        #: :meth:`flow_attempted`), which most calls never do
        self.recursed: set[str] = _NO_KEYS
        self.flow_attempts: dict[str, int] = _NO_ATTEMPTS
        #: REGISTER to an upstream registrar: (flow token of the UA's flow, ";ob" or "") for
        #: the Path value each branch inserts (RFC 3327 5.1, RFC 5626 5.1)
        self.path: tuple[str, str] | None = None
        #: the upstream group the context forwards to now (a route's, a failover's ``to``);
        #: None when its targets are not an upstream group (bindings, a Request-URI)
        self.group: str | None = None
        self.route: Route | None = None  # the policy route that picked the first group
        self.view: RequestView | None = None  # the request as the policy sees it, if needed
        #: a Diversion line (RFC 5806) every later branch carries (failover ``diversion``)
        self.diversion: str | None = None
        #: a ``reply`` rule decided: (status, reason) the caller gets once branches end
        self.reply: tuple[int, str | None] | None = None
        self.timer: NoAnswerTimer | None = None  # the route's ``no_answer`` timer, if armed

    def fire(self, event: ContextEvent) -> bool:
        """Apply ``event`` by :data:`CONTEXT_TABLE`; False when it does not apply here."""
        nxt = CONTEXT_TABLE.get((self.state, event))
        if nxt is None:
            return False
        self.state = nxt
        return True

    @property
    def may_branch(self) -> bool:
        """New branches (recursion, failover, next q group) may start (16.7 steps 4, 5)."""
        return self.state in _MAY_BRANCH

    @property
    def final_sent(self) -> bool:
        return self.state in _FINAL

    @property
    def cancelled(self) -> bool:
        return self.state in _CANCELLED

    @property
    def holding(self) -> bool:
        """A learned route is being written: the final response waits for it."""
        return self.state in _HOLDING

    @property
    def live_request(self) -> SipMessage:
        """The request, for what only a live context does (new branches, its own final)."""
        req = self.request
        if req is None:
            raise RuntimeError("the response context is settled: its request was let go")
        return req

    def settle(self) -> None:
        """The final response went upstream and no branch is pending: nothing can start a
        branch or choose a response any more (RFC 3261 16.7 steps 4 to 6). Let go of the
        parsed request and the kept responses, so that a finished call, whose transactions
        stay for Timers J, K, L and M (up to 64*T1), holds bytes and a few small objects
        instead of parsed messages (memory, and the young collections of the garbage
        collector scan far fewer objects, ``proxy.runtime.memory``)."""
        self.request = None
        # What only a live context reads or grows (new branches, 16.7 steps 4 to 6), swapped
        # for shared empty ones: nothing adds to them once the final went upstream.
        self.responses = _NO_RESPONSES
        self.groups = _NO_GROUPS
        self.tried = self.recursed = _NO_KEYS
        self.edits = _NO_EDITS
        self.append = _NO_LINES
        self.flow_attempts = _NO_ATTEMPTS
        self.view = None
        self.loop_hash = ""  # only a new branch's id reads it (16.6 step 8)
        if self.timer is not None:
            self.timer.deadline = None  # stale in the timer queue: never fires
        if self.server.request is not None:
            self.server.request = None

    def recurse(self, uri: str) -> None:
        """``uri``, from a 3xx Contact, is recursed on (RFC 3261 16.7 step 4)."""
        if self.recursed is _NO_KEYS:
            self.recursed = set()
        self.recursed.add(uri)

    def flow_attempted(self, instance: str, attempts: int) -> None:
        """The flows of ``instance`` tried so far (RFC 5626 7)."""
        if self.flow_attempts is _NO_ATTEMPTS:
            self.flow_attempts = {}
        self.flow_attempts[instance] = attempts

    def branch_started(self, br: Branch) -> None:
        """A branch was forwarded (RFC 3261 16.6): it is pending until its final response."""
        self.branches += (br,)
        self.pending += 1

    def branch_ended(self, br: Branch, status: int) -> None:
        """A pending branch got its final response ``status`` (received or synthesised):
        the only place a branch stops being pending (16.7)."""
        br.state = BranchState.DONE
        br.final_status = status
        br.timer_c = None
        self.pending -= 1

    def drop_response(self, msg: SipMessage) -> None:
        self.responses = [r for r in self.responses if r[1] is not msg]


class NoAnswerTimer:
    """A route's ``no_answer``: at ``deadline`` (the core's clock), when the context still
    forwards to ``group`` and no 2xx arrived, its branches are CANCELled (RFC 3261 16.10) and
    the call goes on with the group ``NoAnswer.to`` (:func:`proxy.core.proxy.steer.no_answer`)."""

    __slots__ = ("ctx", "group", "deadline")

    def __init__(self, ctx: ResponseContext, group: str, deadline: float) -> None:
        self.ctx = ctx
        self.group = group
        self.deadline: float | None = deadline


#: the shared empty containers of every settled context (:meth:`ResponseContext.settle`);
#: tests/unit/test_core_memory.py checks that nothing ever adds to them
_NO_RESPONSES: Final[list[Response]] = []
_NO_GROUPS: Final[list[list[Target]]] = []
_NO_KEYS: Final[set[str]] = set()
_NO_EDITS: Final[dict[int, str | None]] = {}
_NO_LINES: Final[list[str]] = []
_NO_ATTEMPTS: Final[dict[str, int]] = {}
SETTLED_EMPTY: Final = (_NO_RESPONSES, _NO_GROUPS, _NO_KEYS, _NO_EDITS, _NO_LINES, _NO_ATTEMPTS)


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
