"""
The session's tables: C{[session]} (the session cookie and where sessions
are kept), C{[redis]} (the shared store), C{[state_cookie]} (the cookies of
login attempts) and C{[csrf]}.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple
from urllib.parse import urlsplit

from .reader import Table
from .schema import CSRFConfig, RedisConfig, SessionConfig, StateCookieConfig
from .secrets import short_secret
from .values import absolute_path, cookie_domain, cookie_name, header_name, parse_duration, readable_file


def read_session(t: Table) -> SessionConfig:
    """The C{[session]} table: the session cookie, lifetimes, refresh and the store."""
    secrets = t.secrets("secrets")
    for i, s in enumerate(secrets):
        short = short_secret(s.reveal())
        if short is not None:
            t.problem(f"secrets[{i}]", f"the secret from {s.origin} is {short}")
    return SessionConfig(
        store=t.choice("store", ("cookie", "redis"), "cookie"),
        secrets=secrets,
        lifetime=t.duration("lifetime", 8 * 3600.0, positive=True),
        idle_timeout=t.duration("idle_timeout", 0.0),
        cookie_name=t.string("cookie_name", "oidcproxy", check=cookie_name),
        cookie_path=t.string("cookie_path", "/", check=absolute_path),
        cookie_domain=t.string("cookie_domain", None, check=cookie_domain),
        same_site=t.choice("same_site", ("Lax", "Strict", "None"), "Lax"),
        store_tokens=t.boolean("store_tokens", True),
        max_cookie_chunks=t.integer("max_cookie_chunks", 5, minimum=1, maximum=20),
        claims=t.choice("claims", ("all", "used"), "all"),
        refresh=t.choice("refresh", ("off", "on_expiry", "interval"), "on_expiry"),
        refresh_leeway=t.duration("refresh_leeway", 60.0),
        refresh_interval=t.duration("refresh_interval", 300.0, positive=True),
        idp_outage_grace=t.duration("idp_outage_grace", 0.0),
        revoke_on_logout=t.boolean("revoke_on_logout", True),
        **_sliding(t),
    )


def _sliding(t: Table) -> Dict[str, Any]:
    """C{session.sliding}, which needs the window C{idle_timeout} gives it, and C{cookie_secure}."""
    sliding = t.boolean("sliding", False)
    try:
        idle = parse_duration(t.raw("idle_timeout", "0s"))
    except ValueError:  # reported as idle_timeout's own problem
        idle = 0.0
    if sliding and idle <= 0:
        t.problem("sliding", "needs idle_timeout > 0: each request moves the expiry to "
                  "idle_timeout from now (never beyond lifetime from login)")
    secure = t.optional_boolean("cookie_secure")
    return {"sliding": sliding, "cookie_secure": secure}


def read_redis(t: Table) -> RedisConfig:
    """The C{[redis]} table: one server or Sentinels, credentials and TLS."""
    def check(url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{url!r} is not a redis:// or rediss:// URL")
        if parts.password:
            raise ValueError("must not hold a password; use redis.password (a secret reference)")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url!r}: the path must be a database number")
        return url

    def address(text: str) -> Tuple[str, int]:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not a host:port address")
        return host.strip("[]"), int(port)

    sentinel: Tuple[Tuple[str, int], ...] = t.strings("sentinel", (), check=address)
    master_name = t.string("master_name", None)
    if sentinel and not master_name:
        t.problem("master_name", "is required with sentinel")
    if master_name and not sentinel:
        t.problem("master_name", "only makes sense with sentinel")
    url = t.string("url", "redis://127.0.0.1:6379/0", check=check)
    ca_bundle = t.string("ca_bundle", None, check=readable_file)
    if ca_bundle and not url.startswith("rediss://"):
        t.problem("ca_bundle", "only makes sense with a rediss:// url (TLS)")
    return RedisConfig(
        url=url,
        username=t.string("username", None),
        password=t.secret("password"),
        key_prefix=t.string("key_prefix", "oidcproxy:"),
        pool_size=t.integer("pool_size", 10, minimum=1, maximum=1000),
        connect_timeout=t.duration("connect_timeout", 2.0, positive=True),
        command_timeout=t.duration("command_timeout", 2.0, positive=True),
        ca_bundle=ca_bundle,
        sentinel=sentinel,
        master_name=master_name,
    )


def read_state_cookie(t: Table) -> StateCookieConfig:
    """The C{[state_cookie]} table: the cookies that carry login attempts."""
    same_site = t.choice("same_site", ("Lax", "Strict", "None"), "Lax")
    if same_site == "Strict":
        t.problem("same_site", '"Strict" would break every login: the IdP\'s redirect back to '
                  "the callback is a cross-site navigation, which does not carry Strict cookies; "
                  'use "Lax" (or "None")')
    return StateCookieConfig(
        name=t.string("name", "oidcproxy_state", check=cookie_name),
        max_age=t.duration("max_age", 600.0, positive=True),
        max_count=t.integer("max_count", 5, minimum=1, maximum=20),
        path=t.string("path", "/", check=absolute_path),
        domain=t.string("domain", None, check=cookie_domain),
        same_site=same_site,
        secure=t.optional_boolean("secure"),
        http_only=t.boolean("http_only", True),
    )


def read_csrf(t: Table) -> CSRFConfig:
    """The C{[csrf]} table: the header and cookie of the double-submit token."""
    return CSRFConfig(
        header_name=t.string("header_name", "X-CSRF-Token", check=header_name),
        cookie_name=t.string("cookie_name", "oidcproxy_csrf", check=cookie_name),
        secure=t.optional_boolean("secure"),
    )
