"""
Load a TOML file and read it into a L{Config}: one reader per table, then
the checks that need several tables. Every problem is collected, in the
order of the tables here, before one L{ConfigError} lists them all.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, TypeVar

from .idp import check_login_paths, read_bearer, read_oidc
from .reader import ConfigError, Problems, Table, describe
from .routes import read_routes, upstream_settings
from .schema import (
    MAX_WORKERS,
    AdminConfig,
    BearerConfig,
    ClientLimits,
    Config,
    MetricsConfig,
    OIDCConfig,
    RouteConfig,
    SessionConfig,
    StateCookieConfig,
    UpstreamSettings,
)
from .session import read_csrf, read_redis, read_session, read_state_cookie
from .values import endpoint_prefix, endpoint_string, header_name, http_url, network, origin_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on PyPy 3.9
    import tomli as tomllib

T = TypeVar("T")

_LOGIN_AUTH_MODES = ("session", "session_or_bearer", "optional")
"""The route auth modes that may send a browser to log in."""


def load_config(path: str) -> Config:
    """
    Read and validate the TOML file at C{path}.

    @raise ConfigError: unreadable file, TOML syntax error, or invalid values.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, [f"cannot read the file: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [f"TOML syntax error: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}"]) \
            from None
    return parse_config(data, path)


def parse_config(data: Dict[str, Any], source: str) -> Config:
    """
    Validate a parsed TOML document.

    @raise ConfigError: with every problem found.
    """
    problems = Problems()
    top = Table(problems, data, "")
    settings = _top_level(top)
    upstream = _table(top, "upstream", lambda t: upstream_settings(t, UpstreamSettings()),
                      UpstreamSettings())
    routes = read_routes(top, upstream, settings["case_insensitive_routes"],
                         settings["endpoints_prefix"])
    oidc: Optional[OIDCConfig] = _table(top, "oidc", read_oidc, None)
    session = _table(top, "session", read_session, SessionConfig())
    redis = _table(top, "redis", read_redis, None)
    if session.store == "redis" and redis is None:
        problems.add("session.store", '"redis" needs a [redis] table with url')
    bearer = _table(top, "bearer", lambda t: read_bearer(t, oidc), BearerConfig())
    admin = _admin(top, session)
    metrics = _table(top, "metrics", _metrics, None)
    state_cookie = _table(top, "state_cookie", read_state_cookie, StateCookieConfig())
    csrf = _table(top, "csrf", read_csrf, None)
    if csrf is not None and oidc is None:
        problems.add("csrf", "protects session logins, which need an [oidc] table")
    headers = _table(top, "headers", _headers, Config(source).headers)
    top.done()
    _check_login(top, routes, oidc, session, settings["public_url"])
    if oidc is not None:
        check_login_paths(problems, oidc, settings["public_url"], settings["endpoints_prefix"],
                          state_cookie, session)
    if problems.items:
        raise ConfigError(source, problems.items)
    return Config(source=source, **settings, upstream=upstream, routes=routes, oidc=oidc,
                  session=session, redis=redis, state_cookie=state_cookie, csrf=csrf,
                  admin=admin, metrics=metrics, bearer=bearer, headers=headers)


def _table(top: Table, key: str, read: Callable[[Table], T], default: T) -> T:
    """Table C{key} read by C{read}, its unknown keys reported; C{default} when absent."""
    table = top.table(key)
    if table is None:
        return default
    value = read(table)
    table.done()
    return value


def _top_level(top: Table) -> Dict[str, Any]:
    """The top-level keys, as keyword arguments of L{Config}."""
    defaults = Config(source="")
    listen: Tuple[str, ...] = top.strings("listen", defaults.listen)
    if top.has("listen") and not listen:
        top.problem("listen", "needs at least one endpoint (or use --listen)")
    public_url = top.string("public_url", None, check=http_url)
    return {
        "listen": listen,
        "public_url": public_url.rstrip("/") if public_url else None,
        "trusted_proxies": top.strings("trusted_proxies", (), check=network),
        "endpoints_prefix": top.string("endpoints_prefix", defaults.endpoints_prefix,
                                       check=endpoint_prefix),
        "workers": top.integer("workers", 1, minimum=1, maximum=MAX_WORKERS),
        "drain_timeout": top.duration("drain_timeout", defaults.drain_timeout),
        "keepalive_timeout": top.duration("keepalive_timeout", defaults.keepalive_timeout,
                                          positive=True),
        "client_limits": _client_limits(top),
        "max_websockets": top.integer("max_websockets", defaults.max_websockets, minimum=1),
        "access_log": top.boolean("access_log", True),
        "http2": top.boolean("http2", defaults.http2),
        "username_claim": top.string("username_claim", "sub"),
        "case_insensitive_routes": top.boolean("case_insensitive_routes", False),
        "websocket_origins": top.strings("websocket_origins", (), check=origin_of),
    }


def _client_limits(top: Table) -> ClientLimits:
    """The top-level keys that bound what a client may hold and how slowly it may send."""
    d = ClientLimits()
    limits = ClientLimits(
        header_timeout=top.duration("client_header_timeout", d.header_timeout, positive=True),
        body_timeout=top.duration("client_body_timeout", d.body_timeout),
        body_min_rate=top.size("client_body_min_rate", d.body_min_rate),
        max_connections=top.integer("max_client_connections", d.max_connections, minimum=1),
        max_per_address=top.integer("max_client_connections_per_address", d.max_per_address),
    )
    if limits.max_per_address > limits.max_connections:
        top.problem("max_client_connections_per_address",
                    f"{limits.max_per_address} is above max_client_connections "
                    f"({limits.max_connections})")
    return limits


def _admin(top: Table, session: SessionConfig) -> Optional[AdminConfig]:
    """The C{[admin]} table, which needs the Redis store (its unknown keys come first)."""
    t = top.table("admin")
    if t is None:
        return None
    token = t.secret("token", required=True)
    listen = t.string("listen", "tcp:9091:interface=127.0.0.1")
    t.done()
    if session.store != "redis":
        top.problem("admin", 'the session admin API needs session.store = "redis"')
    if token is None:
        return None
    if len(token.reveal()) < 16:
        top.problem("admin.token", f"the token from {token.origin} is shorter than 16 characters")
    return AdminConfig(token=token, listen=listen)


def _metrics(t: Table) -> MetricsConfig:
    return MetricsConfig(listen=t.string("listen", "tcp:9102:interface=127.0.0.1",
                                         check=endpoint_string))


def _headers(t: Table) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    """The C{[headers]} table: header name = a claim name or a list of them (first present wins)."""
    out = []
    seen = set()
    for name, claims in t.items():
        try:
            header_name(name)
        except ValueError as e:
            t.problem(name, str(e))
            continue
        if name.lower() in seen:
            t.problem(name, "is set twice (header names are case-insensitive)")
            continue
        seen.add(name.lower())
        if isinstance(claims, str):
            claims = [claims]
        if not isinstance(claims, list) or not claims or \
                not all(isinstance(c, str) and c for c in claims):
            t.problem(name, f"expected a claim name or a list of them, got {describe(claims)}")
            continue
        out.append((name, tuple(claims)))
    return tuple(out)


def _check_login(top: Table, routes: Sequence[RouteConfig], oidc: Optional[OIDCConfig],
                 session: SessionConfig, public_url: Optional[str]) -> None:
    """What routes that authenticate need: an C{[oidc]} table; for logins, public_url and a secret."""
    for r in routes:
        if r.auth != "none" and oidc is None:
            what = '"session" (the default)' if r.auth == "session" else repr(r.auth)
            top.problem(f"{r.name}.auth", f"is {what}, which needs an [oidc] table; "
                        'set auth = "none" for a public route')
            break
    login_routes = [r for r in routes if r.auth in _LOGIN_AUTH_MODES]
    if not login_routes:
        return
    needs = f'{login_routes[0].name} has auth = "{login_routes[0].auth}"'
    if public_url is None and not top.has("public_url"):
        top.problem("public_url", f"is required for login ({needs})")
    session_table = top.raw("session")
    if not session.secrets and not (isinstance(session_table, dict) and "secrets" in session_table):
        top.problem("session.secrets", f"at least one secret is required for login ({needs})")
