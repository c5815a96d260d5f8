"""System tests: the proxy's code together with the programs and servers it works with, each in
a process of its own, but without SIP peers driving a running proxy (that is tests/e2e).

What belongs here (and not in tests/unit, which runs in one process with at most loopback
sockets of the test's own event loop; tests/unit/test_suite_layout.py holds it to that):

* a server the test starts: ``redis-server`` and a 3-node Redis Cluster (the session's, from
  tests/redis_harness.py), dnsmasq (tests/dns_servers.py);
* a tool the test runs on the repository's files: ``systemd-analyze verify``,
  ``docker-compose config``, ``make -n``;
* the proxy's own command line or runtime start-up as a child process (``python -m proxy``),
  the build seen from another process, sqlite changed by another process.

Every test collected here carries the ``system`` marker: ``pytest -m system`` runs only these,
``-m "not system and not e2e"`` only the unit and conformance tests. ``make test`` runs them
all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees every collected item, not only this folder's.
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.system)
