"""``proxy.yaml`` for SIP over WebSocket (RFC 7118): ``listen: ws:`` / ``wss:`` and
``ws_allowed_origins``; errors at their FILE:LINE:COLUMN."""

from __future__ import annotations

from pathlib import Path

from proxy.config import Listen, load_config
from tests.unit.test_config import _config, _errors


def test_ws_and_wss_listen_with_their_default_ports(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    config = _config(tmp_path, """
        listen: [udp:127.0.0.1:5060, ws:127.0.0.1:8080, "wss:[::1]", ws:0.0.0.0]
        upstreams: [sip:127.0.0.1:5080]
        tls: {cert_file: c.pem, key_file: k.pem}
        ws_allowed_origins: [https://Phone.Example.com/, "http://127.0.0.1:8000"]
        """)
    assert config.listen[1:] == (Listen("ws", "127.0.0.1", 8080), Listen("wss", "::1", 443),
                                 Listen("ws", "0.0.0.0", 80))
    # compared as a browser writes an origin: lower case, no trailing slash (RFC 6454 6.2)
    assert config.ws_allowed_origins == ("https://phone.example.com", "http://127.0.0.1:8000")


def test_wss_needs_the_tls_certificate(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen: [udp:127.0.0.1:5060, wss:127.0.0.1:8443]
        upstreams: [sip:127.0.0.1:5080]
        """) == ["T/proxy.yaml:1:30: listen wss:127.0.0.1:8443: a wss listen needs a 'tls' "
                 "section with cert_file and key_file"]


def test_an_origin_with_a_path_or_no_scheme_is_an_error_at_its_place(tmp_path: Path) -> None:
    assert _errors(tmp_path, """
        listen: [ws:127.0.0.1:8080]
        upstreams: [sip:127.0.0.1:5080]
        ws_allowed_origins:
          - https://phone.example.com/app
          - phone.example.com
          - 7
        """) == [
        "T/proxy.yaml:4:5: ws_allowed_origins: 'https://phone.example.com/app' is not an origin: "
        "write SCHEME://HOST[:PORT] as a browser sends it, e.g. https://phone.example.com (no "
        "path)",
        "T/proxy.yaml:5:5: ws_allowed_origins: 'phone.example.com' is not an origin: write "
        "SCHEME://HOST[:PORT] as a browser sends it, e.g. https://phone.example.com (no path)",
        "T/proxy.yaml:6:5: an entry of ws_allowed_origins must be a string, got the integer 7; "
        "e.g. ws_allowed_origins: [https://phone.example.com]",
    ]


def test_allowed_origins_without_a_websocket_listener_are_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text("listen: [udp:127.0.0.1:5060]\nupstreams: [sip:127.0.0.1:5080]\n"
                    "ws_allowed_origins: [https://phone.example.com]\n")
    _, warnings = load_config(path)
    assert [str(w).replace(str(tmp_path), "T") for w in warnings] == [
        "T/proxy.yaml:3:21: warning: ws_allowed_origins without a ws: or wss: listen has "
        "nothing to check"]


def test_an_upstream_is_never_reached_over_websocket(tmp_path: Path) -> None:
    """The proxy opens no WebSocket connection: ws is a listen transport only."""
    [error] = _errors(tmp_path, """
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:127.0.0.1:5080;transport=ws]
        """)
    assert "transport must be one of udp, tcp, tls, got 'ws'" in error
