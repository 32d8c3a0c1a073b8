"""
The middleware's session options: C{[session]} (the session cookie, its
lifetime, where sessions are kept), C{[redis]}, C{[state_cookie]}, C{[csrf]}
and the identity C{[headers]}.
"""

from __future__ import annotations

import re

from ...config import cookie_name, route_prefix
from .documents import Options
from .draft import Draft, duration
from .emit import Section
from .names import hub_option

SESSION_KEY_CREDENTIAL = "session-key"
"""The credential holding the new session secret (Traefik Hub keeps its own)."""

SLIDING_LIFETIME = 7 * 86400
"""The absolute lifetime given to a sliding session (Traefik Hub's have none)."""

SHARED_OPTIONS = (
    ("session", "[session]"),
    ("stateCookie", "[state_cookie]"),
    (hub_option("csrf"), "[csrf]"),
    (hub_option("headers"), "[headers]"),
    (hub_option("username_claim"), "username_claim"),
)
"""The middleware options oidcproxy has once for every provider, and where they go."""

CSRF_COOKIE = "traefikee-csrf-token"
CSRF_HEADER = "TraefikHub-Csrf-Token"


class SessionImport:
    """Writes the session's tables from the middleware's options."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.warn = draft.warn

    def shared_options(self, opts: Options, first: Options, first_name: str) -> None:
        """
        A further middleware's options that oidcproxy has once for every
        provider: the first middleware's (C{first}) are used, and each
        that differs from them is reported.
        """
        for option, where in SHARED_OPTIONS:
            value = opts.get(option)
            if value is not None and value != first.get(option):
                self.warn(opts.path(option), f"oidcproxy has one {where} for every provider: "
                          f"{first_name}'s is used; not carried over")

    def set_same_site(self, opts: Options, section: Section, key: str) -> None:
        option = hub_option(f"{section.header}.{key}")
        value = opts.string(option)
        if value is None:
            return
        names = {"lax": "Lax", "strict": "Strict", "none": "None"}
        if value.lower() in names:
            section.set(key, names[value.lower()])
        else:
            self.warn(opts.path(option), f"{value!r} is not one of none, lax, strict; not carried over")

    def set_cookie_name(self, opts: Options, section: Section, key: str) -> None:
        option = hub_option(f"{section.header}.{key}")
        name = opts.string(option)
        if name is None:
            return
        try:
            section.set(key, cookie_name(name))
        except ValueError as e:
            self.warn(opts.path(option), f"{e}; not carried over")

    def set_cookie_domain(self, opts: Options, section: Section, key: str) -> None:
        domain = opts.string(hub_option(f"{section.header}.{key}"))
        if domain:
            # A leading dot means nothing to browsers (RFC 6265 5.2.3).
            section.set(key, domain.lstrip("."))

    def set_cookie_path(self, opts: Options, section: Section, key: str) -> None:
        option = hub_option(f"{section.header}.{key}")
        path = opts.string(option)
        if path is None:
            return
        try:
            section.set(key, route_prefix(path))
        except ValueError as e:
            self.warn(opts.path(option), f"{e}; not carried over")

    def session_options(self, opts: Options) -> None:
        s = self.draft.session
        s.set("secrets", [{"credential": SESSION_KEY_CREDENTIAL}],
              "new: 32+ random bytes (Traefik Hub keeps its own key)")
        self.draft.credentials[SESSION_KEY_CREDENTIAL] = ("new: 32 or more random bytes, e.g. "
                                                          "head -c 32 /dev/urandom | base64")
        session = opts.table("session")
        if session is None:
            session = Options({}, opts.path("session"), self.warn)
        self.set_cookie_name(session, s, "cookie_name")
        self.set_cookie_path(session, s, "cookie_path")
        self.set_cookie_domain(session, s, "cookie_domain")
        expiry_option = hub_option("session.lifetime")
        expiry = session.integer(expiry_option)
        source = "from session.expiry"
        if expiry is None:
            expiry, source = 86400, "Traefik Hub's default session.expiry"
        elif expiry <= 0:
            self.warn(session.path(expiry_option), "must be positive (Traefik Hub refuses it too); "
                      "Traefik Hub's default 24h is used")
            expiry, source = 86400, "Traefik Hub's default session.expiry"
        sliding = session.boolean(hub_option("session.sliding"))
        if sliding is False:
            s.set("lifetime", duration(expiry), source)
        else:
            # Traefik Hub's sliding session (its default) ends expiry after
            # the last request, with no absolute end; oidcproxy always has one.
            s.set("lifetime", duration(max(expiry, SLIDING_LIFETIME)),
                  "the absolute end (Traefik Hub has none): adjust")
            s.set("idle_timeout", duration(expiry), source)
            s.set("sliding", True, "from session.sliding" if sliding else "Traefik Hub's default")
            lifetime = duration(max(expiry, SLIDING_LIFETIME))
            self.warn(session.path(hub_option("session.sliding")),
                      "a sliding session has no absolute end in Traefik Hub; "
                      f"oidcproxy ends it session.lifetime after login ({lifetime} chosen: adjust it)")
        refresh = session.boolean(hub_option("session.refresh"))
        if refresh is not None:
            s.set("refresh", "on_expiry" if refresh else "off")
        self.set_same_site(session, s, "same_site")
        secure = session.boolean(hub_option("session.cookie_secure"))
        if secure is not None:
            s.set("cookie_secure", secure)
        if session.boolean("httpOnly") is False:
            self.warn(session.path("httpOnly"), "false cannot be carried over: oidcproxy's session "
                      "cookie is always HttpOnly (scripts read the session with GET /oidc/userinfo)")
        store = session.table(hub_option("session.store"))
        if store is not None:
            redis = store.table("redis")
            if redis is not None:
                s.set("store", "redis")
                self.redis_options(redis)
            store.warn_unused()
        session.warn_unused()

    def redis_options(self, opts: Options) -> None:
        r = self.draft.redis
        endpoints_option = hub_option("redis.url")
        endpoints = opts.get(endpoints_option)
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not isinstance(endpoints, list) or not endpoints or \
                not all(isinstance(e, str) for e in endpoints):
            self.warn(opts.path(endpoints_option), "needs a list of host:port; the default "
                      "127.0.0.1:6379 is used")
            endpoints = ["127.0.0.1:6379"]
        database = opts.integer("database")
        tls = opts.table("tls")
        scheme = "rediss" if tls is not None else "redis"
        sentinel = opts.table("sentinel")
        master = sentinel.string(hub_option("redis.master_name")) if sentinel is not None else None
        first = endpoints[0]
        if ":" not in first.rsplit("]", 1)[-1]:
            first += ":6379"
        path = f"/{database}" if database else "/0"
        cluster_name = _cluster_dns(first)
        if master:
            r.set("url", f"{scheme}://127.0.0.1:6379{path}", "with sentinel only its scheme and "
                  "database count")
            r.set("sentinel", list(endpoints), "FIXME: Kubernetes service names" if any(
                _cluster_dns(e) for e in endpoints) else None)
            r.set("master_name", master)
        else:
            r.set("url", f"{scheme}://{first}{path}",
                  "FIXME: address (a Kubernetes service name)" if cluster_name else None)
            if len(endpoints) > 1:
                self.warn(opts.path("endpoints"), f"oidcproxy connects to one Redis (or Sentinels); "
                          f"only {endpoints[0]} is used")
        if any(_cluster_dns(e) for e in endpoints):
            self.warn(opts.path("endpoints"), "Kubernetes service names do not resolve outside the "
                      "cluster: put Redis's address in the output")
        username = opts.string(hub_option("redis.username"))
        if username:
            r.set("username", username)
        password_option = hub_option("redis.password")
        password = opts.string(password_option)
        if password:
            r.set("password", self.draft.secret(opts.path(password_option), password, "redis-password"),
                  "a systemd credential: see the top of this file")
        if opts.boolean("cluster"):
            self.warn(opts.path("cluster"), "Redis Cluster is not supported by oidcproxy: use one "
                      "Redis or Redis Sentinel")
        if tls is not None:
            ca_option = hub_option("redis.ca_bundle")
            ca = tls.string(ca_option)
            if ca:
                r.set("ca_bundle", self.draft.pem_file(tls.path(ca_option), ca, "redis-ca"),
                      "FIXME: write session.store.redis.tls.caBundle here")
            for option in ("cert", "key"):
                if tls.string(option):
                    self.warn(tls.path(option), "oidcproxy does not present a client certificate to "
                              "Redis; not carried over (use username and password)")
            if tls.boolean("insecureSkipVerify"):
                self.warn(tls.path("insecureSkipVerify"), "oidcproxy always verifies Redis's "
                          "certificate; not carried over (give its CA in ca_bundle)")
            tls.warn_unused()
        if sentinel is not None:
            for option in ("username", "password"):
                if sentinel.string(option):
                    self.warn(sentinel.path(option), "oidcproxy does not authenticate to the "
                              "Sentinels themselves; not carried over")
            if not master:
                self.warn(sentinel.path(hub_option("redis.master_name")),
                          "is required with sentinel; Sentinel is not used")
            sentinel.warn_unused()
        opts.warn_unused()

    def state_cookie_options(self, opts: Options) -> None:
        state = opts.table("stateCookie")
        if state is None:
            return
        c = self.draft.state_cookie
        self.set_cookie_name(state, c, "name")
        self.set_cookie_path(state, c, "path")
        self.set_cookie_domain(state, c, "domain")
        max_age = state.integer(hub_option("state_cookie.max_age"))
        if max_age is not None:
            if max_age > 0:
                c.set("max_age", duration(max_age), "from stateCookie.maxAge")
            else:
                self.warn(state.path(hub_option("state_cookie.max_age")),
                          "a state cookie that expires at once makes every login fail; "
                          "not carried over (default 10m)")
        self.set_same_site(state, c, "same_site")
        if c.has("same_site") and c.entries[-1].value == "Strict":
            self.warn(state.path(hub_option("state_cookie.same_site")),
                      "strict: the IdP's redirect back is a cross-site navigation, "
                      "which carries no Strict cookie, so every login would fail; "
                      "Lax is used")
            c.entries.pop()
            c.set("same_site", "Lax")
        for key in ("secure", "http_only"):
            value = state.boolean(hub_option(f"state_cookie.{key}"))
            if value is not None:
                c.set(key, value)
        state.warn_unused()

    def csrf_options(self, opts: Options) -> None:
        if opts.get(hub_option("csrf")) is None:
            return
        csrf = opts.table(hub_option("csrf"))
        if csrf is None:
            return
        c = self.draft.csrf
        header = csrf.string(hub_option("csrf.header_name"))
        c.set("header_name", header or CSRF_HEADER, None if header else "Traefik Hub's default")
        c.set("cookie_name", CSRF_COOKIE, "Traefik Hub's name: scripts read the token from it")
        secure = csrf.boolean(hub_option("csrf.secure"))
        if secure is not None:
            c.set("secure", secure)
        csrf.warn_unused()

    def headers_options(self, opts: Options) -> None:
        option = hub_option("headers")
        forward = opts.string_map(option)
        h = self.draft.headers
        if not forward:
            h.notes.append("Traefik Hub forwarded no identity headers (no forwardHeaders); the")
            h.notes.append("empty table keeps it so. Add header = claim lines to send some.")
            return
        for name, claim in forward.items():
            if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
                self.warn(f"{opts.path(option)}.{name}", "not a valid header name; not "
                          "carried over")
                continue
            if not claim:
                self.warn(f"{opts.path(option)}.{name}", "no claim named; not carried over")
                continue
            h.set(name, claim)
        self.warn(opts.path(option), "Traefik Hub reads these claims from the access "
                  "token, oidcproxy from the ID token (or the bearer token on API routes): check "
                  "that the ID token carries them. A missing claim sends no header (Traefik Hub: "
                  "an empty one)")


def _cluster_dns(endpoint: str) -> bool:
    """Whether a host[:port] is a Kubernetes service name (no use outside the cluster)."""
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 else endpoint
    return "." not in host or host.endswith((".svc", ".svc.cluster.local", ".cluster.local"))
