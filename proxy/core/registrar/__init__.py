"""The registrar (RFC 3261 10): location store, REGISTER handling, digest authentication."""
