"""Fixtures shared by the unit and end-to-end suites: real Redis servers
(:mod:`tests.redis_harness`)."""

from tests.redis_harness import own_redis, redis_cluster, redis_server

__all__ = ["own_redis", "redis_cluster", "redis_server"]
