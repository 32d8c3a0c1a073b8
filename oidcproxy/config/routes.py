"""
The C{[upstream]} table and the C{[[routes]]}: each route with its
upstream settings (the C{[upstream]} ones, overridden per route) and its
compiled claim rule, then the checks across routes.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from .policy import Policy, RuleSyntaxError
from .reader import Table
from .schema import AUTH_MODES, RouteConfig, UpstreamSettings
from .values import (
    email_domain,
    http_method,
    http_url,
    origin_of,
    readable_file,
    replacement_prefix,
    route_host,
    route_prefix,
)


def upstream_settings(t: Table, base: UpstreamSettings) -> UpstreamSettings:
    """The upstream keys of C{t} (C{[upstream]} or a route), each defaulting to C{base}'s."""
    timeout = t.duration("timeout", base.timeout, positive=True)
    queue_timeout = t.duration("queue_timeout", -1.0, positive=True)  # -1: not set, or refused
    if queue_timeout < 0:
        queue_timeout = base.queue_timeout
    elif queue_timeout > timeout:
        t.problem("queue_timeout", f"{queue_timeout:g}s is longer than timeout ({timeout:g}s), "
                  "which a request's wait counts against")
    return UpstreamSettings(
        timeout=timeout,
        connect_timeout=t.duration("connect_timeout", base.connect_timeout, positive=True),
        max_body_size=t.size("max_body_size", base.max_body_size),
        max_connections=t.integer("max_connections", base.max_connections, minimum=1),
        max_queued=t.integer("max_queued", 0) if t.has("max_queued") else base.max_queued,
        queue_timeout=queue_timeout,
        max_idle_connections=t.integer("max_idle_connections", base.max_idle_connections),
        ca_bundle=t.string("ca_bundle", base.ca_bundle, check=readable_file),
        **client_certificate(t, base),
        websockets=t.boolean("websockets", base.websockets),
        websocket_max_lifetime=t.duration("websocket_max_lifetime", 0.0)
        if t.has("websocket_max_lifetime") else base.websocket_max_lifetime,
        stream_idle_timeout=t.duration("stream_idle_timeout", base.stream_idle_timeout),
    )


def client_certificate(t: Table, base: UpstreamSettings) -> Dict[str, Optional[str]]:
    """C{client_cert} and C{client_key}: a table that sets one sets both."""
    cert = t.string("client_cert", base.client_cert, check=readable_file)
    key = t.string("client_key", base.client_key, check=readable_file)
    for given, missing in (("client_cert", "client_key"), ("client_key", "client_cert")):
        if t.has(given) and not t.has(missing):
            t.problem(missing, f"is required with {given} (both or neither)")
            return {"client_cert": base.client_cert, "client_key": base.client_key}
    return {"client_cert": cert, "client_key": key}


def read_route(t: Table, index: int, defaults: UpstreamSettings,
               case_insensitive: bool = False) -> Optional[RouteConfig]:
    """The route, or None when its path is invalid (so no other check trips on it)."""
    path = t.string("path", None, required=True, check=route_prefix)
    host = t.string("host", None, check=route_host)
    upstream = t.string("upstream", "http://invalid", required=True, check=http_url)
    auth = t.choice("auth", AUTH_MODES, "session")
    rule = t.string("rule", None)
    groups: Tuple[str, ...] = t.strings("allowed_groups", ())
    emails: Tuple[str, ...] = t.strings("allowed_emails", ())
    domains: Tuple[str, ...] = t.strings("allowed_email_domains", (), check=email_domain)
    verified = t.boolean("require_email_verified", True)
    policy = None
    if rule is not None or groups or emails or domains:
        if auth == "none":
            t.problem("auth", '"none" cannot be combined with rule or allowed_* (nobody is known)')
        try:
            policy = Policy.parse(rule, allowed_groups=groups, allowed_emails=emails,
                                  allowed_email_domains=domains, require_email_verified=verified)
        except RuleSyntaxError as e:
            t.problem("rule", str(e))
    methods: Tuple[str, ...] = t.strings("methods", (), check=http_method)
    strip = t.boolean("strip_prefix", False)
    replace = t.string("replace_prefix", None, check=replacement_prefix)
    if strip and replace is not None:
        t.problem("replace_prefix", "cannot be combined with strip_prefix = true")
    # Route-level upstream settings override the [upstream] defaults.
    settings = upstream_settings(t, defaults)
    if path is None:
        return None
    return RouteConfig(
        index=index,
        path=path,
        host=host,
        upstream=upstream.rstrip("/"),
        auth=auth,
        strip_prefix=strip,
        replace_prefix=replace,
        pass_host_header=t.boolean("pass_host_header", False),
        allow_encoded_slashes=t.boolean("allow_encoded_slashes", False),
        settings=settings,
        rule=rule,
        allowed_groups=groups,
        allowed_emails=emails,
        allowed_email_domains=domains,
        require_email_verified=verified,
        policy_mode=t.choice("policy_mode", ("enforce", "audit"), "enforce"),
        methods=methods,
        cors_preflight=t.boolean("cors_preflight", False),
        session_expiry_headers=t.boolean("session_expiry_headers", False),
        case_insensitive=t.boolean("case_insensitive", case_insensitive),
        websocket_origins=t.strings("websocket_origins", (), check=origin_of)
        if t.has("websocket_origins") else None,
        policy=policy,
    )


def read_routes(top: Table, upstream: UpstreamSettings, case_insensitive: bool,
                prefix: str) -> Tuple[RouteConfig, ...]:
    """
    Every C{[[routes]]} entry that has a valid path, then what is wrong
    between them: a path routed twice, paths that differ only in case where
    one is matched in any case, a route inside the proxy's own C{prefix}.
    """
    routes = []
    for i, rt in enumerate(top.tables("routes")):
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
