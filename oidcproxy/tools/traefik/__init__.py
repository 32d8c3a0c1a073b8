"""
Bring a Traefik Hub OIDC configuration over: C{oidcproxy-import-traefik FILE...}.

The input is Kubernetes YAML: the C{Middleware}s with C{spec.plugin.oidc}
(each becomes a provider: the first used C{[oidc]}, the others
C{[providers.NAME]}), the C{IngressRoute}s that use them, the C{Service}s
they name (and, optionally, the C{Secret} holding a client id). The output is an oidcproxy TOML
configuration on stdout; everything that could not be carried over exactly is
listed on stderr, never dropped silently.

The work is done by pure functions: L{load_documents} (YAML text to
L{Document}s, with PyYAML's C{safe_load_all} only) and L{convert} (documents
to an L{ImportResult}: the TOML text and the warnings). Nothing outside
this tool imports it, so the package and the twistd plugin never load PyYAML.

Traefik Hub's option names are matched case-insensitively (its configuration
is decoded like Go's C{encoding/json} does), so C{clientId} and C{clientID}
are the same option.

The modules: L{documents} (reading the input), L{importer} (L{convert}),
which runs L{oidc} (C{public_url}, C{[oidc]}, C{[providers.NAME]}), L{session} (C{[session]},
C{[redis]}, C{[state_cookie]}, C{[csrf]}, C{[headers]}) and L{routes}
(C{[[routes]]}, with L{rules} translating router rules) over a L{draft}
configuration, which L{emit} writes with tomli-w; L{cli} is the console
script.
"""

from __future__ import annotations

from .cli import main
from .documents import Document, TraefikImportError, load_documents
from .emit import toml_key, toml_string, toml_value
from .importer import ImportResult, convert
from .rules import parse_rule

__all__ = [
    "Document",
    "ImportResult",
    "TraefikImportError",
    "convert",
    "load_documents",
    "main",
    "parse_rule",
    "toml_key",
    "toml_string",
    "toml_value",
]
