"""``proxy.yaml``: reading and validating the proxy's configuration (README "proxy.yaml").

:func:`load_config` returns a frozen :class:`Config` whose paths are absolute (a relative
``policy``, ``sqlite:``, ``auth.users_file`` or ``tls`` path is relative to the folder of
``proxy.yaml``), or raises :class:`~proxy.diagnostics.ConfigError` with every error found,
each with FILE:LINE:COLUMN. The users file of ``auth`` is read here too
(:mod:`proxy.auth_users`) and its errors carry its own positions.
:func:`load_config_and_policy` also loads the policy file the configuration names, and
reports that file's errors with the policy's own positions.

``upstreams`` is a list (one group, ``default``) or a mapping of named groups
(:mod:`proxy.config.upstreams`): ``Config.upstream_groups`` holds them all, the first one the
default, and ``Config.upstreams`` that first group's upstreams.

Access control: ``trusted_relays`` (who may send an initial request with a preloaded Route
to another host, RFC 3261 16.4), ``auth`` (digest authentication, RFC 3261 22.4),
``registrar_networks`` and ``registrar_max_contacts`` (RFC 3261 10.3).

``dns: {servers: [HOST:PORT, ...]}``: where host names are looked up (RFC 3263).

The optional keys the README lists under "Extensions" (``advertise``, ``force_rport``,
``limits``, ``timers``, ``log_level``, ``drain_timeout``, ``watch_policy``, ``secret``,
``tls`` ...) are read here too, each with its default.

``check`` and ``run`` read the configuration through this module alike: what the running
proxy cannot do is refused here, at its position (a ``redis+cluster://`` seed without a
port, a ``sqlite:`` without a path), not when the runtime starts.
"""

from __future__ import annotations

import os

from proxy.config.loader import load_config, load_config_and_policy
from proxy.config.model import (
    CONFIG_KEYS,
    DEFAULT_GROUP,
    DEFAULT_REGISTRAR_NETWORKS,
    LOG_LEVELS,
    AuthSettings,
    Config,
    Credentials,
    DnsSettings,
    Limits,
    Listen,
    Redirects,
    Timers,
    TlsSettings,
    Upstream,
    UpstreamGroup,
)
from proxy.config.syntax import parse_listen, parse_upstream

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_GROUP",
    "DEFAULT_REGISTRAR_NETWORKS",
    "LOG_LEVELS",
    "AuthSettings",
    "Config",
    "Credentials",
    "DnsSettings",
    "Limits",
    "Listen",
    "Redirects",
    "Timers",
    "TlsSettings",
    "Upstream",
    "UpstreamGroup",
    "load_config",
    "load_config_and_policy",
    "os",
    "parse_listen",
    "parse_upstream",
]
