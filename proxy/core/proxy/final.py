"""The response the caller gets from a response context (RFC 3261 16.7 steps 5 and 6): a
provisional or 2xx forwarded at once, the best final response chosen
(:func:`~proxy.core.context.select_best`), or a final response of the proxy's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.core import txns
from proxy.core.context import ContextEvent, Response, ResponseContext, select_best
from proxy.core.effects import Out
from proxy.sip import (
    AbsoluteUri,
    SipMessage,
    SipUri,
    make_response,
    parse_message,
    parse_name_addr_list,
    rewrite,
    strip_top_via,
)

if TYPE_CHECKING:
    from proxy.core.core import ProxyCore


def send_best(core: ProxyCore, ctx: ResponseContext, now: float, out: Out) -> None:
    """RFC 3261 16.7 step 6: the best final response goes to the caller."""
    if ctx.reply is not None:
        # A reply rule decided (README "Policy files"): its status instead of the best.
        status, reason = ctx.reply
        send_local(core, ctx, status, now, out, reason=reason)
        return
    best = select_best(ctx.responses)
    if best is None:
        send_local(core, ctx, 408, now, out)
        return
    if ctx.from_location and all(r.msg is None or r.status == 430 for r in ctx.responses):
        # Registered, but no binding (no flow, RFC 5626 7) could be reached.
        send_local(core, ctx, 480, now, out)
        return
    final_to_caller(core, ctx, best, now, out)


def final_to_caller(
    core: ProxyCore, ctx: ResponseContext, r: Response, now: float, out: Out
) -> None:
    status = r.status
    if r.msg is None:
        if status == 503:  # a transport error of ours (16.9), never a 503 (16.7 step 6)
            send_local(core, ctx, 500, now, out, reason="Next Hop Unreachable")
        elif status == 430:  # RFC 5626 5.3: the flow a token named failed
            send_local(core, ctx, 430, now, out, reason="Flow Failed")
        else:
            send_local(core, ctx, status, now, out)
        return
    ctx.fire(ContextEvent.FINAL_SENT)
    if 300 <= status < 400 and ctx.recursed:
        data = without_recursed(ctx, r.msg)
    else:
        data = without_own_via(r.msg)
    if status == 503:
        # RFC 3261 16.7 step 6: a 503 chosen as best becomes 500.
        eol = data.find(b"\r\n")
        data = b"SIP/2.0 500 Server Internal Error" + data[eol:]
        status = 500
    txns.send_response(core, ctx.server, status, data, now, out)


def forward_response(
    core: ProxyCore, ctx: ResponseContext, msg: SipMessage, status: int, now: float, out: Out
) -> None:
    txns.send_response(core, ctx.server, status, without_own_via(msg), now, out)


def without_own_via(msg: SipMessage) -> bytes:
    """The response without its first Via value (RFC 3261 16.7 step 3): the bytes
    :func:`~proxy.sip.strip_top_via` returns, cut straight from ``msg.raw`` in the common
    case (a message whose header section :func:`~proxy.sip.rewrite` would copy untouched
    around the edit: the start line ends in CRLF, a Content-Length, nothing after the last
    header but the blank line; a top Via line of one value, or of two without quotes or
    angle brackets); :func:`~proxy.sip.strip_top_via` itself otherwise."""
    hdrs = msg.headers
    h = None
    for x in hdrs:
        if x.name == "via":
            h = x
            break
    raw = msg.raw
    sl_end = msg.start_line_end
    if (h is None or msg.content_length_index < 0 or not hdrs
            or msg.header_end != hdrs[-1].end + 2 or len(raw) < sl_end + 2
            or raw[sl_end] != 13 or raw[sl_end + 1] != 10):  # the start line ends in CRLF
        return strip_top_via(msg)
    value = h.value
    comma = value.find(",")
    if comma < 0:
        return raw[:h.start] + raw[h.end:]
    # Via values joined on one line (sipp's [last_Via:]): the line keeps the rest, as
    # strip_top_via writes it (its name as written, ": ", the one value left, stripped)
    rest = value[comma + 1:].strip()
    start = h.start
    colon = raw[start:start + 16].decode("latin-1").find(":")  # after the name as written
    if (not rest or "," in rest or '"' in value or "<" in value or colon < 0
            or not value[:comma].strip()):
        return strip_top_via(msg)  # several values left, quoting, a long name, a ParseError
    colon += start
    try:
        tail = rest.encode("latin-1")
    except UnicodeEncodeError:
        return strip_top_via(msg)
    return b"".join((raw[:colon], b": ", tail, b"\r\n", raw[h.end:]))


def send_local(
    core: ProxyCore, ctx: ResponseContext, status: int, now: float, out: Out,
    reason: str | None = None,
) -> None:
    """A final response of the proxy's own for the context (408, 480, 487, 500)."""
    ctx.fire(ContextEvent.FINAL_SENT)
    if ctx.to_tag is None:
        ctx.to_tag = core.new_tag()
    data = make_response(ctx.live_request, status, reason, to_tag=ctx.to_tag)
    txns.send_response(core, ctx.server, status, data, now, out)


def without_recursed(ctx: ResponseContext, msg: SipMessage) -> bytes:
    """The 3xx to forward, without the Contacts the proxy already recursed on."""
    edits: dict[int, str | None] = {}
    for i, h in enumerate(msg.headers):
        if h.name != "contact":
            continue
        kept = [c for c in parse_name_addr_list(h.value)
                if str(no_headers(c.uri)) not in ctx.recursed]
        edits[i] = ("Contact: " + ", ".join(str(c) for c in kept)) if kept else None
    return strip_top_via(parse_message(rewrite(msg, edits=edits)))


def no_headers(uri: SipUri | AbsoluteUri) -> SipUri | AbsoluteUri:
    return uri.without_headers() if isinstance(uri, SipUri) else uri
