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

    __slots__ = ("_table", "size")

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._table: dict[str, _V] = {}
        self.size: Final = size

    def get(self, text: str) -> _V | None:
        """The value ``text`` parsed to, or None when it is not kept."""
        return self._table.get(text)

    def put(self, text: str, value: _V) -> _V:
        """Keep ``value`` as what ``text`` parses to (emptying the memo first when full);
        returns ``value``."""
        table = self._table
        if len(table) >= self.size:
            table.clear()
        table[text] = value
        return value

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, text: str) -> bool:
        return text in self._table

    def clear(self) -> None:
        self._table.clear()
