"""The one memo of the parser: a text -> the immutable value it parses to, bounded.

Header values recur: a callee's Request-URI, the proxy's own Record-Route, a call's From and
To, a sender's Via sent-by, the header names. Each distinct text is parsed once and the value
handed out again. The values kept are immutable (strings, tuples, and :class:`~proxy.sip.uri.
SipUri`, :class:`~proxy.sip.headers.NameAddr` whose fields are ``Final`` and whose parameters
are read-only mappings), so sharing one between callers is safe by construction, not by
convention. A memo never keeps a refusal: a text that raises ParseError raises it every time.

One eviction rule: at most ``size`` texts; the memo forgets them all at once when it is full
(an outsider chooses the texts, so it must not grow; an LRU would cost a reordering on every
hit of the hot path, and a flood of new texts empties it whatever the rule).
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

__all__ = ["MEMO_SIZE", "Memo"]

#: texts a memo keeps at most (it is emptied when full)
MEMO_SIZE: Final = 4096

_V = TypeVar("_V")


class Memo(Generic[_V]):
    """A bounded map from a header text to the immutable value it parses to (see the module
    docstring for the rule)."""

    __slots__ = ("size", "table")

    def __init__(self, size: int = MEMO_SIZE) -> None:
        #: the texts kept and their values: read by the hot paths (``memo.table.get(text)``
        #: is a dict lookup, where ``memo.get(text)`` is a call through the compiled build's
        #: export table first); written only by :meth:`put` and :meth:`clear`
        self.table: Final[dict[str, _V]] = {}
        self.size: Final = size

    def get(self, text: str) -> _V | None:
        """The value ``text`` parsed to, or None when it is not kept."""
        return self.table.get(text)

    def put(self, text: str, value: _V) -> _V:
        """Keep ``value`` as what ``text`` parses to (emptying the memo first when full);
        returns ``value``."""
        table = self.table
        if len(table) >= self.size:
            table.clear()
        table[text] = value
        return value

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, text: str) -> bool:
        return text in self.table

    def clear(self) -> None:
        self.table.clear()
