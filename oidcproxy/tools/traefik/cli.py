"""
The console script C{oidcproxy-import-traefik FILE...}: the TOML on stdout,
what was not carried over and the credentials to supply on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, Sequence

from ...config import http_url
from .documents import Document, TraefikImportError, load_documents
from .draft import PROG
from .importer import convert


def _options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print an oidcproxy TOML configuration equivalent to Traefik Hub OIDC "
                    "middlewares and the IngressRoutes that use them: each middleware a provider, "
                    "each route wired to the provider of its middleware. What cannot be carried "
                    "over is listed on stderr.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="Kubernetes YAML (several documents per file allowed; - for stdin)")
    parser.add_argument("--middleware", metavar="NAME",
                        help="import only this OIDC Middleware (NAME or NAMESPACE/NAME); default: "
                             "every one")
    parser.add_argument("--default-middleware", metavar="NAME",
                        help="the OIDC Middleware that becomes [oidc] (NAME or NAMESPACE/NAME); "
                             "default: the first one an IngressRoute uses")
    parser.add_argument("--public-url", metavar="URL",
                        help="the external URL users reach oidcproxy at")
    parser.add_argument("--upstream", metavar="SERVICE=URL", action="append", default=[],
                        help="the address of a Kubernetes service (NAME or NAMESPACE/NAME), "
                             "repeatable")
    return parser


def _read(path: str, stdin: Any) -> str:
    if path == "-":
        return str(stdin.read())
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise TraefikImportError(f"{path}: cannot read the file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise TraefikImportError(f"{path}: not UTF-8 text") from None


def main(argv: Optional[Sequence[str]] = None, stdout: Any = None, stderr: Any = None,
         stdin: Any = None) -> int:
    """
    The C{oidcproxy-import-traefik} console script: the TOML on stdout and
    exit status 0, with what was not carried over on stderr; 1 with a
    message for input that cannot be imported.
    """
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    stdin = stdin if stdin is not None else sys.stdin
    args = _options().parse_args(argv)
    try:
        upstreams = {}
        for item in args.upstream:
            service, sep, url = item.partition("=")
            try:
                if not sep or not service:
                    raise ValueError("expected SERVICE=URL")
                upstreams[service] = http_url(url)
            except ValueError as e:
                raise TraefikImportError(f"--upstream {item!r}: {e}") from None
        if args.public_url is not None:
            try:
                http_url(args.public_url)
            except ValueError as e:
                raise TraefikImportError(f"--public-url: {e}") from None
        documents: List[Document] = []
        for path in args.files:
            documents.extend(load_documents(_read(path, stdin), "<stdin>" if path == "-" else path))
        result = convert(documents, args.middleware, args.public_url, upstreams,
                         args.default_middleware)
    except TraefikImportError as e:
        stderr.write(f"{PROG}: error: {e}\n")
        return 1
    stdout.write(result.toml)
    if result.warnings:
        stderr.write(f"{PROG}: {len(result.warnings)} thing(s) not carried over exactly:\n")
        for line in result.warnings:
            stderr.write(f"  - {line}\n")
    if result.credentials:
        stderr.write(f"{PROG}: supply these credentials (systemd LoadCredential= or a file):\n")
        for name, source in result.credentials:
            stderr.write(f"  - {name}: {source}\n")
    return 0
