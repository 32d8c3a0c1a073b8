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

SESSION_KEY_CREDENTIAL = "session-key"
"""The credential holding the new session secret (Traefik Hub keeps its own)."""

SLIDING_LIFETIME = 7 * 86400
"""The absolute lifetime given to a sliding session (Traefik Hub's have none)."""

CSRF_COOKIE = "traefikee-csrf-token"
CSRF_HEADER = "TraefikHub-Csrf-Token"


class SessionImport:
    """Writes the session's tables from the middleware's options."""

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.warn = draft.warn

    def set_same_site(self, opts: Options, section: Section, key: str) -> None:
        value = opts.string("sameSite")
        if value is None:
            return
        names = {"lax": "Lax", "strict": "Strict", "none": "None"}
        if value.lower() in names:
            section.set(key, names[value.lower()])
        else:
            self.warn(opts.path("sameSite"), f"{value!r} is not one of none, lax, strict; not carried over")

    def set_cookie_name(self, opts: Options, section: Section, key: str) -> None:
        name = opts.string("name")
        if name is None:
            return
        try:
            section.set(key, cookie_name(name))
        except ValueError as e:
            self.warn(opts.path("name"), f"{e}; not carried over")

    def set_cookie_domain(self, opts: Options, section: Section, key: str) -> None:
        domain = opts.string("domain")
        if domain:
            # A leading dot means nothing to browsers (RFC 6265 5.2.3).
            section.set(key, domain.lstrip("."))

    def set_cookie_path(self, opts: Options, section: Section, key: str) -> None:
        path = opts.string("path")
        if path is None:
            return
        try:
            section.set(key, route_prefix(path))
        except ValueError as e:
            self.warn(opts.path("path"), f"{e}; not carried over")

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
        expiry = session.integer("expiry")
        source = "from session.expiry"
        if expiry is None:
            expiry, source = 86400, "Traefik Hub's default session.expiry"
        elif expiry <= 0:
            self.warn(session.path("expiry"), "must be positive (Traefik Hub refuses it too); "
                      "Traefik Hub's default 24h is used")
            expiry, source = 86400, "Traefik Hub's default session.expiry"
        sliding = session.boolean("sliding")
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
            self.warn(session.path("sliding"), "a sliding session has no absolute end in Traefik Hub; "
                      f"oidcproxy ends it session.lifetime after login ({lifetime} chosen: adjust it)")
        refresh = session.boolean("refresh")
        if refresh is not None:
            s.set("refresh", "on_expiry" if refresh else "off")
        self.set_same_site(session, s, "same_site")
        secure = session.boolean("secure")
        if secure is not None:
            s.set("cookie_secure", secure)
        if session.boolean("httpOnly") is False:
            self.warn(session.path("httpOnly"), "false cannot be carried over: oidcproxy's session "
                      "cookie is always HttpOnly (scripts read the session with GET /oidc/userinfo)")
        store = session.table("store")
        if store is not None:
            redis = store.table("redis")
            if redis is not None:
                s.set("store", "redis")
                self.redis_options(redis)
            store.warn_unused()
        session.warn_unused()

    def redis_options(self, opts: Options) -> None:
        r = self.draft.redis
        endpoints = opts.get("endpoints")
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not isinstance(endpoints, list) or not endpoints or \
                not all(isinstance(e, str) for e in endpoints):
            self.warn(opts.path("endpoints"), "needs a list of host:port; the default "
                      "127.0.0.1:6379 is used")
            endpoints = ["127.0.0.1:6379"]
        database = opts.integer("database")
        tls = opts.table("tls")
        scheme = "rediss" if tls is not None else "redis"
        sentinel = opts.table("sentinel")
        master = sentinel.string("masterSet") if sentinel is not None else None
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
        username = opts.string("username")
        if username:
            r.set("username", username)
        password = opts.string("password")
        if password:
            r.set("password", self.draft.secret(opts.path("password"), password, "redis-password"),
                  "a systemd credential: see the top of this file")
        if opts.boolean("cluster"):
            self.warn(opts.path("cluster"), "Redis Cluster is not supported by oidcproxy: use one "
                      "Redis or Redis Sentinel")
        if tls is not None:
            ca = tls.string("caBundle")
            if ca:
                r.set("ca_bundle", self.draft.pem_file(tls.path("caBundle"), ca, "redis-ca"),
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
                self.warn(sentinel.path("masterSet"), "is required with sentinel; Sentinel is not "
                          "used")
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
        max_age = state.integer("maxAge")
        if max_age is not None:
            if max_age > 0:
                c.set("max_age", duration(max_age), "from stateCookie.maxAge")
            else:
                self.warn(state.path("maxAge"), "a state cookie that expires at once makes every "
                          "login fail; not carried over (default 10m)")
        self.set_same_site(state, c, "same_site")
        if c.has("same_site") and c.entries[-1].value == "Strict":
            self.warn(state.path("sameSite"), "strict: the IdP's redirect back is a cross-site "
                      "navigation, which carries no Strict cookie, so every login would fail; "
                      "Lax is used")
            c.entries.pop()
            c.set("same_site", "Lax")
        for option, key in (("secure", "secure"), ("httpOnly", "http_only")):
            value = state.boolean(option)
            if value is not None:
                c.set(key, value)
        state.warn_unused()

    def csrf_options(self, opts: Options) -> None:
        if opts.get("csrf") is None:
            return
        csrf = opts.table("csrf")
        if csrf is None:
            return
        c = self.draft.csrf
        header = csrf.string("headerName")
        c.set("header_name", header or CSRF_HEADER, None if header else "Traefik Hub's default")
        c.set("cookie_name", CSRF_COOKIE, "Traefik Hub's name: scripts read the token from it")
        secure = csrf.boolean("secure")
        if secure is not None:
            c.set("secure", secure)
        csrf.warn_unused()

    def headers_options(self, opts: Options) -> None:
        forward = opts.string_map("forwardHeaders")
        h = self.draft.headers
        if not forward:
            h.notes.append("Traefik Hub forwarded no identity headers (no forwardHeaders); the")
            h.notes.append("empty table keeps it so. Add header = claim lines to send some.")
            return
        for name, claim in forward.items():
            if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name):
                self.warn(f"{opts.path('forwardHeaders')}.{name}", "not a valid header name; not "
                          "carried over")
                continue
            if not claim:
                self.warn(f"{opts.path('forwardHeaders')}.{name}", "no claim named; not carried over")
                continue
            h.set(name, claim)
        self.warn(opts.path("forwardHeaders"), "Traefik Hub reads these claims from the access "
                  "token, oidcproxy from the ID token (or the bearer token on API routes): check "
                  "that the ID token carries them. A missing claim sends no header (Traefik Hub: "
                  "an empty one)")


def _cluster_dns(endpoint: str) -> bool:
    """Whether a host[:port] is a Kubernetes service name (no use outside the cluster)."""
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 else endpoint
    return "." not in host or host.endswith((".svc", ".svc.cluster.local", ".cluster.local"))
