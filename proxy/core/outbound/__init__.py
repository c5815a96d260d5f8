"""SIP Outbound (RFC 5626): flows, flow tokens, where a binding is reached."""
