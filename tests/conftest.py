"""Fixtures shared by the system and end-to-end suites (tests/system, tests/e2e): real Redis
servers (:mod:`tests.redis_harness`). The unit tests start no server."""

from tests.redis_harness import own_redis, redis_cluster, redis_server

__all__ = ["own_redis", "redis_cluster", "redis_server"]
