"""The built-in policy: the semantics of ``policies/default.yaml``, used when ``proxy.yaml``
names no policy file (a test keeps the two identical for every status and method)."""

from __future__ import annotations

from proxy.policy.model import Action, Policy, Rule

__all__ = ["BUILTIN_POLICY", "BUILTIN_VERSION"]

BUILTIN_VERSION = "builtin"

BUILTIN_POLICY = Policy(
    rules=(
        # RFC 3261 21.3.2: the user can no longer be found at the Request-URI; remember it.
        Rule("moved-permanently", frozenset({301}), Action.REDIRECT, permanent=True,
             max_redirects=3),
        # RFC 3261 21.3.3: try the Contact(s) this time only.
        Rule("moved-temporarily", frozenset({302}), Action.REDIRECT, permanent=False,
             max_redirects=3),
        # RFC 5626 11: the flow is gone; try the instance's other flows.
        Rule("flow-failed", frozenset({430}), Action.RETRY_FLOWS, max_attempts=3),
        # RFC 3261 16.7 step 5 / 21.6: a global failure ends the search.
        Rule("global-failure", frozenset({600, 603, 604, 606, 607, 608}), Action.STOP),
        # Request timeout and server failures: the next upstream may do better.
        Rule("unavailable", frozenset({408, 500, 503}), Action.FAILOVER),
        # Everything else: best-response selection (RFC 3261 16.7 step 6).
        Rule("everything-else", frozenset(range(100, 700)), Action.FORWARD),
    ),
    version=BUILTIN_VERSION,
    path=None,
)
