"""Digest auth passes through (RFC 3261 22.2, 22.3, 16.6): the PBX's 401 with
WWW-Authenticate reaches the caller intact, and the retried INVITE with Authorization reaches
the PBX intact, so that the PBX's own digest check (sipp's verifyauth) succeeds and the call
completes. Over UDP and TCP, with sipp on both sides."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.harness import LOOPBACK, ProxyProcess, Sipp, assert_calls, free_port, sipp_msgs

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_digest_challenge_and_response_pass_through_unchanged(
        proxy_factory: Callable[..., ProxyProcess], sipp: Sipp, transport: str) -> None:
    pbx_port = free_port()
    suffix = ";transport=tcp" if transport == "tcp" else ""
    proxy = proxy_factory(upstreams=[f"sip:{LOOPBACK}:{pbx_port}{suffix}"])
    pbx = await sipp.uas("auth_uas_challenge.xml", port=pbx_port, transport=transport,
                         timeout=30, name="pbx")
    caller = await sipp.uac("auth_uac_call.xml", proxy.addr, transport=transport, calls=3,
                            rate=10, timeout=30, name="caller",
                            extra=["-au", "alice", "-ap", "s3cret"])
    caller_res = await caller.wait()
    pbx_res = await pbx.stop(grace=3.0)
    assert_calls(caller_res, 3)
    assert pbx_res.successful == 3 and pbx_res.failed == 0, pbx_res.describe()
    # The challenge, byte for byte as the PBX sent it ...
    sent_401 = sipp_msgs(pbx_res, "sent", lambda m: m.status == 401)
    got_401 = sipp_msgs(caller_res, "received", lambda m: m.status == 401)
    assert len(got_401) == 3
    assert {m.get("www-authenticate") for m in got_401} == \
        {m.get("www-authenticate") for m in sent_401}
    # ... and the answer, byte for byte as the caller sent it.
    sent_auth = sipp_msgs(caller_res, "sent", lambda m: m.method == "INVITE"
                          and m.get("authorization") is not None)
    got_auth = sipp_msgs(pbx_res, "received", lambda m: m.method == "INVITE"
                         and m.get("authorization") is not None)
    assert len(got_auth) == 3
    assert sorted(m.get("authorization") or "" for m in got_auth) == \
        sorted(m.get("authorization") or "" for m in sent_auth)
    proxy.assert_alive()
