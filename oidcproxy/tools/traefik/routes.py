"""
The IngressRoutes that use the middlewares, as C{[[routes]]}: their match
rules translated (L{rules}), their services as upstream URLs, each route
wired to the provider of the middleware it uses.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import attr

from ...config import route_prefix
from ...config.policy import Policy, RuleSyntaxError
from .documents import INGRESS_KINDS, Document, dig, mapping, sequence
from .draft import Draft
from .emit import Section
from .rules import Match, RuleError, alternatives, conjunction, parse_rule

Ingress = List[Tuple[Document, List[Tuple[int, List[Match]]]]]
"""The IngressRoutes that use the middlewares, each with its routes' matches (index, matches)."""


@attr.s(frozen=True, auto_attribs=True)
class Guard:
    """An OIDC middleware being imported, as its routes see it."""

    mw: Document
    provider: Optional[str]
    """The C{[providers.NAME]} its routes name; None for C{[oidc]}."""
    rule: Optional[str]
    """Its claims rule, put on each of its routes."""

_SEEN = Dict[Tuple[Optional[str], str], str]


def uses(ir: Document, ref: Any, mw: Document) -> bool:
    """Whether a middleware reference of IngressRoute C{ir} names C{mw}."""
    if not isinstance(ref, dict):
        return False
    name = ref.get("name")
    namespace = ref.get("namespace") or ir.namespace
    return name == mw.name and namespace == mw.namespace


def route_refs(ir: Document) -> List[Any]:
    """Every middleware reference of IngressRoute C{ir}'s routes, in order."""
    routes = dig(ir.data, "spec", "routes")
    return [ref for r in sequence(routes) if isinstance(r, dict)
            for ref in sequence(r.get("middlewares"))]


def first_used(documents: Sequence[Document], middlewares: Sequence[Document]) -> List[Document]:
    """C{middlewares} in the order the IngressRoutes first use them; those never used last."""
    order: List[Document] = []
    for ir in documents:
        if ir.kind in INGRESS_KINDS:
            for ref in route_refs(ir):
                order.extend(mw for mw in middlewares if mw not in order and uses(ir, ref, mw))
    return order + [mw for mw in middlewares if mw not in order]


def uses_tls(ir: Document) -> bool:
    spec = ir.data.get("spec")
    if not isinstance(spec, dict):
        return False
    points = spec.get("entryPoints") or []
    # tls: {} turns TLS on too (with the default certificate).
    return spec.get("tls") is not None or (isinstance(points, list) and "websecure" in points)


class RouteImport:
    """
    Writes the C{[[routes]]}.

    @param documents: every object of the input (IngressRoutes, Services,
        other middlewares).
    @param upstreams: C{--upstream}: upstream URLs by service (C{NAME} or
        C{NAMESPACE/NAME}).
    """

    def __init__(self, draft: Draft, documents: Sequence[Document],
                 upstreams: Mapping[str, str]) -> None:
        self.draft = draft
        self.warn = draft.warn
        self.documents = list(documents)
        self.upstreams = dict(upstreams)

    def oidc_middleware(self, ir: Document, ref: Any) -> bool:
        """Whether a route's middleware reference names some OIDC middleware of the input."""
        if not isinstance(ref, dict):
            return False
        namespace = ref.get("namespace") or ir.namespace
        return any(d.name == ref.get("name") and d.namespace == namespace and d.oidc_options() is not None
                   for d in self.documents)

    def ingress_routes(self, middlewares: Sequence[Document]) -> Ingress:
        """The IngressRoutes using any of C{middlewares}, each with its routes' matches (index, matches)."""
        out = []
        for ir in self.documents:
            if ir.kind not in INGRESS_KINDS:
                continue
            routes = dig(ir.data, "spec", "routes")
            if not any(uses(ir, ref, mw) for ref in route_refs(ir) for mw in middlewares):
                continue
            parsed = []
            for i, route in enumerate(routes):
                where = f"IngressRoute {ir.namespace}/{ir.name}: spec.routes[{i}]"
                if not isinstance(route, dict):
                    self.warn(where, "not a mapping; skipped")
                    continue
                parsed.append((i, self.matches(where, route)))
            out.append((ir, parsed))
        for mw in middlewares:
            if not any(uses(ir, ref, mw) for ir, _ in out for ref in route_refs(ir)):
                self.warn(f"Middleware {mw.namespace}/{mw.name}", "no IngressRoute in the input uses "
                          "it: add [[routes]] to the output")
        return out

    def matches(self, where: str, route: Dict[str, Any]) -> List[Match]:
        kind = route.get("kind", "Rule")
        if kind != "Rule":
            self.warn(where, f"kind {kind!r} is not a router rule; skipped")
            return []
        rule = route.get("match")
        if not isinstance(rule, str) or not rule.strip():
            self.warn(f"{where}.match", "missing; skipped")
            return []
        try:
            conjunctions = alternatives(parse_rule(rule))
        except RuleError as e:
            self.warn(f"{where}.match", f"cannot read {rule!r}: {e}; skipped")
            return []
        out = []
        for literals in conjunctions:
            out.extend(conjunction(literals, lambda m: self.warn(f"{where}.match", m)))
        return out

    def emit_routes(self, guards: Sequence[Guard], ingress: Ingress) -> None:
        """
        A C{[[routes]]} entry per match of each IngressRoute route; a route
        using one of C{guards} names its provider and carries its rule.
        """
        checked = [(g, self.rule_ok(g.mw, g.rule)) for g in guards]
        seen: _SEEN = {}
        for ir, routes in ingress:
            spec = mapping(ir.data.get("spec"))
            base = f"IngressRoute {ir.namespace}/{ir.name}"
            points = spec.get("entryPoints")
            if points:
                shown = ", ".join(map(str, points)) if isinstance(points, list) else str(points)
                self.warn(f"{base}: spec.entryPoints", f"{shown}: oidcproxy listens on `listen` "
                          "(default tcp:8080:interface=127.0.0.1); set it, and an ssl: endpoint for TLS")
            if spec.get("tls") is not None:
                self.warn(f"{base}: spec.tls", "TLS is not carried over: terminate it in front of "
                          "oidcproxy or use an ssl: endpoint in `listen`")
            for i, matches in routes:
                route = spec["routes"][i]
                where = f"{base}: spec.routes[{i}]"
                refs = sequence(route.get("middlewares"))
                used = [(g, ok) for g, ok in checked if any(uses(ir, m, g.mw) for m in refs)]
                if not self.other_middlewares(ir, [g.mw for g in guards], where, refs):
                    matches = []
                if len(used) > 1:
                    names = ", ".join(f"{g.mw.namespace}/{g.mw.name}" for g, _ in used)
                    # Chained, Traefik's middlewares all must pass: a login at each.
                    # providers = [...] takes a session of any one, so it would let in
                    # whom Traefik kept out.
                    self.warn(where, f"uses several OIDC middlewares ({names}): Traefik asks for a "
                              "login at each, an oidcproxy route for one (providers = [...] takes "
                              "any one of them, which lets in more); skipped")
                    matches = []
                for key in route:
                    if key not in ("match", "kind", "services", "middlewares", "syntax"):
                        self.warn(f"{where}.{key}", "not carried over (oidcproxy picks the longest "
                                  "matching path prefix)" if key == "priority" else "not carried over")
                if not matches:
                    continue
                upstream, fixme = self.upstream(ir, where, route.get("services"))
                guard, rule_ok = used[0] if used else (None, True)
                for m in matches:
                    self.route(where, route, m, upstream, fixme, guard, rule_ok, seen)

    def rule_ok(self, mw: Document, rule: Optional[str]) -> bool:
        """Whether oidcproxy reads the middleware's claims rule (it is carried over either way)."""
        if rule is None:
            return True
        try:
            Policy.parse(rule)
        except RuleSyntaxError as e:
            self.warn(f"Middleware {mw.namespace}/{mw.name}: spec.plugin.oidc.claims",
                      f"oidcproxy's rule language cannot read it ({e.message} at position "
                      f"{e.position}); carried over as is, so the configuration is refused "
                      "until it is fixed")
            return False
        return True

    def other_middlewares(self, ir: Document, middlewares: Sequence[Document], where: str,
                          refs: List[Any]) -> bool:
        """
        Warn about a route's middlewares other than C{middlewares}; False
        when one of them is another OIDC middleware (one --middleware left
        out: the route is then left out too).
        """
        keep = True
        for ref in refs:
            if any(uses(ir, ref, mw) for mw in middlewares):
                continue
            name = ref.get("name") if isinstance(ref, dict) else ref
            if self.oidc_middleware(ir, ref):
                self.warn(where, f"uses another OIDC middleware ({name}), not imported with "
                          "--middleware; skipped (import without --middleware to take every one)")
                keep = False
            else:
                self.warn(f"{where}.middlewares", f"middleware {name!r} is not carried over")
        return keep

    def route(self, where: str, route: Dict[str, Any], m: Match, upstream: str,
              fixme: Optional[str], guard: Optional[Guard], rule_ok: bool, seen: _SEEN) -> None:
        shown = f"{where} ({route.get('match')})"
        try:
            path = route_prefix(m.path)
        except ValueError as e:
            self.warn(shown, f"path {m.path!r}: {e}; no route for it")
            return
        if path in self.draft.proxy_paths:
            self.warn(shown, f"{path} is answered by oidcproxy itself ({self.draft.proxy_paths[path]}); "
                      "no route for it")
            return
        if path == "/oidc" or path.startswith("/oidc/"):
            self.warn(shown, f"{path} is inside oidcproxy's endpoints_prefix \"/oidc\"; no route for it")
            return
        key = (m.host, path)
        if key in seen:
            if seen[key] != where:
                self.warn(shown, f"{m.host or 'any host'} {path} is already routed by {seen[key]}; "
                          "the first one wins")
            return
        seen[key] = where
        if m.exact:
            self.warn(shown, f"Path(`{m.path}`) is an exact match; oidcproxy routes are prefixes, so "
                      f"{path.rstrip('/')}/... is routed too")
        section = Section("[[routes]]")
        section.notes.append(f"{where}: {route.get('match')}")
        section.set("path", path)
        if m.host:
            section.set("host", m.host)
        section.set("upstream", upstream, fixme)
        if guard is not None:
            section.set("auth", "session")
            if guard.provider is not None:
                section.set("provider", guard.provider,
                            f"Middleware {guard.mw.namespace}/{guard.mw.name}")
            if guard.rule is not None:
                section.set("rule", guard.rule,
                            None if rule_ok else "FIXME: not in oidcproxy's rule language")
        else:
            section.set("auth", "none", "no OIDC middleware on this route in Traefik")
        if m.methods:
            section.set("methods", list(m.methods))
        self.draft.routes.append(section)

    def upstream(self, ir: Document, where: str, services: Any) -> Tuple[str, Optional[str]]:
        """The upstream URL of a route's services, and a FIXME comment when it is a guess."""
        if not isinstance(services, list) or not services or not isinstance(services[0], dict):
            self.warn(f"{where}.services", "no service; the upstream is a placeholder")
            return "http://127.0.0.1:8000", "FIXME: address (no service in Traefik)"
        if len(services) > 1:
            self.warn(f"{where}.services", "oidcproxy sends a route to one upstream; only the "
                      "first service is used")
        svc = services[0]
        name = str(svc.get("name", ""))
        namespace = str(svc.get("namespace") or ir.namespace)
        for key in (f"{namespace}/{name}", name):
            if key in self.upstreams:
                return self.upstreams[key].rstrip("/"), "from --upstream"
        if svc.get("kind", "Service") != "Service":
            self.warn(f"{where}.services[0]", f"a {svc.get('kind')} cannot be carried over; the "
                      "upstream is a placeholder")
            return "http://127.0.0.1:8000", f"FIXME: address ({svc.get('kind')} {name})"
        for key in svc:
            if key not in ("name", "namespace", "port", "scheme", "kind", "weight"):
                self.warn(f"{where}.services[0].{key}", "not carried over")
        doc = next((d for d in self.documents if d.kind == "Service" and d.name == name
                    and d.namespace == namespace), None)
        port = svc.get("port")
        spec = mapping(doc.data.get("spec")) if doc is not None else {}
        ports = [p for p in sequence(spec.get("ports")) if isinstance(p, dict)]
        if isinstance(port, str) and not port.isdigit():
            named = [p.get("port") for p in ports if p.get("name") == port]
            port = named[0] if named else None
            if port is None:
                self.warn(f"{where}.services[0].port", f"named port {svc.get('port')!r} is not in "
                          f"Service {namespace}/{name}")
        elif port is None and len(ports) == 1:
            port = ports[0].get("port")
        scheme = svc.get("scheme")
        if scheme not in (None, "http", "https"):
            self.warn(f"{where}.services[0].scheme", f"{scheme!r}: oidcproxy speaks http or https "
                      "(HTTP/1.1) to upstreams; http is used")
            scheme = None
        if scheme is None:
            scheme = "https" if str(port) == "443" else "http"
        suffix = f":{port}" if port else ""
        external = spec.get("externalName") if spec.get("type") == "ExternalName" else None
        ips = spec.get("externalIPs")
        if isinstance(external, str) and external:
            return f"{scheme}://{external}{suffix}", None
        if isinstance(ips, list) and ips and isinstance(ips[0], str):
            host = f"[{ips[0]}]" if ":" in ips[0] else ips[0]
            return f"{scheme}://{host}{suffix}", None
        if doc is None:
            why = f"Service {namespace}/{name} is not in the input"
        else:
            why = f"Service {namespace}/{name} has no address outside the cluster"
        self.warn(f"{where}.services[0]", f"{why}; its cluster DNS name is a placeholder: put the "
                  f"upstream's address in the output (or pass --upstream {name}=URL)")
        return f"{scheme}://{name}.{namespace}.svc.cluster.local{suffix}", "FIXME: address"
