"""
Sessions in Redis, shared by every proxy process: the store
(L{oidcproxy.sessions.stores.redis.store}) and the connection pool it talks
through (L{oidcproxy.sessions.stores.redis.pool}).

Importing this package does not import txredisapi (which installs the
global reactor): L{build_redis} does, when it is called.
"""

from __future__ import annotations

from .pool import RedisURL, build_redis, parse_redis_url
from .store import PURPOSE_PREFIX, RedisStore, hashed

__all__ = ["PURPOSE_PREFIX", "RedisStore", "RedisURL", "build_redis", "hashed", "parse_redis_url"]
