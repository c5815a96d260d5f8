"""RFC 4475 / RFC 5118 conformance: the expectation table and the parser-level test."""
