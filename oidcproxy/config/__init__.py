"""
Load and validate the TOML configuration.

Every problem is collected, not just the first, and each one names the file,
the key path (C{routes[2].upstream}) and what is wrong, so an operator fixes a
broken file in one pass. Unknown keys are errors: a typo in a security setting
must not be silently ignored.

The modules, from the bottom:

  - L{secrets}: L{Secret} and reading secret references (env, file, credential).
  - L{schema}: the frozen attrs classes, one per table, and their defaults.
  - L{values}: one checker per kind of value (durations, sizes, URLs, paths...).
  - L{reader}: the typed reader of a TOML table and L{ConfigError}.
  - L{policy}: the claim-rule language of C{rule} and the allow-lists.
  - L{routes}, L{idp}, L{session}: the readers of the tables.
  - L{parse}: L{load_config} and L{parse_config}, which compose them.

Everything the rest of the package uses is imported from here.
"""

from __future__ import annotations

from .idp import MIN_HMAC_SECRET_BYTES
from .parse import load_config, parse_config
from .reader import ConfigError
from .schema import (
    AUTH_MODES,
    CLIENT_AUTH_METHODS,
    ENDPOINT_KEYS,
    HTTP_METHODS,
    ID_TOKEN_ALGORITHMS,
    MAX_WORKERS,
    QUEUE_MULTIPLE,
    RESERVED_AUTH_PARAMS,
    AdminConfig,
    BearerConfig,
    ClientLimits,
    Config,
    CSRFConfig,
    IPNetwork,
    MetricsConfig,
    OIDCConfig,
    RedisConfig,
    RouteConfig,
    SessionConfig,
    StateCookieConfig,
    StepUpConfig,
    UpstreamSettings,
)
from .secrets import Secret
from .values import (
    DEFAULT_PROVIDER_NAME,
    cookie_name,
    http_url,
    origin_of,
    parse_duration,
    parse_size,
    provider_cookie_name,
    route_host,
    route_prefix,
)

__all__ = [
    "AUTH_MODES",
    "CLIENT_AUTH_METHODS",
    "DEFAULT_PROVIDER_NAME",
    "ENDPOINT_KEYS",
    "HTTP_METHODS",
    "ID_TOKEN_ALGORITHMS",
    "MAX_WORKERS",
    "MIN_HMAC_SECRET_BYTES",
    "QUEUE_MULTIPLE",
    "RESERVED_AUTH_PARAMS",
    "AdminConfig",
    "BearerConfig",
    "CSRFConfig",
    "ClientLimits",
    "Config",
    "ConfigError",
    "IPNetwork",
    "MetricsConfig",
    "OIDCConfig",
    "RedisConfig",
    "RouteConfig",
    "Secret",
    "SessionConfig",
    "StateCookieConfig",
    "StepUpConfig",
    "UpstreamSettings",
    "cookie_name",
    "http_url",
    "load_config",
    "origin_of",
    "parse_config",
    "parse_duration",
    "parse_size",
    "provider_cookie_name",
    "route_host",
    "route_prefix",
]
