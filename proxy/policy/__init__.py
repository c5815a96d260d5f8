"""The response policy: which action the proxy takes for each final response.

``load_policy(path)`` reads and validates a policy file (errors with FILE:LINE:COLUMN);
``Policy.evaluate(status, method)`` is the pure, O(1) decision the core asks for each final
response (RFC 3261 16.7); ``BUILTIN_POLICY`` applies when the configuration names no file.
"""

from __future__ import annotations

from proxy.policy.builtin import BUILTIN_POLICY, BUILTIN_VERSION
from proxy.policy.loader import MAX_POLICY_BYTES, load_policy, parse_policy, policy_version
from proxy.policy.model import (
    FALLBACK,
    MAX_STATUS,
    MIN_STATUS,
    Action,
    Decision,
    Policy,
    Rule,
    format_statuses,
)

__all__ = [
    "BUILTIN_POLICY",
    "BUILTIN_VERSION",
    "FALLBACK",
    "MAX_POLICY_BYTES",
    "MAX_STATUS",
    "MIN_STATUS",
    "Action",
    "Decision",
    "Policy",
    "Rule",
    "format_statuses",
    "load_policy",
    "parse_policy",
    "policy_version",
]
