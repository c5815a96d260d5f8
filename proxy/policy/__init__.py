"""The policy: where a new call goes (routes) and what the proxy does with each final
response (rules).

``load_policy(path, groups)`` reads and validates a policy file (errors with
FILE:LINE:COLUMN); ``Policy.route(request, wall)`` picks the upstream group of a new initial
request and ``Policy.evaluate(status, method, request, answer, wall)`` is the pure decision
the core asks for each final response (RFC 3261 16.7), O(1) for a policy whose rules match
on status and method only; ``BUILTIN_POLICY`` applies when the configuration names no file.
``simulate`` runs a call through a policy without a network (the file's ``tests:``).
"""

from __future__ import annotations

from proxy.policy.builtin import BUILTIN_POLICY, BUILTIN_VERSION
from proxy.policy.cases import CaseAnswer, CaseExpect, CaseRequest, PolicyTest
from proxy.policy.loader import MAX_POLICY_BYTES, load_policy, parse_policy, policy_version
from proxy.policy.match import AnswerView, Conditions, RequestView, canonical_header
from proxy.policy.model import (
    FALLBACK,
    MAX_HOLD_DOWN,
    MAX_STATUS,
    MIN_STATUS,
    Action,
    Decision,
    Policy,
    Rule,
    format_statuses,
)
from proxy.policy.route import DEFAULT_ROUTE, DIVERSION_REASONS, NoAnswer, Route
from proxy.policy.simulate import Outcome, Step, Topology, check_test, simulate, user_part
from proxy.policy.timewindow import TimeWindow

__all__ = [
    "BUILTIN_POLICY",
    "BUILTIN_VERSION",
    "DEFAULT_ROUTE",
    "DIVERSION_REASONS",
    "FALLBACK",
    "MAX_POLICY_BYTES",
    "MAX_HOLD_DOWN",
    "MAX_STATUS",
    "MIN_STATUS",
    "Action",
    "AnswerView",
    "CaseAnswer",
    "CaseExpect",
    "CaseRequest",
    "Conditions",
    "Decision",
    "NoAnswer",
    "Outcome",
    "Policy",
    "PolicyTest",
    "RequestView",
    "Route",
    "Rule",
    "Step",
    "TimeWindow",
    "Topology",
    "canonical_header",
    "check_test",
    "format_statuses",
    "load_policy",
    "parse_policy",
    "policy_version",
    "simulate",
    "user_part",
]
