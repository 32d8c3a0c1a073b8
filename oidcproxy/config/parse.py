"""
Load a TOML file and read it into a L{Config}: one reader per table, then
the checks that need several tables. Every problem is collected, in the
order of the tables here, before one L{ConfigError} lists them all.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, TypeVar

from .idp import Providers, check_login_paths, read_bearer, read_oidc, read_providers
from .pages import PagesConfig, read_pages
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
    StepUpConfig,
    UpstreamSettings,
)
from .secrets import short_secret
from .session import check_provider_cookies, read_csrf, read_redis, read_session, read_state_cookie
from .values import (
    DEFAULT_PROVIDER_NAME,
    endpoint_prefix,
    endpoint_string,
    header_name,
    http_url,
    network,
    origin_of,
)

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
        raise ConfigError(path, [toml_problem(str(e))]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start}"]) \
            from None
    return parse_config(data, path)


_TOML_WHERE = re.compile(r"(?s)(.*) \(at (?:line (\d+), column (\d+)|end of document)\)")

_UNTERMINATED = {
    # tomllib's and tomli's words for a string cut short, in plain ones.
    "Illegal character '\\n'": 'unterminated string: a closing " is missing',
    "Found invalid character '\\n'": "unterminated string: a closing ' is missing",
    "Unterminated string": 'unterminated string: a closing " is missing',
    "Expected \"'\"": "unterminated string: a closing ' is missing",
    "Expected \"'''\"": "unterminated string: a closing ''' is missing",
}


def toml_problem(message: str) -> str:
    """
    A TOML syntax error as a problem: where it is, then what (tomllib's or
    tomli's words, but a string cut short by the end of its line or the
    file is called an unterminated string: both parsers call it an illegal
    character, the newline).
    """
    m = _TOML_WHERE.fullmatch(message)
    if m is None:
        return f"TOML syntax error: {message}"
    what, line, column = m.groups()
    plain = _UNTERMINATED.get(what)
    if line is None:
        return f"TOML syntax error at the end of the file: {plain or what}"
    if plain is not None:
        # The column is the end of the line, where the string was found open.
        return f"TOML syntax error on line {line}: {plain}"
    return f"TOML syntax error on line {line}, column {column}: {what}"


def parse_config(data: Dict[str, Any], source: str) -> Config:
    """
    Validate a parsed TOML document.

    @raise ConfigError: with every problem found.
    """
    return read_config(Table(Problems(), data, ""), source)


def read_config(top: Table, source: str) -> Config:
    """
    Read the document's top-level table C{top}: every key this reads is
    declared with its documentation (the reference is recorded from here).

    @raise ConfigError: with every problem found.
    """
    problems = top.problems
    settings = _top_level(top)
    upstream = _table(top, "upstream", lambda t: upstream_settings(t, UpstreamSettings()),
                      UpstreamSettings(), "Defaults for every route's upstream; each "
                      "``[[routes]]`` entry may override any of them.")
    routes = read_routes(top, upstream, settings["case_insensitive_routes"],
                         settings["endpoints_prefix"])
    oidc: Optional[OIDCConfig] = _table(
        top, "oidc", read_oidc, None, "The identity provider and this client at it: needed by "
        "every route whose ``auth`` is not ``\"none\"`` (but those naming a ``provider``).")
    providers = read_providers(top, settings["endpoints_prefix"])
    session = _table(top, "session", read_session, SessionConfig(),
                     "The session cookie, the sessions' lifetimes and refresh, and where "
                     "sessions are kept.")
    redis = _table(top, "redis", read_redis, None,
                   "The Redis server (or Sentinels) of ``session.store = \"redis\"``; with the "
                   "cookie store, it holds the revocation list of logged-out sessions.")
    if session.store == "redis" and redis is None:
        problems.add("session.store", '"redis" needs a [redis] table with url')
    bearer = _table(top, "bearer", lambda t: read_bearer(t, oidc), BearerConfig(),
                    "Access tokens on ``bearer``, ``session_or_bearer`` and ``optional`` routes.")
    admin = _admin(top, session)
    metrics = _table(top, "metrics", _metrics, None,
                     "Prometheus metrics, ``GET /metrics`` on a listener of their own (no "
                     "authentication: keep it on loopback or a private network).")
    state_cookie = _table(top, "state_cookie", read_state_cookie, StateCookieConfig(),
                          "The short-lived cookies of login attempts, one per attempt.")
    csrf = _table(top, "csrf", read_csrf, None,
                  "CSRF protection for the application (the table's presence turns it on): a "
                  "double-submit cookie whose token unsafe session requests must carry in a header.")
    if csrf is not None and oidc is None and not providers:
        problems.add("csrf", "protects session logins, which need an [oidc] table")
    headers = _headers(top, Config(source).headers)
    pages = _table(top, "pages", read_pages, PagesConfig(),
                   "The pages the proxy itself shows people (403, failed login, unavailable, "
                   "sign-out, sign-in): their look, language and templates.")
    step_up = _table(top, "step_up", _step_up, StepUpConfig(),
                     "Step-up authentication (routes with ``acr_values``, ``max_auth_age`` or "
                     "``step_up``): the headers that tell the upstream how and when the user "
                     "signed in, and the bound on step-up logins.")
    top.done()
    _check_step_up_headers(problems, step_up, headers)
    _check_providers(top, routes, providers, oidc)
    check_provider_cookies(problems, [name for name, _ in providers], session, state_cookie, csrf)
    _check_login(top, routes, oidc, session, settings["public_url"])
    if oidc is not None or providers:
        check_login_paths(problems, oidc, providers, settings["public_url"],
                          settings["endpoints_prefix"], state_cookie, session)
    if problems.items:
        raise ConfigError(source, problems.items)
    return Config(source=source, **settings, upstream=upstream, routes=routes, oidc=oidc,
                  session=session, redis=redis, state_cookie=state_cookie, csrf=csrf,
                  admin=admin, metrics=metrics, bearer=bearer, headers=headers,
                  pages=pages, providers=providers, step_up=step_up)


def _table(top: Table, key: str, read: Callable[[Table], T], default: T, doc: str) -> T:
    """Table C{key} read by C{read}, its unknown keys reported; C{default} when absent."""
    table = top.table(key, doc=doc)
    if table is None:
        return default
    value = read(table)
    table.done()
    return value


def _top_level(top: Table) -> Dict[str, Any]:
    """The top-level keys, as keyword arguments of L{Config}."""
    defaults = Config(source="")
    listen: Tuple[str, ...] = top.strings(
        "listen", defaults.listen,
        doc="Where to listen: Twisted endpoint strings (``tcp:8080:interface=127.0.0.1``, "
        "``ssl:8443:privateKey=key.pem:certKey=cert.pem``, ``systemd:domain=INET:index=0``, "
        "``unix:/run/oidcproxy/http.sock:mode=660``). ``--listen`` overrides it.")
    if top.has("listen") and not listen:
        top.problem("listen", "needs at least one endpoint (or use --listen)")
    public_url = top.string(
        "public_url", None, check=http_url,
        doc="The external base URL users see. The login's redirect URI (``public_url`` + the "
        "callback path), the cookies' ``Secure`` flag and ``__Host-`` prefix and the return-to "
        "checks come from it, never from the request's ``Host``. Required when a route needs "
        "login.")
    return {
        "listen": listen,
        "public_url": public_url.rstrip("/") if public_url else None,
        "trusted_proxies": top.strings(
            "trusted_proxies", (), check=network,
            doc="Peers whose ``X-Forwarded-*``, ``Forwarded`` and ``X-Real-IP`` headers are "
            "believed and passed on; from any other peer they are dropped and the proxy sets "
            "its own."),
        "endpoints_prefix": top.string(
            "endpoints_prefix", defaults.endpoints_prefix, check=endpoint_prefix,
            doc="The prefix of the proxy's own endpoints (``/oidc/login``, ``/oidc/callback``, "
            "``/oidc/logout``, ``/oidc/userinfo``, ``/oidc/health`` ...). No route may live "
            "under it."),
        "workers": top.integer(
            "workers", 1, minimum=1, maximum=MAX_WORKERS,
            doc="Processes serving requests (``--workers`` overrides it). Above 1, twistd binds "
            "the listeners and starts this many workers serving on them, restarting one that "
            "dies."),
        "drain_timeout": top.duration(
            "drain_timeout", defaults.drain_timeout,
            doc="On SIGTERM: stop accepting, give the requests in flight this long to finish, "
            "then cut what is left. Keep systemd's ``TimeoutStopSec`` above it."),
        "keepalive_timeout": top.duration(
            "keepalive_timeout", defaults.keepalive_timeout, positive=True,
            doc="Close an idle client keep-alive connection after this long."),
        "client_limits": _client_limits(top),
        "max_websockets": top.integer(
            "max_websockets", defaults.max_websockets, minimum=1,
            doc="Upgraded (WebSocket) connections open at once in this process; more get 503."),
        "access_log": top.boolean(
            "access_log", True,
            doc="One structured access-log event per request (client, method, path without the "
            "query, status, bytes, duration, route, upstream, user)."),
        "http2": top.boolean(
            "http2", defaults.http2,
            doc="Offer HTTP/2 (``h2``) by ALPN on ``ssl:`` listeners when the ``h2`` package is "
            "installed (``pip install oidcproxy[http2]``); false offers only HTTP/1.1. Needs a "
            "restart."),
        "http2_max_concurrent_streams": top.integer(
            "http2_max_concurrent_streams", defaults.http2_max_concurrent_streams, minimum=1,
            doc="Requests one HTTP/2 connection may have in flight at once (advertised as "
            "``SETTINGS_MAX_CONCURRENT_STREAMS``); a client that opens more loses the connection. "
            "Its stream resets are capped too: twice this many at once, then 33 a second."),
        "username_claim": top.string(
            "username_claim", "sub",
            doc="The claim shown as the access log's user; the ``sub`` when a request's claims "
            "lack it."),
        "case_insensitive_routes": top.boolean(
            "case_insensitive_routes", False,
            doc="Match every route's path prefix in any ASCII case unless the route says "
            "otherwise (``case_insensitive``): for upstreams that serve paths "
            "case-insensitively."),
        "websocket_origins": top.strings(
            "websocket_origins", (), check=origin_of,
            doc="Origins (besides ``public_url``'s) whose pages may open WebSockets with the "
            "session cookie; a cookie-authenticated upgrade from any other origin gets 403. A "
            "route's own list replaces this one."),
    }


def _client_limits(top: Table) -> ClientLimits:
    """The top-level keys that bound what a client may hold and how slowly it may send."""
    d = ClientLimits()
    limits = ClientLimits(
        header_timeout=top.duration(
            "client_header_timeout", d.header_timeout, positive=True,
            doc="A request line and its headers must be in within this (from the connection's "
            "opening for its first request, from the first byte of each later one); past it: "
            "408 and the connection is closed."),
        body_timeout=top.duration(
            "client_body_timeout", d.body_timeout,
            doc="The time a request body gets before ``client_body_min_rate`` applies; "
            '``"0s"``: no deadline for bodies.'),
        body_min_rate=top.size(
            "client_body_min_rate", d.body_min_rate,
            doc="After ``client_body_timeout``, each this many bytes received buy one more "
            "second (as Apache's ``mod_reqtimeout`` ``MinRate``); 0: ``client_body_timeout`` is "
            "the whole body's deadline."),
        max_connections=top.integer(
            "max_client_connections", d.max_connections, minimum=1,
            doc="Client connections open at once in this process (idle keep-alive ones "
            "included, upgraded WebSockets not); above it a new connection gets 503 with "
            "``Retry-After``. ``--check`` warns when the open-file limit is too low for it."),
        max_per_address=top.integer(
            "max_client_connections_per_address", d.max_per_address,
            doc="At most this many of them from one IP address (0: no such cap). Not behind a "
            "load balancer, whose address every connection would have."),
    )
    if limits.max_per_address > limits.max_connections:
        top.problem("max_client_connections_per_address",
                    f"{limits.max_per_address} is above max_client_connections "
                    f"({limits.max_connections})")
    return limits


def _admin(top: Table, session: SessionConfig) -> Optional[AdminConfig]:
    """The C{[admin]} table, which needs the Redis store (its unknown keys come first)."""
    t = top.table("admin", doc="The session admin API (Redis sessions only), on a listener of "
                  "its own: list and end a user's sessions.")
    if t is None:
        return None
    token = t.secret("token", required=True,
                     doc="The bearer token every call must carry (a secret of 16 characters or "
                     "more).")
    listen = t.string("listen", "tcp:9091:interface=127.0.0.1",
                      doc="The admin API's listener: keep it on loopback or a private network.")
    t.done()
    if session.store != "redis":
        top.problem("admin", 'the session admin API needs session.store = "redis"')
    if token is None:
        return None
    short = short_secret(token.reveal(), 16)
    if short is not None:
        top.problem("admin.token", f"the token from {token.origin} is {short}")
    return AdminConfig(token=token, listen=listen)


def _metrics(t: Table) -> MetricsConfig:
    return MetricsConfig(listen=t.string("listen", "tcp:9102:interface=127.0.0.1",
                                         check=endpoint_string,
                                         doc="The metrics listener (a Twisted endpoint string)."))


def _headers(top: Table, default: Tuple[Tuple[str, Tuple[str, ...]], ...]
             ) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
    """The C{[headers]} table: header name = a claim name or a list of them (first present wins)."""
    t = top.table("headers", default=default, doc=(
        "Identity headers: header name = a claim, or a list of claims (the first present wins). "
        "Every header named here is first removed from the client's request, whatever its "
        "spelling, on every route. The table replaces the default as a whole."))
    if t is None:
        return default
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
    t.done()
    return tuple(out)



def _step_up(t: Table) -> StepUpConfig:
    """The C{[step_up]} table."""
    d = StepUpConfig()
    names = []
    for key, default, what in (("acr_header", d.acr_header, "acr"),
                               ("auth_time_header", d.auth_time_header, "auth_time (seconds "
                                "since the epoch)")):
        name = t.string(key, default, check=lambda v: v if v == "" else header_name(v), doc=(
            f"The identity header of the sign-in's {what}, sent upstream on session and bearer "
            'requests of every route with a sign-in; ``""``: not sent. Removed from every '
            "client request, whatever its spelling, either way."))
        names.append(name or None)
    return StepUpConfig(
        acr_header=names[0],
        auth_time_header=names[1],
        max_attempts=t.integer("max_attempts", d.max_attempts, minimum=1, maximum=20, doc=(
            "Step-up logins for one URL in one session within ``attempt_window``; one more "
            "(an IdP that keeps answering with less than asked, an upstream that keeps "
            "asking) ends on the login-failed page instead of a redirect loop.")),
        attempt_window=t.duration("attempt_window", d.attempt_window, positive=True, doc=(
            "The time over which ``max_attempts`` counts.")),
    )


def _check_step_up_headers(problems: Problems, step_up: StepUpConfig,
                           headers: Tuple[Tuple[str, Tuple[str, ...]], ...]) -> None:
    """The step-up headers are neither [headers]' nor each other: one value per header."""
    taken = {name.lower() for name, _ in headers}
    for key, name in (("acr_header", step_up.acr_header),
                      ("auth_time_header", step_up.auth_time_header)):
        if name is None:
            continue
        if name.lower() in taken:
            problems.add(f"step_up.{key}", f"{name!r} is set by [step_up] and by [headers] "
                         "or the other step-up header: rename one (or set step_up."
                         f'{key} = "" to send none)')
        taken.add(name.lower())


def _check_providers(top: Table, routes: Sequence[RouteConfig], providers: Providers,
                     oidc: Optional[OIDCConfig]) -> None:
    """
    Each provider a route names is defined (in C{providers}, C{oidc} names
    the C{[oidc]} table).
    """
    known = [name for name, _ in providers]
    defined = f"the providers defined: {', '.join(known)}" if known else \
        "there is no [providers.NAME] table"
    for r in routes:
        if r.provider is not None and r.provider not in known:
            top.problem(f"{r.name}.provider", f"{r.provider!r} is not a provider ({defined})")
        for i, name in enumerate(r.providers):
            key = f"{r.name}.providers[{i}]"
            if not name and oidc is None:
                top.problem(key, f"{DEFAULT_PROVIDER_NAME!r} names the [oidc] table, which "
                            "this configuration does not have")
            elif name and name not in known:
                top.problem(key, f"{name!r} is not a provider ({defined})")


def _check_login(top: Table, routes: Sequence[RouteConfig], oidc: Optional[OIDCConfig],
                 session: SessionConfig, public_url: Optional[str]) -> None:
    """
    What routes that authenticate need: an C{[oidc]} table (unless they name
    a provider); for logins, public_url and a secret.
    """
    for r in routes:
        if r.auth != "none" and oidc is None and r.provider is None and not r.providers:
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
