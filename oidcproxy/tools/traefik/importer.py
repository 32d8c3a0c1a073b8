"""
The conversion: the OIDC middlewares chosen, each a provider, then each part
of the importer in turn fills the draft configuration.
"""

from __future__ import annotations

import re
from typing import List, Mapping, Optional, Sequence, Set, Tuple

import attr

from ...config import DEFAULT_PROVIDER_NAME
from .documents import Document, Options, TraefikImportError, yaml_type
from .draft import Draft
from .oidc import OIDCImport
from .routes import Guard, RouteImport, first_used, uses_tls
from .session import SessionImport

PROVIDER_NAME_LENGTH = 60
"""The longest name made from a middleware's (a provider name has at most 64 characters)."""


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
            upstreams: Optional[Mapping[str, str]] = None,
            default_middleware: Optional[str] = None) -> ImportResult:
    """
    Turn the Traefik Hub OIDC middlewares and the IngressRoutes using them
    into an oidcproxy configuration: the first middleware the IngressRoutes
    use (or C{default_middleware}) becomes C{[oidc]}, each other one a
    C{[providers.NAME]} table, and each route names the provider of the
    middleware it uses.

    @param documents: every object of the input (L{load_documents}).
    @param middleware: import only this middleware (C{NAME} or C{NAMESPACE/NAME}).
    @param public_url: the external URL users reach oidcproxy at (otherwise
        worked out from C{redirectUrl} or the routes' C{Host} rule).
    @param upstreams: upstream URLs by Kubernetes service (C{NAME} or
        C{NAMESPACE/NAME}), for services whose address is not in the input.
    @param default_middleware: the middleware that becomes C{[oidc]}.
    @raise TraefikImportError: no OIDC middleware, or a chosen one does not exist.
    """
    documents = list(documents)
    draft = Draft()
    found = find_middlewares(documents, middleware)
    middlewares = first_used(documents, found)
    if default_middleware is not None:
        [first] = find_middlewares(found, default_middleware, "--default-middleware")
        middlewares = [first] + [mw for mw in middlewares if mw is not first]
    names = provider_names(middlewares[1:])
    imports = [(mw, options(mw, draft), OIDCImport(draft, documents, public_url, name))
               for mw, name in zip(middlewares, [None, *names])]
    routes = RouteImport(draft, documents, upstreams or {})
    ingress = routes.ingress_routes(middlewares)
    draft.scheme = "https" if any(uses_tls(d) for d, _ in ingress) or not ingress else "http"
    hosts = sorted({m.host for _, matches in ingress for _, ms in matches for m in ms if m.host})
    (first_mw, first_opts, first_oidc), *further = imports
    first_oidc.public(first_opts, hosts)
    for _, opts, oidc in further:
        oidc.further_redirect(opts)
    guards = [Guard(mw, oidc.name, oidc.oidc_options(mw, opts)) for mw, opts, oidc in imports]
    session = SessionImport(draft)
    session.session_options(first_opts)
    session.state_cookie_options(first_opts)
    session.csrf_options(first_opts)
    session.headers_options(first_opts)
    for _, opts, _ in further:
        session.shared_options(opts, first_opts, f"Middleware {first_mw.namespace}/{first_mw.name}")
    routes.emit_routes(guards, ingress)
    for _, opts, _ in imports:
        opts.warn_unused()
    return ImportResult(
        toml=draft.text(middlewares),
        warnings=tuple(draft.warnings),
        credentials=tuple(sorted(draft.credentials.items())),
    )


def options(mw: Document, draft: Draft) -> Options:
    """The middleware's C{spec.plugin.oidc}, read through L{Options}."""
    raw = mw.oidc_options()
    if not isinstance(raw, dict):
        raise TraefikImportError(f"{mw.label}: spec.plugin.oidc is {yaml_type(raw)}, "
                                 "not a mapping")
    return Options(raw, f"Middleware {mw.namespace}/{mw.name}: spec.plugin.oidc", draft.warn)


def find_middlewares(documents: Sequence[Document], wanted: Optional[str],
                     option: str = "--middleware") -> List[Document]:
    """
    The OIDC middlewares to import: every one, or the one C{wanted}
    (C{NAME} or C{NAMESPACE/NAME}, given with C{option}).

    @raise TraefikImportError: none, or no such one.
    """
    found = [d for d in documents if d.oidc_options() is not None]
    if not found:
        raise TraefikImportError("no Middleware with spec.plugin.oidc found in the input")
    if wanted is None:
        return found
    chosen = [d for d in found if wanted in (d.name, f"{d.namespace}/{d.name}")]
    if not chosen:
        names = ", ".join(f"{d.namespace}/{d.name}" for d in found)
        raise TraefikImportError(f"{option}: no OIDC Middleware named {wanted!r}; found: {names}")
    if len(chosen) > 1:
        names = ", ".join(f"{d.namespace}/{d.name}" for d in chosen)
        raise TraefikImportError(f"{option}: {wanted!r} names several OIDC Middlewares ({names}); "
                                 "give NAMESPACE/NAME")
    return chosen


def provider_names(middlewares: Sequence[Document]) -> List[str]:
    """
    A provider name for each middleware: its name with every character
    but letters, digits, C{-} and C{_} made C{-} (and a final C{_} before
    digits too), shortened, and made unique with a C{-2}, C{-3}... suffix;
    never C{oidc}, the name C{providers} lists give C{[oidc]}.
    """
    taken: Set[str] = {DEFAULT_PROVIDER_NAME}
    out = []
    for mw in middlewares:
        base = re.sub(r"[^A-Za-z0-9_-]", "-", mw.name)[:PROVIDER_NAME_LENGTH] or "provider"
        # A name ending in _ and digits would name a chunk of another session cookie.
        base = re.sub(r"_([0-9]+)$", r"-\1", base)
        name, number = base, 1
        while name in taken:
            number += 1
            name = f"{base}-{number}"
        taken.add(name)
        out.append(name)
    return out
