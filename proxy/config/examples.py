"""An example of every ``proxy.yaml`` value, for the messages of the loader: a value of the
wrong type is reported with the form expected *and* an example of it, e.g.
``http must be a string, got the integer 17110; e.g. http: "127.0.0.1:9090"``.

Keys are the names the loader gives its values in messages (``what``): a top-level key, a
``section: key``, or a list entry (``an upstream``, ``an entry of trusted_relays``). Each
example is one line of valid YAML that the loader accepts as it is
(``tests/unit/test_config_errors.py`` loads every one).
"""

from __future__ import annotations

_LISTEN = "listen: [udp:0.0.0.0:5060, tcp:0.0.0.0:5060]"
_UPSTREAMS = "upstreams: [sip:10.0.0.20:5060, sip:10.0.0.21:5060;transport=tcp]"
_DOMAINS = "domains: [example.com]"

EXAMPLES: dict[str, str] = {
    "listen": _LISTEN,
    "a listen entry": _LISTEN,
    "upstreams": _UPSTREAMS,
    "an upstream": _UPSTREAMS,
    "policy": "policy: policies/default.yaml",
    "state": "state: sqlite:data/state.db",
    "node": "node: edge-1",
    "record_route": "record_route: true",
    "registrar": "registrar: upstream",
    "domains": _DOMAINS,
    "a domain": _DOMAINS,
    "redirects": "redirects: {trusted_sources: [10.0.0.20], max_ttl: 86400}",
    "redirects: trusted_sources": "redirects: {trusted_sources: [10.0.0.20, 192.0.2.0/24]}",
    "redirects: allow_targets": "redirects: {allow_targets: [example.com, 10.0.0.0/8]}",
    "redirects: max_ttl": "redirects: {max_ttl: 86400}",
    "trusted_relays": "trusted_relays: [192.0.2.10, 198.51.100.0/24]",
    "auth": "auth: {realm: example.com, users_file: users.yaml}",
    "auth: realm": "auth: {realm: example.com, users_file: users.yaml}",
    "auth: users_file": "auth: {realm: example.com, users_file: users.yaml}",
    "auth: algorithms": "auth: {realm: example.com, users_file: users.yaml, algorithms: [MD5]}",
    "registrar_networks": "registrar_networks: [10.0.0.0/8, 192.168.0.0/16]",
    "registrar_max_contacts": "registrar_max_contacts: 10",
    "registrar_max_bindings": "registrar_max_bindings: 100000",
    "path": "path: always",
    "dns": "dns: {servers: [192.0.2.53:53]}",
    "dns: servers": "dns: {servers: [192.0.2.53, 192.0.2.54:5353]}",
    "advertise": "advertise: sip.example.com:5060",
    "force_rport": "force_rport: true",
    "limits": "limits: {max_message_size: 65535, per_source_rps: 20}",
    "limits: max_message_size": "limits: {max_message_size: 65535}",
    "limits: max_headers": "limits: {max_headers: 256}",
    "limits: per_source_rps": "limits: {per_source_rps: 20}",
    "limits: tcp_max_connections": "limits: {tcp_max_connections: 4096}",
    "limits: tcp_idle_timeout": "limits: {tcp_idle_timeout: 120}",
    "limits: tcp_per_source": "limits: {tcp_per_source: 32}",
    "limits: tcp_message_timeout": "limits: {tcp_message_timeout: 10}",
    "limits: tls_handshake_timeout": "limits: {tls_handshake_timeout: 5}",
    "limits: tcp_accept_rate": "limits: {tcp_accept_rate: 500}",
    "limits: udp_flood_rps": "limits: {udp_flood_rps: 1000}",
    "limits: overload_lag_ms": "limits: {overload_lag_ms: 50}",
    "limits: max_transactions": "limits: {max_transactions: 300000}",
    "timers": "timers: {t1_ms: 500, timer_c_ms: 180000}",
    "timers: t1_ms": "timers: {t1_ms: 500}",
    "timers: t2_ms": "timers: {t2_ms: 4000}",
    "timers: t4_ms": "timers: {t4_ms: 5000}",
    "timers: timer_c_ms": "timers: {timer_c_ms: 180000}",
    "log_level": "log_level: info",
    "drain_timeout": "drain_timeout: 30",
    "watch_policy": "watch_policy: true",
    "secret": 'secret: "at least 32 random characters"',
    "tls": "tls: {cert_file: certs/proxy.pem, key_file: certs/proxy.key}",
    "tls: cert_file": "tls: {cert_file: certs/proxy.pem, key_file: certs/proxy.key}",
    "tls: key_file": "tls: {cert_file: certs/proxy.pem, key_file: certs/proxy.key}",
    "tls: ca_file": "tls: {cert_file: certs/proxy.pem, key_file: certs/proxy.key, "
                    "ca_file: certs/ca.pem}",
    "tls: verify_client": "tls: {cert_file: certs/proxy.pem, key_file: certs/proxy.key, "
                          "ca_file: certs/ca.pem, verify_client: true}",
    "http": 'http: "127.0.0.1:9090"',
    "log_format": "log_format: json",
    "upstream_probe": "upstream_probe: {interval: 10, timeout: 2}",
    "upstream_probe: interval": "upstream_probe: {interval: 10}",
    "upstream_probe: timeout": "upstream_probe: {timeout: 2}",
    "ws_allowed_origins": "ws_allowed_origins: [https://phone.example.com]",
    "hep": "hep: {to: udp:10.0.0.5:9060, id: 2001}",
    "hep: to": "hep: {to: udp:10.0.0.5:9060}",
    "hep: id": "hep: {to: udp:10.0.0.5:9060, id: 2001}",
    "trace_calls": "trace_calls: 1000",
    "http_token": 'http_token: "0f3c9a7e5d1b48a2c6e4f8a0b2d4c6e8"',
    "workers": "workers: 4",
    "workers_spread": "workers_spread: call",
    "the configuration": "listen: [udp:127.0.0.1:5060]",
}


def example(what: str) -> str | None:
    """The example for the value a message calls ``what``, None when there is none."""
    found = EXAMPLES.get(what)
    if found is None and what.startswith("an entry of "):
        found = EXAMPLES.get(what.removeprefix("an entry of "))
    return found
