"""
The conversion: the OIDC middleware chosen, then each part of the importer
in turn fills the draft configuration.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import attr

from .documents import Document, Options, TraefikImportError, yaml_type
from .draft import Draft
from .oidc import OIDCImport
from .routes import RouteImport, uses_tls
from .session import SessionImport


@attr.s(frozen=True, auto_attribs=True)
class ImportResult:
    toml: str
    """The oidcproxy configuration."""
    warnings: Tuple[str, ...]
    """What was not carried over exactly, one line each; never a secret value."""
    credentials: Tuple[Tuple[str, str], ...]
    """Credential names the configuration reads, and where each value comes from."""


def convert(documents: Sequence[Document], middleware: Optional[str] = None,
            public_url: Optional[str] = None,
            upstreams: Optional[Mapping[str, str]] = None) -> ImportResult:
    """
    Turn a Traefik Hub OIDC middleware and the IngressRoutes using it into
    an oidcproxy configuration.

    @param documents: every object of the input (L{load_documents}).
    @param middleware: the middleware's C{NAME} or C{NAMESPACE/NAME}; needed
        when the input has several OIDC middlewares.
    @param public_url: the external URL users reach oidcproxy at (otherwise
        worked out from C{redirectUrl} or the routes' C{Host} rule).
    @param upstreams: upstream URLs by Kubernetes service (C{NAME} or
        C{NAMESPACE/NAME}), for services whose address is not in the input.
    @raise TraefikImportError: no OIDC middleware, several and none chosen,
        or the chosen one does not exist.
    """
    documents = list(documents)
    draft = Draft()
    mw = find_middleware(documents, middleware)
    raw = mw.oidc_options()
    if not isinstance(raw, dict):
        raise TraefikImportError(f"{mw.label}: spec.plugin.oidc is {yaml_type(raw)}, "
                                 "not a mapping")
    opts = Options(raw, f"Middleware {mw.namespace}/{mw.name}: spec.plugin.oidc", draft.warn)
    routes = RouteImport(draft, documents, upstreams or {})
    ingress = routes.ingress_routes(mw)
    draft.scheme = "https" if any(uses_tls(d) for d, _ in ingress) or not ingress else "http"
    hosts = sorted({m.host for _, matches in ingress for _, ms in matches for m in ms if m.host})
    oidc = OIDCImport(draft, documents, public_url)
    oidc.public(opts, hosts)
    rule = oidc.oidc_options(mw, opts)
    session = SessionImport(draft)
    session.session_options(opts)
    session.state_cookie_options(opts)
    session.csrf_options(opts)
    session.headers_options(opts)
    routes.emit_routes(mw, ingress, rule)
    opts.warn_unused()
    return ImportResult(
        toml=draft.text(mw),
        warnings=tuple(draft.warnings),
        credentials=tuple(sorted(draft.credentials.items())),
    )


def find_middleware(documents: List[Document], wanted: Optional[str]) -> Document:
    """
    The OIDC middleware to import: the only one, or C{wanted} (C{NAME} or
    C{NAMESPACE/NAME}).

    @raise TraefikImportError: none, several and none wanted, or no such one.
    """
    found = [d for d in documents if d.oidc_options() is not None]
    if not found:
        raise TraefikImportError("no Middleware with spec.plugin.oidc found in the input")
    if wanted is not None:
        chosen = [d for d in found if wanted in (d.name, f"{d.namespace}/{d.name}")]
        if not chosen:
            names = ", ".join(f"{d.namespace}/{d.name}" for d in found)
            raise TraefikImportError(f"no OIDC Middleware named {wanted!r}; found: {names}")
        found = chosen
    if len(found) > 1:
        names = ", ".join(f"{d.namespace}/{d.name}" for d in found)
        raise TraefikImportError(f"several OIDC Middlewares ({names}); choose one with "
                                 "--middleware NAME (or NAMESPACE/NAME)")
    return found[0]
