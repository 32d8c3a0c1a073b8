"""
The session's tables: C{[session]} (the session cookie and where sessions
are kept), C{[redis]} (the shared store), C{[state_cookie]} (the cookies of
login attempts) and C{[csrf]}.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional, Tuple
from urllib.parse import urlsplit

from .reader import Problems, Table
from .schema import CSRFConfig, RedisConfig, SessionConfig, StateCookieConfig
from .secrets import short_secret
from .values import (
    absolute_path,
    cookie_domain,
    cookie_name,
    header_name,
    parse_duration,
    provider_cookie_name,
    readable_file,
)

_CHUNK_SUFFIX = re.compile(r".*_[0-9]+")
"""A name a session cookie's chunk would have (C{NAME_1}, C{NAME_2}, ...)."""


def check_provider_cookies(problems: Problems, providers: Iterable[str], session: SessionConfig,
                           state: StateCookieConfig, csrf: Optional[CSRFConfig]) -> None:
    """
    Each named provider's session cookie (C{cookie_name-NAME}) is a name of
    its own: not a chunk of another session cookie, not the CSRF cookie,
    not a login state cookie.
    """
    for name in providers:
        cookie = provider_cookie_name(session.cookie_name, name)
        key = f"providers.{name}"
        if _CHUNK_SUFFIX.fullmatch(name):
            problems.add(key, f"a name ending in _ and digits is refused: its session cookie "
                         f"{cookie!r} would be read as a chunk of another session cookie")
        elif csrf is not None and cookie.lower() == csrf.cookie_name.lower():
            problems.add(key, f"its session cookie {cookie!r} would be csrf.cookie_name")
        elif cookie.lower().startswith(state.name.lower() + "_"):
            problems.add(key, f"its session cookie {cookie!r} would be taken for a login state "
                         f"cookie ({state.name}_...)")


def read_session(t: Table) -> SessionConfig:
    """The C{[session]} table: the session cookie, lifetimes, refresh and the store."""
    secrets = t.secrets("secrets", doc=(
        "The session secrets (each a secret of at least 32 bytes): the first encrypts, all "
        "decrypt, so a new one put first rotates without logging anyone out. Required for "
        "login."))
    for i, s in enumerate(secrets):
        short = short_secret(s.reveal())
        if short is not None:
            t.problem(f"secrets[{i}]", f"the secret from {s.origin} is {short}")
    return SessionConfig(
        store=t.choice("store", ("cookie", "redis"), "cookie", doc=(
            "Where sessions live: ``cookie``, an AES-256-GCM encrypted cookie (no server "
            "state); ``redis``, the ``[redis]`` server, the cookie holding only a random id.")),
        secrets=secrets,
        lifetime=t.duration("lifetime", 8 * 3600.0, positive=True, doc=(
            "A session ends this long after login, whatever happens (enforced from inside the "
            "encrypted value).")),
        idle_timeout=t.duration("idle_timeout", 0.0, doc=(
            'A session ends after this long unused; ``"0s"``: never.')),
        cookie_name=t.string("cookie_name", "oidcproxy", check=cookie_name, doc=(
            "The session cookie's name; sent as ``__Host-<name>`` when ``public_url`` is https "
            "and no ``cookie_domain`` is set. A named provider's sessions have a cookie of "
            "their own, ``<name>-<provider>``, with the same attributes.")),
        cookie_path=t.string("cookie_path", "/", check=absolute_path, doc=(
            "The session cookie's ``Path``.")),
        cookie_domain=t.string("cookie_domain", None, check=cookie_domain, doc=(
            "The session cookie's ``Domain``, to share the session with subdomains (drops "
            "``__Host-``); unset: host-only.")),
        same_site=t.choice("same_site", ("Lax", "Strict", "None"), "Lax", doc=(
            "The session cookie's ``SameSite``; ``None`` needs a secure cookie.")),
        store_tokens=t.boolean("store_tokens", True, doc=(
            "Keep the tokens in the session; ``false``: claims only (smaller cookies, no token "
            "forwarding and no refresh).")),
        max_cookie_chunks=t.integer("max_cookie_chunks", 5, minimum=1, maximum=20, doc=(
            "A session is split over at most this many cookies (about 3800 bytes each); a "
            "login that needs more gets a 502 page and a log line saying what helps.")),
        claims=t.choice("claims", ("all", "used"), "all", doc=(
            "``used``: keep only the claims that ``[headers]``, the routes' rules and "
            "allow-lists, ``username_claim`` and the proxy read (``/oidc/userinfo`` and "
            "``identity()`` then show only those), so a session with many groups fits.")),
        refresh=t.choice("refresh", ("off", "on_expiry", "interval"), "on_expiry", doc=(
            "Refresh the access token with the refresh token: ``on_expiry``, "
            "``refresh_leeway`` before it expires; ``interval``, also every "
            "``refresh_interval``; ``off``, never.")),
        refresh_leeway=t.duration("refresh_leeway", 60.0, doc=(
            "How long before the access token expires a refresh happens.")),
        refresh_interval=t.duration("refresh_interval", 300.0, positive=True, doc=(
            "With ``refresh = \"interval\"``: refresh a session this often.")),
        idp_outage_grace=t.duration("idp_outage_grace", 0.0, doc=(
            "While the token endpoint is unreachable, keep serving sessions whose access token "
            'expired for this long; ``"0s"``: off.')),
        revoke_on_logout=t.boolean("revoke_on_logout", True, doc=(
            "Revoke the refresh and access tokens at logout (RFC 7009) when the IdP advertises "
            "a ``revocation_endpoint``.")),
        **_sliding(t),
    )


def _sliding(t: Table) -> Dict[str, Any]:
    """C{session.sliding}, which needs the window C{idle_timeout} gives it, and C{cookie_secure}."""
    sliding = t.boolean("sliding", False, doc=(
        "Each request moves the cookie's expiry (and the Redis TTL) to ``idle_timeout`` from "
        "now, never beyond ``lifetime`` from login; needs ``idle_timeout``. ``false``: the "
        "cookie expires ``lifetime`` after login."))
    try:
        idle = parse_duration(t.raw("idle_timeout", "0s"))
    except ValueError:  # reported as idle_timeout's own problem
        idle = 0.0
    if sliding and idle <= 0:
        t.problem("sliding", "needs idle_timeout > 0: each request moves the expiry to "
                  "idle_timeout from now (never beyond lifetime from login)")
    secure = t.optional_boolean("cookie_secure", default_text="true when public_url is https",
                                doc="The session cookie's ``Secure`` flag.")
    return {"sliding": sliding, "cookie_secure": secure}


def read_redis(t: Table) -> RedisConfig:
    """The C{[redis]} table: one server or Sentinels, credentials and TLS."""
    def check(url: str) -> str:
        """A C{redis://} or C{rediss://} URL (TLS) without a password, its path a database number."""
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
        """A C{host:port} address."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not a host:port address")
        return host.strip("[]"), int(port)

    sentinel: Tuple[Tuple[str, int], ...] = t.strings("sentinel", (), check=address, doc=(
        "Redis Sentinel addresses: the master is found through them (with ``master_name``) "
        "instead of ``url``'s host."))
    master_name = t.string("master_name", None, doc=(
        "The master's name at the Sentinels; required with ``sentinel``."))
    if sentinel and not master_name:
        t.problem("master_name", "is required with sentinel")
    if master_name and not sentinel:
        t.problem("master_name", "only makes sense with sentinel")
    url = t.string("url", "redis://127.0.0.1:6379/0", check=check, doc=(
        "The Redis server; ``rediss://`` for TLS (certificate and host name verified)."))
    ca_bundle = t.string("ca_bundle", None, check=readable_file, doc=(
        "CAs for a ``rediss://`` server; unset: the system's."))
    if ca_bundle and not url.startswith("rediss://"):
        t.problem("ca_bundle", "only makes sense with a rediss:// url (TLS)")
    return RedisConfig(
        url=url,
        username=t.string("username", None, doc="The Redis 6 ACL user."),
        password=t.secret("password", doc="The Redis password (a secret; never in the URL)."),
        key_prefix=t.string("key_prefix", "oidcproxy:", doc="The prefix of every key written."),
        pool_size=t.integer("pool_size", 10, minimum=1, maximum=1000, doc=(
            "Connections to Redis kept per process.")),
        connect_timeout=t.duration("connect_timeout", 2.0, positive=True, doc=(
            "Connecting to Redis must take less than this.")),
        command_timeout=t.duration("command_timeout", 2.0, positive=True, doc=(
            "A command Redis does not answer within this fails: 503, sessions kept.")),
        ca_bundle=ca_bundle,
        sentinel=sentinel,
        master_name=master_name,
    )


def read_state_cookie(t: Table) -> StateCookieConfig:
    """The C{[state_cookie]} table: the cookies that carry login attempts."""
    same_site = t.choice("same_site", ("Lax", "Strict", "None"), "Lax", doc=(
        "The state cookies' ``SameSite``. ``Strict`` is refused: the IdP's redirect back is "
        "cross-site and would arrive without the cookie. ``None`` needs a secure cookie."))
    if same_site == "Strict":
        t.problem("same_site", '"Strict" would break every login: the IdP\'s redirect back to '
                  "the callback is a cross-site navigation, which does not carry Strict cookies; "
                  'use "Lax" (or "None")')
    return StateCookieConfig(
        name=t.string("name", "oidcproxy_state", check=cookie_name, doc=(
            "The name of each attempt's cookie is ``<name>_<state>``.")),
        max_age=t.duration("max_age", 600.0, positive=True, doc=(
            "A login attempt must come back within this.")),
        max_count=t.integer("max_count", 5, minimum=1, maximum=20, doc=(
            "Login attempts kept at once; the oldest are dropped.")),
        path=t.string("path", "/", check=absolute_path, doc=(
            "The state cookies' ``Path``; it must cover the callback path.")),
        domain=t.string("domain", None, check=cookie_domain, doc=(
            "The state cookies' ``Domain``, covering ``public_url``'s host; unset: host-only.")),
        same_site=same_site,
        secure=t.optional_boolean("secure", default_text="as the session cookie", doc=(
            "The state cookies' ``Secure`` flag.")),
        http_only=t.boolean("http_only", True, doc="The state cookies' ``HttpOnly`` flag."),
    )


def read_csrf(t: Table) -> CSRFConfig:
    """The C{[csrf]} table: the header and cookie of the double-submit token."""
    return CSRFConfig(
        header_name=t.string("header_name", "X-CSRF-Token", check=header_name, doc=(
            "The request header that must carry the cookie's token on unsafe methods.")),
        cookie_name=t.string("cookie_name", "oidcproxy_csrf", check=cookie_name, doc=(
            "The cookie carrying the token (not ``HttpOnly``: the page's scripts read it; "
            "``__Host-`` prefixed on https).")),
        secure=t.optional_boolean("secure", default_text="as the session cookie", doc=(
            "The CSRF cookie's ``Secure`` flag.")),
    )
