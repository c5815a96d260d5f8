"""What a Record-Route value, a branch and a packet's source prove (sans-IO): the keyed MACs
the proxy writes into what it sends and checks, without state, in what comes back.

**Dialog marks** (RFC 3261 16.6 step 4, 12.2.2, 16.4). Every Record-Route value this proxy
inserts carries ``;d=MAC``: a keyed MAC (BLAKE2s, 64 bits) over the dialog-initiating
request's Call-ID, its From tag and the flow token of that value (RFC 5626 5.2, the empty
string when it has none). An in-dialog request (a To tag) is *proven* when a Route value of
ours that it carries verifies for its own Call-ID and one of its own tags (the From tag of a
request from the caller's side, the To tag of one from the callee's side). Nothing is stored:
a BYE for a call set up before a restart passes as long as the key (``secret``) is stable. A
Path value (RFC 3327) carries no mark: it names a flow but proves no dialog.

**Branch MACs** (RFC 3261 16.7, 16.11, 17.1.3, 18.2.2). A branch this proxy generates for a
forwarded request ends in ``.TTTT`` + MAC: a coarse time (``TICK`` seconds) and a keyed MAC
(BLAKE2s, 48 bits) over the rest of the branch, that time, the request's method and where the
responses to that request go (the transport, host and port the request's top Via names, as
:func:`via_dest` reads them). A response that matches no live client transaction is relayed
statelessly only when its branch verifies for the response's CSeq method and its second Via,
and is fresh: at most :func:`branch_lifetime` old (64*T1 past the longest the transaction can
live). The hot path (a response matching a live transaction) checks no MAC.

Only a MAC proves anything: no header a stranger writes (Via, From, Contact) and no source
address other than an upstream's or a ``trusted_relays`` one (:mod:`proxy.core.proxy.routing`) is
trusted.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Final

from proxy.sip import Via

if TYPE_CHECKING:
    from proxy.transaction import TimerConfig

__all__ = ["DIALOG_PARAM", "TICK", "Trust", "branch_lifetime", "via_dest"]

DIALOG_PARAM: Final = "d"  # the Record-Route URI parameter of the dialog mark
DIALOG_HEX: Final = 16  # hex digits of a dialog mark (64 bits)
BRANCH_HEX: Final = 12  # hex digits of a branch MAC (48 bits)
TICK: Final = 16  # seconds per step of the coarse time in a branch
_CACHE: Final = 4096  # proven dialogs remembered (cleared when full)
_HEX: Final = frozenset("0123456789abcdef")


def via_dest(via: Via) -> str:
    """Where a response goes by this Via when no transaction knows better (RFC 3261 18.2.2,
    RFC 3581): its ``received`` host (else its sent-by host) and its ``rport`` (else the
    sent-by port), with its transport. The one reading the branch MAC covers and the
    stateless relay uses."""
    sent_host, sent_port = via.sent_by()
    host = (via.received or sent_host).strip("[]")
    rport = via.rport  # int, True (a bare ";rport") or None; type() keeps True out (mypyc)
    port = rport if type(rport) is int else sent_port
    return f"{via.transport.lower()}|{host}|{port}"


def branch_lifetime(method: str, timers: TimerConfig) -> float:
    """How long after its creation a branch's response may still be relayed statelessly:
    64*T1 past the longest its client transaction lives (RFC 3261 17.1.1.2, 17.1.2.2,
    RFC 6026 7.2): an INVITE's Timer C, then a CANCEL's 64*T1 and Timer M's 64*T1; a
    non-INVITE's Timer F and Timer K."""
    t = 64 * timers.t1
    if method == "INVITE":
        return timers.timer_c + 3 * t
    return 2 * t + timers.t4


class Trust:
    """The keys of the dialog marks and branch MACs, derived from the proxy's secret, and a
    bounded memory of the dialog marks that verified (the ACK and the BYE of one call check
    one MAC between them). Only verified marks are remembered: a stranger's forgeries never
    enter it."""

    __slots__ = ("_branch_h", "_dialog_h", "_previous", "_proven", "_tick", "_tick_hex")

    def __init__(self, secret: bytes, previous: Trust | None = None) -> None:
        """``previous``: the keys used before a :meth:`ProxyCore.rekey` that keeps them (the
        key agreed through a state store that answered only after the start): what they
        minted still verifies, what is minted from now on uses ``secret``."""
        self._previous = previous._without_previous() if previous is not None else None
        dialog_key = hashlib.sha256(b"sip-policy-proxy dialog mark v1|" + secret).digest()
        branch_key = hashlib.sha256(b"sip-policy-proxy branch mac v2|" + secret).digest()
        # keyed once: each MAC copies the keyed state (no key block compressed per MAC)
        self._dialog_h = hashlib.blake2s(key=dialog_key, digest_size=DIALOG_HEX // 2)
        self._branch_h = hashlib.blake2s(key=branch_key, digest_size=BRANCH_HEX // 2)
        #: (Call-ID, flow token, mark) -> the tag the mark was minted for
        self._proven: dict[tuple[str, str, str], str] = {}
        self._tick = -1  # the coarse time of the last branch minted, and its hex form
        self._tick_hex = ""

    def _without_previous(self) -> Trust:
        """These keys alone (one generation of keys is kept, not a chain)."""
        self._previous = None
        return self

    # ---------------------------------------------------------------- dialog marks

    def dialog_mark(self, call_id: str, tag: str, token: str) -> str:
        """The mark of a Record-Route value: MAC(Call-ID, From tag of the dialog-initiating
        request, the value's flow token or "")."""
        h = self._dialog_h.copy()
        h.update(f"{call_id}\0{tag}\0{token}".encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def mint_mark(self, call_id: str, tag: str, token: str) -> str:
        """:meth:`dialog_mark` for a Record-Route value being written, remembered as verified:
        the ACK that follows within milliseconds (and, in a quiet period, the BYE) checks no
        MAC."""
        mark = self.dialog_mark(call_id, tag, token)
        if len(self._proven) >= _CACHE:
            self._proven.clear()
        self._proven[(call_id, token, mark)] = tag
        return mark

    def proven(self, call_id: str, from_tag: str | None, to_tag: str | None, token: str,
               mark: str) -> bool:
        """Whether ``mark``, found on a Route value of ours with flow token ``token`` (or "")
        in a request, was minted for this Call-ID and one of the request's two tags."""
        if len(mark) != DIALOG_HEX:
            return False
        key = (call_id, token, mark)
        tag = self._proven.get(key)
        if tag is not None:
            return tag == from_tag or tag == to_tag
        for tag in (from_tag, to_tag):
            if tag is not None and hmac.compare_digest(self.dialog_mark(call_id, tag, token),
                                                       mark):
                if len(self._proven) >= _CACHE:
                    self._proven.clear()
                self._proven[key] = tag
                return True
        prev = self._previous
        return prev is not None and prev.proven(call_id, from_tag, to_tag, token, mark)

    # ---------------------------------------------------------------- branches

    def _branch_mac(self, base: str, tick: str, method: str, dest: str) -> str:
        h = self._branch_h.copy()
        h.update(f"{base}|{tick}|{method}|{dest}".encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def mint_branch(self, base: str, method: str, dest: str, now: float) -> str:
        """``base`` signed for a request of ``method`` whose responses go to ``dest``
        (:func:`via_dest` of its top Via), at ``now``."""
        tick = max(0, int(now)) // TICK
        if tick != self._tick:
            self._tick = tick
            self._tick_hex = f"{tick:x}"
        t = self._tick_hex
        return f"{base}.{t}{self._branch_mac(base, t, method, dest)}"  # one string built

    def check_branch(self, branch: str | None, method: str, dest: str, now: float,
                     lifetime: float) -> str | None:
        """None when ``branch`` is one of ours, minted for ``method`` and ``dest`` at most
        ``lifetime`` seconds ago; otherwise why not: ``"forged"`` (not ours, or for another
        method or another hop) or ``"stale"`` (ours, but too old)."""
        if not branch:
            return "forged"
        base, dot, rest = branch.rpartition(".")
        if not dot or not BRANCH_HEX < len(rest) <= BRANCH_HEX + 12 or not _HEX.issuperset(rest):
            return "forged"
        tick = rest[:-BRANCH_HEX]
        if not hmac.compare_digest(rest[-BRANCH_HEX:], self._branch_mac(base, tick, method, dest)):
            prev = self._previous
            return "forged" if prev is None else prev.check_branch(branch, method, dest, now,
                                                                   lifetime)
        age = max(0, int(now)) // TICK - int(tick, 16)
        if age < 0 or age * TICK > lifetime + TICK:
            return "stale"
        return None
