"""sip-policy-proxy: a transaction-stateful SIP proxy driven by a per-status-code policy."""

__version__ = "0.1.0"
