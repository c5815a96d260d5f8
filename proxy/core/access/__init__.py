"""Who may use the proxy: address sets, rate limits, dialog marks, request checks."""
