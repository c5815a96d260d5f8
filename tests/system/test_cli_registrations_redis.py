"""``sip-policy-proxy registrations list [--json] | remove AOR`` against a real redis-server
(the session's, tests/redis_harness.py): the tests of tests/unit/test_cli_registrations.py,
each run here with a ``config`` whose ``state:`` is that server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.redis_harness import RedisServer
from tests.unit.test_cli_registrations import (
    seeded,
    test_list_json_for_scripts,
    test_list_prints_a_table,
    test_remove_takes_the_aor_as_a_sip_uri,
)
from tests.unit.test_cli_routes import write_config

__all__ = ["test_list_json_for_scripts", "test_list_prints_a_table",
           "test_remove_takes_the_aor_as_a_sip_uri"]


@pytest.fixture(params=["redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    server: RedisServer = request.getfixturevalue("redis_server")
    server.cli("flushall")
    return seeded(write_config(tmp_path, server.url))
