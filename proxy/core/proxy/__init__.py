"""Proxying (RFC 3261 16): routing, forwarding, responses, CANCEL, redirects, dialogs."""
