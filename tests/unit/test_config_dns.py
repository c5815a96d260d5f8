"""``dns: {servers: [HOST:PORT, ...]}`` in proxy.yaml: where host names are looked up
(RFC 3263); the system resolver when absent; FILE:LINE:COLUMN errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import DnsSettings, load_config
from proxy.diagnostics import ConfigError


def write(tmp_path: Path, extra: str) -> Path:
    p = tmp_path / "proxy.yaml"
    p.write_text("listen: [udp:127.0.0.1:5060]\nupstreams: [sip:127.0.0.1:5080]\n" + extra)
    return p


def test_dns_servers_and_the_default(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, ""))
    assert config.dns == DnsSettings(())  # the system resolver
    config, _ = load_config(write(tmp_path, "dns: {servers: [127.0.0.1:5353, '[::1]', "
                                            "192.0.2.53]}\n"))
    assert config.dns.servers == (("127.0.0.1", 5353), ("::1", 53), ("192.0.2.53", 53))
    config, _ = load_config(write(tmp_path, "dns: {}\n"))
    assert config.dns.servers == ()


@pytest.mark.parametrize(("text", "where", "message"), [
    ("dns: 127.0.0.1:53", "3:6", "dns must be a mapping"),
    ("dns: {server: [127.0.0.1]}", "3:7", "dns: unknown key 'server'"),
    ("dns: {servers: 127.0.0.1}", "3:16", "dns: servers must be a list"),
    ("dns: {servers: [ns.example.com:53]}", "3:17",
     "dns server 'ns.example.com:53': must be an IP address, not a name"),
    ("dns: {servers: ['127.0.0.1:99999']}", "3:17", "dns server '127.0.0.1:99999'"),
    ("dns: {servers: [127.0.0.1:53, 127.0.0.1]}", "3:31", "listed twice"),
    ("dns: {servers: [" + ", ".join(f"127.0.0.{i}" for i in range(1, 10)) + "]}", "3:16",
     "at most 8 servers"),
])
def test_dns_errors_name_their_position(tmp_path: Path, text: str, where: str,
                                        message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text + "\n"))
    shown = [str(d) for d in info.value.diagnostics]
    assert any(f"proxy.yaml:{where}:" in d and message in d for d in shown), shown
