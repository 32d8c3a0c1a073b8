"""
The configuration being written: its sections, the credentials it reads,
and the warnings about what could not be carried over exactly.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

from .documents import Document, printable, secret_urn
from .emit import Section, comment, render

PROG = "oidcproxy-import-traefik"


class Draft:
    """
    The output of one import. The parts of the importer fill its sections
    in turn; L{text} writes them out.

    @ivar scheme: C{https} unless no IngressRoute has TLS.
    @ivar public_url: the C{public_url} written (an origin).
    @ivar providers: the C{[providers.NAME]} tables, one per further middleware.
    @ivar proxy_paths: the paths oidcproxy answers itself (callback, login,
        logout) and the option each came from; no route may take them.
    @ivar default_callbacks: each further provider's default callback path
        and its name: no other provider's path may take it.
    """

    def __init__(self) -> None:
        self.warnings: List[str] = []
        self.credentials: Dict[str, str] = {}
        self.top = Section(None)
        self.oidc = Section("oidc")
        self.providers: List[Section] = []
        self.session = Section("session")
        self.state_cookie = Section("state_cookie")
        self.csrf = Section("csrf")
        self.redis = Section("redis")
        self.headers = Section("headers")
        self.routes: List[Section] = []
        self.scheme = "https"
        self.public_url = ""
        self.proxy_paths: Dict[str, str] = {}
        self.default_callbacks: Dict[str, str] = {}

    def warn(self, where: str, message: str) -> None:
        """Record, once, that something at C{where} was not carried over exactly."""
        line = printable(f"{where}: {message}")
        if line not in self.warnings:
            self.warnings.append(line)

    def secret(self, where: str, value: str, fallback_name: str) -> Dict[str, str]:
        """A credential reference for a secret option (a URN or a literal)."""
        ref = secret_urn(value)
        if ref is not None:
            name = f"{ref[0]}-{ref[1]}"
            self.credentials[name] = f"Kubernetes Secret {ref[0]}, key {ref[1]}"
            return {"credential": name}
        self.credentials[fallback_name] = f"the literal value of {where}"
        self.warn(where, f"a literal secret is not copied into the output; put it in credential "
                  f"{fallback_name!r} (systemd LoadCredential=) or a file")
        return {"credential": fallback_name}

    def pem_file(self, where: str, value: str, what: str) -> str:
        """A file path for a PEM option (inline PEM or a URN): the user writes it."""
        ref = secret_urn(value)
        if ref is not None:
            path = f"/etc/oidcproxy/{ref[0]}-{ref[1]}.pem"
            source = f"Kubernetes Secret {ref[0]}, key {ref[1]}"
        else:
            path = f"/etc/oidcproxy/{what}.pem"
            source = "the PEM text of this option"
        self.warn(where, f"oidcproxy reads {what} from a file: write {source} to {path}")
        return path

    def text(self, middlewares: Sequence[Document]) -> str:
        """
        The TOML: how it was made (from which middlewares, the first one
        C{[oidc]}) and which credentials it reads, then the sections.
        """
        # The middlewares' names and files are the input's: comment() keeps
        # them on their line whatever characters they hold.
        first, *others = middlewares
        out = [
            comment("oidcproxy configuration imported from Traefik Hub's OIDC middleware "
                    f"{first.namespace}/{first.name}"),
            comment(f"({first.source}) by {PROG}. Check every FIXME, then run"),
            "#   twistd --pidfile= oidcproxy --config THIS_FILE --check",
        ]
        if others:
            out.append("# The further middlewares, each a [providers.NAME] table:")
            out.extend(comment(f"  {mw.namespace}/{mw.name} ({mw.source})") for mw in others)
        if self.credentials:
            out.append("#")
            out.append("# Secrets are systemd credentials, read from $CREDENTIALS_DIRECTORY/NAME.")
            out.append("# Supply each with LoadCredential=NAME:/path/to/file in the service unit, or")
            out.append('# replace { credential = "NAME" } by { file = "/path/to/file" }:')
            width = max(len(n) for n in self.credentials)
            for name, source in sorted(self.credentials.items()):
                out.append(comment(f"  {name.ljust(width)}  {source}"))
        sections = [self.top, self.oidc, *self.providers, self.session, self.state_cookie,
                    self.redis]
        if self.csrf.entries:
            sections.append(self.csrf)
        sections.append(self.headers)
        sections.extend(self.routes)
        return "\n".join(out + render(sections)) + "\n"


def duration(seconds: int) -> str:
    """Whole seconds as an oidcproxy duration, in the largest unit that divides them."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size and not (unit == "d" and seconds < 2 * 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
