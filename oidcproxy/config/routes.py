"""
The C{[upstream]} table and the C{[[routes]]}: each route with its
upstream settings (the C{[upstream]} ones, overridden per route) and its
compiled claim rule, then the checks across routes.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from ..core.assurance import Requirement
from .policy import Policy, RuleSyntaxError
from .reader import Table
from .schema import AUTH_MODES, QUEUE_MULTIPLE, RouteConfig, UpstreamSettings
from .values import (
    DEFAULT_PROVIDER_NAME,
    acr_value,
    email_domain,
    http_method,
    http_url,
    origin_of,
    provider_name,
    readable_file,
    replacement_prefix,
    route_host,
    route_prefix,
)


def upstream_settings(t: Table, base: UpstreamSettings) -> UpstreamSettings:
    """The upstream keys of C{t} (C{[upstream]} or a route), each defaulting to C{base}'s."""
    timeout = t.duration("timeout", base.timeout, positive=True, doc=(
        "From sending the request until the response headers arrive; 504 after."))
    queue_timeout = t.duration(  # -1: not set, or refused
        "queue_timeout", -1.0, positive=True, default_text=f'"{base.queue_timeout:g}s"', doc=(
            "A request waits for a connection at most this long (and never beyond ``timeout``, "
            "which the wait counts against); beyond: 503 with ``Retry-After``."))
    if queue_timeout < 0:
        queue_timeout = base.queue_timeout
    elif queue_timeout > timeout:
        t.problem("queue_timeout", f"{queue_timeout:g}s is longer than timeout ({timeout:g}s), "
                  "which a request's wait counts against")
    return UpstreamSettings(
        timeout=timeout,
        connect_timeout=t.duration("connect_timeout", base.connect_timeout, positive=True, doc=(
            "Establishing the TCP/TLS connection must take less than this; 504 after.")),
        max_body_size=t.size("max_body_size", base.max_body_size, doc=(
            "Larger request bodies get 413 before anything goes upstream.")),
        max_connections=t.integer("max_connections", base.max_connections, minimum=1, doc=(
            "Concurrent requests to one upstream; more wait their turn.")),
        max_queued=t.integer("max_queued", 0, default_text=f"{QUEUE_MULTIPLE} x max_connections",
                             doc="At most this many requests wait for a connection (0: none).")
        if t.has("max_queued") else base.max_queued,
        queue_timeout=queue_timeout,
        max_idle_connections=t.integer("max_idle_connections", base.max_idle_connections, doc=(
            "Idle keep-alive connections kept per upstream.")),
        ca_bundle=t.string("ca_bundle", base.ca_bundle, check=readable_file, doc=(
            "CAs for https upstreams; unset: the system's.")),
        **client_certificate(t, base),
        websockets=t.boolean("websockets", base.websockets, doc=(
            "Pass WebSocket upgrades through; ``false``: sent on as a plain request without "
            "its ``Upgrade`` headers.")),
        websocket_max_lifetime=t.duration("websocket_max_lifetime", 0.0,
                                          default_text="session.lifetime", doc=(
                                              "Close an open WebSocket after this long "
                                              '(``"0s"``: never); session expiry does not cut '
                                              "it."))
        if t.has("websocket_max_lifetime") else base.websocket_max_lifetime,
        stream_idle_timeout=t.duration("stream_idle_timeout", base.stream_idle_timeout, doc=(
            "Cut a streamed response (SSE, long poll) after this long without a byte once its "
            'headers are in; ``"0s"``: off.')),
    )


def client_certificate(t: Table, base: UpstreamSettings) -> Dict[str, Optional[str]]:
    """C{client_cert} and C{client_key}: a table that sets one sets both."""
    cert = t.string("client_cert", base.client_cert, check=readable_file, doc=(
        "Mutual TLS: the client certificate presented when the server asks for one (PEM, "
        "optionally followed by its intermediate CAs); with ``client_key``."))
    key = t.string("client_key", base.client_key, check=readable_file, doc=(
        "Mutual TLS: the certificate's unencrypted private key (may be the same file); with "
        "``client_cert``."))
    for given, missing in (("client_cert", "client_key"), ("client_key", "client_cert")):
        if t.has(given) and not t.has(missing):
            t.problem(missing, f"is required with {given} (both or neither)")
            return {"client_cert": base.client_cert, "client_key": base.client_key}
    return {"client_cert": cert, "client_key": key}


def read_route(t: Table, index: int, defaults: UpstreamSettings,
               case_insensitive: bool = False) -> Optional[RouteConfig]:
    """The route, or None when its path is invalid (so no other check trips on it)."""
    path = t.string("path", None, required=True, check=route_prefix, doc=(
        "The path prefix, matched on segment boundaries (``/api`` matches ``/api``, ``/api/`` "
        "and ``/api/x``, not ``/apix``); the longest matching prefix wins."))
    host = t.string("host", None, check=route_host, default_text="any host", doc=(
        "Only requests for this host (exact, or ``*.example.com``); a route with a host beats "
        "one without."))
    upstream = t.string("upstream", "http://invalid", required=True, check=http_url, doc=(
        "Where requests go: an http or https URL, optionally with a base path."))
    auth = t.choice("auth", AUTH_MODES, "session", doc=(
        "``session``: browser login (401 for API clients); ``bearer``: access tokens only; "
        "``session_or_bearer``: either; ``optional``: the identity when there is one; "
        "``none``: public (identity headers still stripped)."))
    provider = t.string("provider", None, check=provider_name, default_text="[oidc]", doc=(
        "The provider (a ``[providers.NAME]`` table) that logs this route's users in; its "
        "sessions are the only ones accepted here."))
    providers: Tuple[str, ...] = t.strings("providers", (), check=provider_name, doc=(
        "Several providers a user may choose from on this route (not with ``provider``): a "
        "session of any of them is served, a browser without one chooses on the sign-in page; "
        f"``{DEFAULT_PROVIDER_NAME}`` names the ``[oidc]`` table."))
    if len(set(providers)) != len(providers):
        t.problem("providers", "names a provider twice")
    # [oidc] is "" from here on, as everywhere else.
    providers = tuple("" if name == DEFAULT_PROVIDER_NAME else name for name in providers)
    if provider is not None and t.has("providers"):
        t.problem("providers", "cannot be combined with provider: name one provider, or list "
                  "the providers to choose from")
    if t.has("providers") and not providers:
        t.problem("providers", "is empty: no provider could serve this route")
    if auth == "none" and (t.has("provider") or t.has("providers")):
        t.problem("auth", '"none" cannot be combined with provider or providers (nobody '
                  "signs in on a public route)")
    rule = t.string("rule", None, doc=(
        "A claim rule such as ``Contains(`groups`, `admins`)`` (see :doc:`rules`); a request "
        "whose claims it refuses gets 403."))
    groups: Tuple[str, ...] = t.strings("allowed_groups", (), doc=(
        "The ``groups`` claim must contain one of these."))
    emails: Tuple[str, ...] = t.strings("allowed_emails", (), doc=(
        "The ``email`` claim must equal one of these (case-insensitive) ..."))
    domains: Tuple[str, ...] = t.strings("allowed_email_domains", (), check=email_domain, doc=(
        "... or be in one of these domains (or their subdomains)."))
    verified = t.boolean("require_email_verified", True, doc=(
        "The e-mail allow-lists need ``email_verified = true``."))
    policy = None
    if rule is not None or groups or emails or domains:
        if auth == "none":
            t.problem("auth", '"none" cannot be combined with rule or allowed_* (nobody is known)')
        try:
            policy = Policy.parse(rule, allowed_groups=groups, allowed_emails=emails,
                                  allowed_email_domains=domains, require_email_verified=verified)
        except RuleSyntaxError as e:
            t.problem("rule", str(e))
    acr_values, max_auth_age, step_up = assurance(t, auth)
    methods: Tuple[str, ...] = t.strings("methods", (), check=http_method, doc=(
        "The allowed methods, e.g. ``[\"GET\", \"HEAD\"]``; others get 405. ``[]``: any."))
    strip = t.boolean("strip_prefix", False, doc=(
        "Remove the path prefix before going upstream (``/api/x`` → ``/x``)."))
    replace = t.string("replace_prefix", None, check=replacement_prefix, doc=(
        "Replace the path prefix before going upstream (``/api/x`` → ``/v2/x``; ``\"\"`` "
        "strips it); not with ``strip_prefix``."))
    if strip and replace is not None:
        t.problem("replace_prefix", "cannot be combined with strip_prefix = true")
    # Route-level upstream settings override the [upstream] defaults.
    settings = upstream_settings(t, defaults)
    route = RouteConfig(
        index=index,
        path=path or "/",
        host=host,
        upstream=upstream.rstrip("/"),
        auth=auth,
        strip_prefix=strip,
        replace_prefix=replace,
        pass_host_header=t.boolean("pass_host_header", False, doc=(
            "Send the client's ``Host`` upstream instead of the upstream's.")),
        allow_encoded_slashes=t.boolean("allow_encoded_slashes", False, doc=(
            "Pass ``%2F`` and ``%5C`` upstream still encoded instead of answering 400.")),
        settings=settings,
        rule=rule,
        allowed_groups=groups,
        allowed_emails=emails,
        allowed_email_domains=domains,
        require_email_verified=verified,
        policy_mode=t.choice("policy_mode", ("enforce", "audit"), "enforce", doc=(
            "``audit``: a refused request is logged as \"would deny\" and let through.")),
        methods=methods,
        cors_preflight=t.boolean("cors_preflight", False, doc=(
            "Let CORS preflights (``OPTIONS`` with ``Access-Control-Request-Method``) through "
            "unauthenticated.")),
        session_expiry_headers=t.boolean("session_expiry_headers", False, doc=(
            "Send ``X-Auth-Session-Expires-In`` and ``X-Auth-Idle-Expires-In`` upstream.")),
        case_insensitive=t.boolean("case_insensitive", case_insensitive,
                                   default_text="case_insensitive_routes", doc=(
                                       "Match the path prefix in any ASCII case; the upstream "
                                       "gets the client's spelling.")),
        websocket_origins=t.strings("websocket_origins", (), check=origin_of,
                                    default_text="the top-level websocket_origins", doc=(
                                        "Replaces the top-level ``websocket_origins`` on this "
                                        "route."))
        if t.has("websocket_origins") else None,
        policy=policy,
        provider=provider,
        providers=providers,
        acr_values=acr_values,
        max_auth_age=max_auth_age,
        step_up=step_up,
        requirement=Requirement(acr_values, max_auth_age)
        if acr_values or max_auth_age is not None else None,
    )
    return route if path is not None else None


def assurance(t: Table, auth: str) -> Tuple[Tuple[str, ...], Optional[float], bool]:
    """A route's step-up keys: C{acr_values}, C{max_auth_age} and C{step_up}."""
    acr_values: Tuple[str, ...] = t.strings("acr_values", (), check=acr_value, doc=(
        "Step-up: the sign-in's ``acr`` must be one of these (most preferred first; sent as "
        "the login's ``acr_values``). A browser whose session has another is sent to sign in "
        "again (its session kept until then); an API client gets 401 with the RFC 9470 "
        "challenge; a bearer token's ``acr`` claim is checked the same way. ``[]``: any acr."))
    if len(set(acr_values)) != len(acr_values):
        t.problem("acr_values", "names a value twice")
    max_auth_age = t.duration("max_auth_age", 0.0, positive=True, default_text="any age", doc=(
        "Step-up: the sign-in (``auth_time``) must be at most this old; an older one signs in "
        "again (the login's ``max_age``) or gets the RFC 9470 challenge, as for ``acr_values``."))
    step_up = t.boolean("step_up", False, doc=(
        "When the upstream answers a browser's request with the RFC 9470 challenge (401, "
        "``WWW-Authenticate: Bearer error=\"insufficient_user_authentication\"`` with "
        "``acr_values`` and/or ``max_age``), sign in again as it asks instead of passing the "
        "401 on. API clients get the challenge unchanged."))
    asks = bool(acr_values) or t.has("max_auth_age") or step_up
    if asks and auth in ("none", "optional"):
        key = "acr_values" if acr_values else \
            "max_auth_age" if t.has("max_auth_age") else "step_up"
        t.problem(key, f'cannot be combined with auth = "{auth}" (a request without a sign-in '
                  "is served there, so none can be asked for more)")
    if step_up and auth == "bearer":
        t.problem("step_up", 'needs a route browsers sign in on (auth = "session" or '
                  '"session_or_bearer"); a bearer client gets the challenge as it is')
    return acr_values, (max_auth_age if t.has("max_auth_age") else None), step_up


def read_routes(top: Table, upstream: UpstreamSettings, case_insensitive: bool,
                prefix: str) -> Tuple[RouteConfig, ...]:
    """
    Every C{[[routes]]} entry that has a valid path, then what is wrong
    between them: a path routed twice, paths that differ only in case where
    one is matched in any case, a route inside the proxy's own C{prefix}.
    """
    routes = []
    routes_doc = ("The routes: each maps a path prefix (and optionally a host) to an upstream "
                  "with its authentication and policy. A route may also set any key of "
                  "``[upstream]``, which it then overrides. At least one is required.")
    for i, rt in enumerate(top.tables("routes", doc=routes_doc)):
        route = read_route(rt, i, upstream, case_insensitive)
        rt.done()
        if route is not None:
            routes.append(route)
    if not top.has("routes"):
        top.problem("routes", "at least one [[routes]] entry is required")
    seen: Dict[Tuple[Optional[str], str], int] = {}
    folded: Dict[Tuple[Optional[str], str], RouteConfig] = {}
    for r in routes:
        key = (r.host, r.path)
        where = f"on {'host ' + r.host if r.host else 'every host'}"
        if key in seen:
            top.problem(f"{r.name}.path", f"{r.path!r} {where} is already routed by "
                        f"routes[{seen[key]}]")
        seen[key] = r.index
        other = folded.setdefault((r.host, r.path.lower()), r)
        if other.path != r.path and (other.case_insensitive or r.case_insensitive):
            top.problem(f"{r.name}.path", f"{r.path!r} {where} differs only in case from "
                        f"routes[{other.index}]'s {other.path!r}, and one of them is "
                        "case_insensitive: spell both the same or merge them")
        # A case-insensitive route would take the endpoints' paths in another case.
        path, inside = (r.path.lower(), prefix.lower()) if r.case_insensitive else (r.path, prefix)
        if prefix and (path == inside or path.startswith(inside + "/")):
            top.problem(f"{r.name}.path", f"{r.path!r} is inside endpoints_prefix {prefix!r}")
    return tuple(routes)
