"""The access keys of proxy.yaml: limits.per_source_rps, tcp_max_connections,
tcp_idle_timeout, tcp_per_source, tcp_message_timeout, tls_handshake_timeout and
tls.verify_client (defaults, values, errors with positions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.diagnostics import ConfigError


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    (tmp_path / "c.pem").write_text("x")
    p = tmp_path / "proxy.yaml"
    p.write_text(text)
    return load_config(p)[0]


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "listen: [udp:127.0.0.1:5060]\n")
    assert cfg.limits.per_source_rps == 0
    assert cfg.limits.tcp_max_connections == 4096
    assert cfg.limits.tcp_idle_timeout == 120.0
    assert cfg.limits.tcp_per_source == 32
    assert cfg.limits.tcp_message_timeout == 10.0
    assert cfg.limits.tls_handshake_timeout == 5.0
    assert cfg.limits.udp_flood_rps == 1000
    assert (cfg.limits.overload_lag_ms, cfg.limits.max_transactions) == (50, 300_000)


def test_overload_bounds(tmp_path: Path) -> None:
    cfg = load(tmp_path, "listen: [udp:127.0.0.1:5060]\n"
               "limits: {overload_lag_ms: 0, max_transactions: 5000}\n")
    assert (cfg.limits.overload_lag_ms, cfg.limits.max_transactions) == (0, 5000)


def test_udp_flood_rps(tmp_path: Path) -> None:
    """limits.udp_flood_rps: the flood gate's datagrams a second per source; 0 turns it off."""
    for value in (0, 250, 50000):
        cfg = load(tmp_path, f"listen: [udp:127.0.0.1:5060]\nlimits: {{udp_flood_rps: {value}}}\n")
        assert cfg.limits.udp_flood_rps == value


def test_values(tmp_path: Path) -> None:
    cfg = load(tmp_path, "listen: [tls:127.0.0.1:5061]\nlimits: {per_source_rps: 20, "
               "tcp_max_connections: 500, tcp_idle_timeout: 2.5, tcp_per_source: 4, "
               "tcp_message_timeout: 1.5, tls_handshake_timeout: 2}\n"
               "tls: {cert_file: c.pem, key_file: c.pem, ca_file: c.pem, verify_client: true}\n")
    assert (cfg.limits.per_source_rps, cfg.limits.tcp_max_connections,
            cfg.limits.tcp_idle_timeout, cfg.limits.tcp_per_source,
            cfg.limits.tcp_message_timeout, cfg.limits.tls_handshake_timeout) == \
        (20, 500, 2.5, 4, 1.5, 2.0)
    assert cfg.tls is not None and cfg.tls.verify_client


@pytest.mark.parametrize(("text", "message"), [
    ("limits: {per_source_rps: -1}", "limits: per_source_rps must be between 0 and 1000000"),
    ("limits: {overload_lag_ms: -5}", "limits: overload_lag_ms must be between 0 and 10000"),
    ("limits: {max_transactions: many}", "limits: max_transactions must be"),
    ("limits: {tcp_max_connections: 0}", "limits: tcp_max_connections must be between 1"),
    ("limits: {udp_flood_rps: -5}", "limits: udp_flood_rps must be between 0 and 10000000"),
    ("limits: {udp_flood_rps: lots}", "limits: udp_flood_rps must be an integer"),
    ("limits: {tcp_idle_timeout: 0}", "limits: tcp_idle_timeout must be between 1 and 86400"),
    ("limits: {tcp_per_source: 0}", "limits: tcp_per_source must be between 1 and 1000000"),
    ("limits: {tcp_message_timeout: 0.1}",
     "limits: tcp_message_timeout must be between 0.5 and 3600"),
    ("limits: {tls_handshake_timeout: ten}",
     "limits: tls_handshake_timeout must be a number"),
    ("tls: {cert_file: c.pem, key_file: c.pem, verify_client: true}",
     "tls: verify_client needs ca_file"),
    ("tls: {cert_file: c.pem, key_file: c.pem, verify_client: yes}",
     "tls: verify_client must be true or false"),
])
def test_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f"listen: [udp:127.0.0.1:5060]\n{text}\n")
    assert any(message in str(d) and ":2:" in str(d) for d in err.value.diagnostics), \
        [str(d) for d in err.value.diagnostics]
