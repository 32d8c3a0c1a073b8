"""
Bring a Traefik Hub OIDC configuration over: C{oidcproxy-import-traefik FILE...}.

The input is Kubernetes YAML: a C{Middleware} with C{spec.plugin.oidc}, the
C{IngressRoute}s that use it, the C{Service}s they name (and, optionally, the
C{Secret} holding the client id). The output is an oidcproxy TOML
configuration on stdout; everything that could not be carried over exactly is
listed on stderr, never dropped silently.

The work is done by pure functions: L{load_documents} (YAML text to
L{Document}s, with PyYAML's C{safe_load_all} only) and L{convert} (documents
to an L{ImportResult}: the TOML text and the warnings). The TOML is written by
the small emitter at the end of this module: there is no TOML writer among our
dependencies. PyYAML is imported here only, so the package and the twistd
plugin never load it.

Traefik Hub's option names are matched case-insensitively (its configuration
is decoded like Go's C{encoding/json} does), so C{clientId} and C{clientID}
are the same option.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

import attr

from ..config import HTTP_METHODS, RESERVED_AUTH_PARAMS
from ..config import cookie_name as _cookie_name
from ..config import http_url as _http_url
from ..config import route_host as _route_host
from ..config import route_prefix as _route_prefix

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

PROG = "oidcproxy-import-traefik"

SECRET_URN = "urn:k8s:secret:"

SESSION_KEY_CREDENTIAL = "session-key"
"""The credential holding the new session secret (Traefik Hub keeps its own)."""

PLACEHOLDER_HOST = "oidcproxy.invalid"
"""Host of a public_url that could not be worked out (RFC 2606: never resolves)."""

MAX_RETRIES = 10
"""The most retries C{oidc.max_retries} allows."""

SLIDING_LIFETIME = 7 * 86400
"""The absolute lifetime given to a sliding session (Traefik Hub's have none)."""

CSRF_COOKIE = "traefikee-csrf-token"
CSRF_HEADER = "TraefikHub-Csrf-Token"

_MAX_ALTERNATIVES = 32
"""Most routes one IngressRoute C{match} may expand to (its C{||} alternatives)."""

_MIDDLEWARE_KINDS = ("Middleware",)
_INGRESS_KINDS = ("IngressRoute",)



def _comment_safe(text: str) -> str:
    """C{text} fit for a TOML comment: one line, printable, not endless."""
    return repr("".join(c if c.isprintable() else "?" for c in text[:200]))

class TraefikImportError(Exception):
    """
    The input cannot be imported at all (unreadable, invalid YAML, no or
    several OIDC middlewares): L{main} exits 1 with this message.
    """


@attr.s(frozen=True, auto_attribs=True)
class Document:
    """One Kubernetes object from the input."""

    source: str
    """Where it came from: C{FILE} or C{FILE#N} (the N-th document, from 1)."""
    data: Dict[str, Any]

    @property
    def kind(self) -> str:
        kind = self.data.get("kind")
        return kind if isinstance(kind, str) else ""

    @property
    def name(self) -> str:
        meta = self.data.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        return name if isinstance(name, str) else ""

    @property
    def namespace(self) -> str:
        meta = self.data.get("metadata")
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        return ns if isinstance(ns, str) and ns else "default"

    @property
    def label(self) -> str:
        """C{Kind namespace/name (source)}, for messages."""
        return f"{self.kind} {self.namespace}/{self.name} ({self.source})"


@attr.s(frozen=True, auto_attribs=True)
class ImportResult:
    toml: str
    """The oidcproxy configuration."""
    warnings: Tuple[str, ...]
    """What was not carried over exactly, one line each; never a secret value."""
    credentials: Tuple[Tuple[str, str], ...]
    """Credential names the configuration reads, and where each value comes from."""


# -- reading ---------------------------------------------------------------------


def load_documents(text: str, source: str) -> List[Document]:
    """
    The Kubernetes objects of a (multi-document) YAML text. Empty documents
    are skipped; a C{kind: List} contributes its C{items}.

    @raise TraefikImportError: the text is not valid YAML, or a document is
        not a mapping.
    """
    import yaml

    try:
        parsed = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise TraefikImportError(f"{source}: invalid YAML: {_one_line(str(e))}") from None
    out: List[Document] = []
    for number, data in enumerate(parsed, 1):
        where = source if len(parsed) == 1 else f"{source}#{number}"
        if data is None:
            continue
        if not isinstance(data, dict):
            raise TraefikImportError(f"{where}: expected a Kubernetes object (a mapping), "
                                     f"got {_yaml_type(data)}")
        if data.get("kind") == "List" and isinstance(data.get("items"), list):
            for i, item in enumerate(data["items"]):
                if isinstance(item, dict):
                    out.append(Document(f"{where} items[{i}]", item))
            continue
        out.append(Document(where, data))
    return out


def _yaml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _printable(text: str) -> str:
    """C{text} with each non-printable character (a newline...) escaped: one line, as written."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Options:
    """
    A mapping of Traefik options: case-insensitive lookups that remember
    which keys were read, so the rest can be reported as unknown.
    """

    def __init__(self, data: Mapping[Any, Any], where: str) -> None:
        self.data = data
        self.where = where
        self._keys = {str(k).lower(): k for k in data}
        self._used: Set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.where}.{name}"

    def get(self, name: str) -> Any:
        """The value of C{name} (None when absent or null)."""
        self._used.add(name.lower())
        key = self._keys.get(name.lower())
        return None if key is None else self.data[key]

    def unused(self) -> List[str]:
        return [str(k) for k in self.data if str(k).lower() not in self._used]


# -- Traefik router rules ----------------------------------------------------------


class _RuleError(ValueError):
    pass


_RULE_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||[!(),])|(?P<bt>`[^`]*`)|(?P<dq>\"(?:[^\"\\]|\\.)*\")|(?P<id>[A-Za-z]\w*))"
)

_Node = Tuple[Any, ...]
_Literal = Tuple[bool, str, Tuple[str, ...]]
"""A matcher in a conjunction: negated, name, arguments."""


def _tokens(rule: str) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    pos = 0
    while True:
        while pos < len(rule) and rule[pos].isspace():
            pos += 1
        if pos == len(rule):
            return out
        m = _RULE_TOKEN.match(rule, pos)
        if m is None or m.end() == pos:
            raise _RuleError(f"unexpected {rule[pos]!r} at position {pos}")
        pos = m.end()
        if m.group("op"):
            out.append(("op", m.group("op")))
        elif m.group("bt"):
            out.append(("str", m.group("bt")[1:-1]))
        elif m.group("dq"):
            out.append(("str", re.sub(r"\\(.)", r"\1", m.group("dq")[1:-1])))
        else:
            out.append(("id", m.group("id")))


def parse_rule(rule: str) -> _Node:
    """
    Parse a Traefik router rule (v2 or v3 syntax) into a tree of
    C{("call", name, args)}, C{("not", x)}, C{("and", a, b)}, C{("or", a, b)}.

    @raise ValueError: not a rule.
    """
    tokens = _tokens(rule)
    pos = 0

    def peek() -> Tuple[str, str]:
        return tokens[pos] if pos < len(tokens) else ("end", "")

    def take(kind: str, text: Optional[str] = None) -> str:
        nonlocal pos
        got = peek()
        if got[0] != kind or (text is not None and got[1] != text):
            want = text or {"str": "a quoted string", "id": "a matcher name"}.get(kind, kind)
            raise _RuleError(f"expected {want}, got {got[1] or 'the end'}")
        pos += 1
        return got[1]

    def either() -> _Node:
        node = both()
        while peek() == ("op", "||"):
            take("op", "||")
            node = ("or", node, both())
        return node

    def both() -> _Node:
        node = unary()
        while peek() == ("op", "&&"):
            take("op", "&&")
            node = ("and", node, unary())
        return node

    def unary() -> _Node:
        if peek() == ("op", "!"):
            take("op", "!")
            return ("not", unary())
        if peek() == ("op", "("):
            take("op", "(")
            node = either()
            take("op", ")")
            return node
        name = take("id")
        take("op", "(")
        args = []
        if peek() != ("op", ")"):
            args.append(take("str"))
            while peek() == ("op", ","):
                take("op", ",")
                args.append(take("str"))
        take("op", ")")
        return ("call", name, tuple(args))

    node = either()
    if pos != len(tokens):
        raise _RuleError(f"unexpected {peek()[1]!r}")
    return node


def _dnf(node: _Node, negate: bool = False) -> List[List[_Literal]]:
    """The rule as alternatives (OR) of conjunctions (AND) of matchers."""
    kind = node[0]
    if kind == "call":
        return [[(negate, node[1], node[2])]]
    if kind == "not":
        return _dnf(node[1], not negate)
    left, right = _dnf(node[1], negate), _dnf(node[2], negate)
    if (kind == "and") != negate:
        out = [a + b for a in left for b in right]
    else:
        out = left + right
    if len(out) > _MAX_ALTERNATIVES:
        raise _RuleError(f"it expands to more than {_MAX_ALTERNATIVES} alternatives")
    return out


def _show_call(literal: _Literal) -> str:
    negated, name, args = literal
    return ("!" if negated else "") + name + "(" + ", ".join(f"`{a}`" for a in args) + ")"


@attr.s(frozen=True, auto_attribs=True)
class _Match:
    host: Optional[str]
    path: str
    exact: bool
    methods: Tuple[str, ...]


def _intersect_paths(a: List[Tuple[bool, str]], b: List[Tuple[bool, str]]) -> List[Tuple[bool, str]]:
    """Path alternatives (exact?, path) that satisfy one of C{a} and one of C{b}."""
    out = []
    for exact_a, pa in a:
        for exact_b, pb in b:
            if exact_a and exact_b:
                ok = pa == pb
            elif exact_a:
                ok = pa.startswith(pb)
            elif exact_b:
                ok = pb.startswith(pa)
            else:
                ok = pa.startswith(pb) or pb.startswith(pa)
            if ok:
                if exact_a or (not exact_b and len(pa) >= len(pb)):
                    out.append((exact_a, pa))
                else:
                    out.append((exact_b, pb))
    return out


def _conjunction(literals: List[_Literal], warn: Callable[[str], None]) -> List[_Match]:
    """The routes one AND of matchers maps to; what cannot map is warned about."""
    hosts: Optional[Set[str]] = None
    paths: Optional[List[Tuple[bool, str]]] = None
    methods: Optional[Set[str]] = None
    for literal in literals:
        negated, name, args = literal
        canonical = name.lower()
        if negated:
            warn(f"{_show_call(literal)}: a negated matcher cannot be expressed by an oidcproxy "
                 "route; dropped, so the route is wider")
            continue
        if not args and canonical in ("host", "path", "pathprefix", "method"):
            warn(f"{_show_call(literal)}: a matcher without arguments; dropped")
            continue
        if canonical in ("host", "hostheader"):
            found = set()
            for arg in args:
                host = arg.lower().rstrip(".")
                if host.count(":") == 1:  # a port is not part of the match
                    host = host.split(":", 1)[0]
                try:
                    found.add(_route_host(host))
                except ValueError as e:
                    warn(f"{_show_call(literal)}: {e}; that host is dropped")
            hosts = found if hosts is None else hosts & found
        elif canonical in ("path", "pathprefix"):
            alternatives = [(canonical == "path", arg) for arg in args]
            paths = alternatives if paths is None else _intersect_paths(paths, alternatives)
        elif canonical == "method":
            found = set()
            for arg in args:
                if arg.upper() in HTTP_METHODS:
                    found.add(arg.upper())
                else:
                    warn(f"{_show_call(literal)}: oidcproxy routes cannot limit to {arg!r} "
                         f"(only {', '.join(HTTP_METHODS)}); dropped")
            if found:
                methods = found if methods is None else methods & found
            else:
                warn(f"{_show_call(literal)}: no method left, so the route allows every method")
        else:
            warn(f"{_show_call(literal)}: oidcproxy routes match on host, path prefix and method "
                 "only; dropped, so the route is wider")
    if hosts == set() or paths == [] or methods == set():
        warn("the matchers joined by && can never all match; no route for them")
        return []
    return [
        _Match(host=host, path=path, exact=exact, methods=tuple(sorted(methods or ())))
        for host in (sorted(hosts) if hosts else [None])
        for exact, path in (paths or [(False, "/")])
    ]


# -- the conversion ----------------------------------------------------------------


@attr.s(auto_attribs=True)
class _Entry:
    key: str
    value: Any
    comment: Optional[str] = None


@attr.s(auto_attribs=True)
class _Section:
    header: Optional[str]
    """C{oidc} for C{[oidc]}, C{[[routes]]} as is; None: top level."""
    entries: List[_Entry] = attr.Factory(list)
    notes: List[str] = attr.Factory(list)
    """Comment lines before the header."""

    def set(self, key: str, value: Any, comment: Optional[str] = None) -> None:
        self.entries.append(_Entry(key, value, comment))

    def has(self, key: str) -> bool:
        return any(e.key == key for e in self.entries)


class _Importer:
    def __init__(self, documents: Sequence[Document], middleware: Optional[str],
                 public_url: Optional[str], upstreams: Mapping[str, str]) -> None:
        self.documents = list(documents)
        self.wanted = middleware
        self.public_url_option = public_url
        self.upstreams = dict(upstreams)
        self.warnings: List[str] = []
        self.credentials: Dict[str, str] = {}
        self.top = _Section(None)
        self.oidc = _Section("oidc")
        self.session = _Section("session")
        self.state_cookie = _Section("state_cookie")
        self.csrf = _Section("csrf")
        self.redis = _Section("redis")
        self.headers = _Section("headers")
        self.routes: List[_Section] = []
        self.scheme = "https"
        self.public_url = ""
        self.callback_path: Optional[str] = None
        self.proxy_paths: Dict[str, str] = {}
        """Paths oidcproxy answers itself (callback, login, logout) -> the option."""

    def warn(self, where: str, message: str) -> None:
        line = _printable(f"{where}: {message}")
        if line not in self.warnings:
            self.warnings.append(line)

    # -- picking the middleware

    def middleware(self) -> Document:
        found = [d for d in self.documents if d.kind in _MIDDLEWARE_KINDS
                 and isinstance(_dig(d.data, "spec", "plugin"), dict)
                 and _lower_get(d.data["spec"]["plugin"], "oidc") is not None]
        if not found:
            raise TraefikImportError("no Middleware with spec.plugin.oidc found in the input")
        if self.wanted is not None:
            chosen = [d for d in found if self.wanted in (d.name, f"{d.namespace}/{d.name}")]
            if not chosen:
                names = ", ".join(f"{d.namespace}/{d.name}" for d in found)
                raise TraefikImportError(f"no OIDC Middleware named {self.wanted!r}; found: {names}")
            found = chosen
        if len(found) > 1:
            names = ", ".join(f"{d.namespace}/{d.name}" for d in found)
            raise TraefikImportError(f"several OIDC Middlewares ({names}); choose one with "
                                     "--middleware NAME (or NAMESPACE/NAME)")
        return found[0]

    # -- the whole thing

    def run(self) -> ImportResult:
        mw = self.middleware()
        where = f"Middleware {mw.namespace}/{mw.name}: spec.plugin.oidc"
        raw = _lower_get(mw.data["spec"]["plugin"], "oidc")
        if not isinstance(raw, dict):
            raise TraefikImportError(f"{mw.label}: spec.plugin.oidc is {_yaml_type(raw)}, "
                                     "not a mapping")
        opts = _Options(raw, where)
        ingress = self.ingress_routes(mw)
        self.scheme = "https" if any(self.uses_tls(d) for d, _ in ingress) or not ingress else "http"
        hosts = sorted({m.host for _, routes in ingress for _, matches in routes
                        for m in matches if m.host})
        self.public(opts, hosts)
        rule = self.oidc_options(mw, opts)
        self.session_options(opts)
        self.state_cookie_options(opts)
        self.csrf_options(opts)
        self.headers_options(opts)
        self.emit_routes(mw, ingress, rule)
        for key in opts.unused():
            self.warn(opts.path(key), "not an option of Traefik Hub's OIDC middleware; not carried over")
        return ImportResult(
            toml=self.render(mw),
            warnings=tuple(self.warnings),
            credentials=tuple(sorted(self.credentials.items())),
        )

    # -- public URL and the proxy's own paths

    def public(self, opts: _Options, hosts: List[str]) -> None:
        redirect = self.string(opts, "redirectUrl")
        origin: Optional[str] = None
        path: Optional[str] = None
        if redirect is not None:
            origin, path = self.split_url(opts.path("redirectUrl"), redirect)
        if redirect is None:
            self.warn(opts.path("redirectUrl"), "is required by Traefik Hub and missing; "
                      "oidcproxy's default callback path is used")
        if self.public_url_option is not None:
            url = self.public_url_option.rstrip("/")
            comment = "from --public-url"
            if origin is not None and origin != url:
                self.warn(opts.path("redirectUrl"), f"its origin {origin} differs from --public-url "
                          f"{url}; the callback is public_url + callback_path")
        elif origin is not None:
            url, comment = origin, "from redirectUrl"
        elif len(hosts) == 1:
            url, comment = f"{self.scheme}://{hosts[0]}", "from the IngressRoute's Host rule"
        else:
            url = f"{self.scheme}://{PLACEHOLDER_HOST}"
            comment = "FIXME: the URL users reach the proxy at"
            why = (f"the IngressRoutes name several hosts ({', '.join(hosts)})" if hosts
                   else "no host is known (redirectUrl is a path and no Host rule)")
            self.warn("public_url", f"{why}; set the external URL users reach oidcproxy at "
                      "(or pass --public-url)")
        if len(hosts) > 1:
            self.warn("public_url", f"oidcproxy has one public_url; the routes of the other hosts "
                      f"({', '.join(h for h in hosts if urlsplit(url).hostname != h)}) share its "
                      "login (set session.cookie_domain to a common parent domain)")
        self.public_url = url
        self.top.set("public_url", url, comment)
        self.callback_path = path

    def split_url(self, where: str, value: str) -> Tuple[Optional[str], Optional[str]]:
        """
        Traefik's URL forms: C{/path}, C{host/path} or C{scheme://host/path}:
        the origin (None for a path) and the path (None when unusable).
        """
        text = value.strip()
        if text.startswith("/"):
            return None, text
        try:
            parts = urlsplit(text if "://" in text else "//" + text)
        except ValueError:  # an unbalanced "[" or "]" in the host
            parts = urlsplit("")
        scheme = parts.scheme or self.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            self.warn(where, f"{value!r} is not a path, host/path or http(s) URL; not carried over")
            return None, None
        origin = f"{scheme}://{parts.netloc.lower()}"
        return origin, parts.path or "/"

    def oidc_path(self, key: str, path: str, option: str) -> None:
        try:
            path = _route_prefix(path)
        except ValueError as e:
            self.warn(option, f"{e}; not carried over")
            return
        self.oidc.set(key, path, f"from {option}")
        self.proxy_paths.setdefault(path, option)

    # -- [oidc]

    def string(self, opts: _Options, name: str) -> Optional[str]:
        value = opts.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.warn(opts.path(name), f"expected a string, got {_yaml_type(value)}; not carried over")
            return None
        return str(value)

    def boolean(self, opts: _Options, name: str) -> Optional[bool]:
        value = opts.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.warn(opts.path(name), f"expected true or false, got {_yaml_type(value)}; "
                      "not carried over")
            return None
        return value

    def integer(self, opts: _Options, name: str) -> Optional[int]:
        value = opts.get(name)
        if value is None:
            return None
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.warn(opts.path(name), f"expected a number, got {_yaml_type(value)}; not carried over")
            return None
        return value

    def table(self, opts: _Options, name: str) -> Optional[_Options]:
        value = opts.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.warn(opts.path(name), f"expected a mapping, got {_yaml_type(value)}; not carried over")
            return None
        return _Options(value, opts.path(name))

    def string_map(self, opts: _Options, name: str) -> Optional[Dict[str, str]]:
        table = self.table(opts, name)
        if table is None:
            return None
        out = {}
        for key, value in table.data.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value is None:
                if value is None:
                    value = ""
                else:
                    self.warn(table.path(str(key)), f"expected a string, got {_yaml_type(value)}; "
                              "not carried over")
                    continue
            out[str(key)] = str(value)
        return out

    def secret(self, where: str, value: str, fallback_name: str) -> Dict[str, str]:
        """A credential reference for a secret option (a URN or a literal)."""
        ref = _secret_urn(value)
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
        ref = _secret_urn(value)
        if ref is not None:
            path = f"/etc/oidcproxy/{ref[0]}-{ref[1]}.pem"
            source = f"Kubernetes Secret {ref[0]}, key {ref[1]}"
        else:
            path = f"/etc/oidcproxy/{what}.pem"
            source = "the PEM text of this option"
        self.warn(where, f"oidcproxy reads {what} from a file: write {source} to {path}")
        return path

    def oidc_options(self, mw: Document, opts: _Options) -> Optional[str]:
        """Fill C{[oidc]} and the top level; the claims rule is returned for the routes."""
        o = self.oidc
        issuer = self.string(opts, "issuer")
        if issuer is None:
            self.warn(opts.path("issuer"), "is required and missing")
            o.set("issuer", "https://idp.example.com", "FIXME: the issuer URL")
        else:
            try:
                _http_url(issuer)
                o.set("issuer", issuer)
            except ValueError as e:
                # A placeholder (SEED's MY_ISSUER_URL): a valid stand-in, so that
                # --check accepts the output, with the original in the comment.
                self.warn(opts.path("issuer"),
                          f"{e}; written as https://idp.invalid, put the IdP's issuer URL there")
                o.set("issuer", "https://idp.invalid",
                      f"FIXME: the IdP's issuer URL (the middleware said {_comment_safe(issuer)})")
        self.client_id(mw, opts)
        secret = self.string(opts, "clientSecret")
        if secret is not None:
            o.set("client_secret", self.secret(opts.path("clientSecret"), secret, "client-secret"),
                  "a systemd credential: see the top of this file")
        else:
            o.set("token_endpoint_auth_method", "none", "no clientSecret: a public client (PKCE)")
        scopes = opts.get("scopes")
        if scopes is None:
            o.set("scopes", ["openid"], "Traefik Hub's default")
        else:
            if isinstance(scopes, str):
                scopes = scopes.replace(",", " ").split()
            if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                self.warn(opts.path("scopes"), f"expected a list of strings, got {_yaml_type(scopes)}; "
                          "Traefik Hub's default [openid] is used")
                scopes = ["openid"]
            if "openid" not in scopes:
                self.warn(opts.path("scopes"), "does not include openid, which oidcproxy requires; added")
                scopes = ["openid", *scopes]
            o.set("scopes", list(scopes))
        pkce = self.boolean(opts, "pkce")
        if pkce is not None:
            o.set("pkce", pkce)
        if self.callback_path is not None:
            self.oidc_path("callback_path", self.callback_path, "redirectUrl")
        for option, key in (("discoveryParams", "discovery_params"), ("authParams", "auth_params")):
            params = self.string_map(opts, option)
            if params is None:
                continue
            for name in list(params):
                if key == "auth_params" and name in RESERVED_AUTH_PARAMS:
                    self.warn(f"{opts.path(option)}.{name}", "is set by oidcproxy itself; not carried over")
                    del params[name]
            if params:
                o.set(key, params)
        login = self.string(opts, "loginUrl")
        disable = self.boolean(opts, "disableLogin")
        if disable is not None:
            o.set("disable_login", disable)
        if login is not None and disable:
            self.warn(opts.path("loginUrl"), "means nothing with disableLogin: true (no login is "
                      "ever started); not carried over")
        elif login is not None:
            self.proxy_url("login_url", opts.path("loginUrl"), login, "loginUrl")
        logout = self.string(opts, "logoutUrl")
        if logout is not None:
            self.proxy_url("logout_path", opts.path("logoutUrl"), logout, "logoutUrl")
        for option, key in (("postLoginRedirectUrl", "post_login_redirect_url"),
                            ("postLogoutRedirectUrl", "post_logout_redirect_url")):
            value = self.string(opts, option)
            if value is not None:
                url = self.landing_page(opts.path(option), value)
                if url is not None:
                    o.set(key, url, f"from {option}")
        backchannel = self.string(opts, "backchannelLogoutUrl")
        if backchannel is not None:
            self.warn(opts.path("backchannelLogoutUrl"), "oidcproxy serves back-channel logout at "
                      "public_url + \"/oidc/backchannel-logout\" (it needs a [redis] table); register "
                      "that URL at the IdP instead")
        required = self.boolean(opts, "backchannelLogoutSessionsRequired")
        if required:
            self.warn(opts.path("backchannelLogoutSessionsRequired"), "not needed: oidcproxy ends "
                      "the sessions of the logout token's sid, or of its sub when it has none")
        client = self.table(opts, "clientConfig")
        if client is not None:
            self.client_config(client)
        username = self.string(opts, "usernameClaim")
        if username is not None:
            self.top.set("username_claim", username, "from usernameClaim")
        claims = self.string(opts, "claims")
        return claims

    def client_id(self, mw: Document, opts: _Options) -> None:
        value = self.string(opts, "clientId")
        where = opts.path("clientId")
        if value is None:
            self.warn(where, "is required and missing")
            self.oidc.set("client_id", "FIXME", "FIXME: the client id registered at the IdP")
            return
        ref = _secret_urn(value)
        if ref is None:
            self.oidc.set("client_id", value)
            return
        stored = self.secret_value(mw.namespace, ref[0], ref[1])
        if stored is not None:
            self.oidc.set("client_id", stored, f"from Kubernetes Secret {ref[0]}, key {ref[1]}")
        else:
            self.warn(where, f"the client id is in Kubernetes Secret {ref[0]} (key {ref[1]}), which is "
                      "not in the input; oidcproxy's client_id is plain text: write it in")
            self.oidc.set("client_id", "FIXME", f"FIXME: Kubernetes Secret {ref[0]}, key {ref[1]}")

    def secret_value(self, namespace: str, name: str, key: str) -> Optional[str]:
        """A value from a C{Secret} document of the input (C{stringData} or base64 C{data})."""
        for d in self.documents:
            if d.kind != "Secret" or d.name != name or d.namespace not in (namespace, "default"):
                continue
            plain = d.data.get("stringData")
            if isinstance(plain, dict) and isinstance(plain.get(key), (str, int)):
                return str(plain[key])
            encoded = d.data.get("data")
            if isinstance(encoded, dict) and isinstance(encoded.get(key), str):
                try:
                    return base64.b64decode(encoded[key], validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    return None
        return None

    def proxy_url(self, key: str, where: str, value: str, option: str) -> None:
        origin, path = self.split_url(where, value)
        if path is None:
            return
        if origin is not None and origin != self.public_url:
            self.warn(where, f"oidcproxy serves {option} on every host it routes; the origin "
                      f"{origin} is dropped, only the path {path} is kept")
        self.oidc_path(key, path, option)

    def landing_page(self, where: str, value: str) -> Optional[str]:
        """A path on public_url stays a path; a URL elsewhere becomes absolute."""
        origin, path = self.split_url(where, value)
        if path is None:
            return None
        return path if origin is None or origin == self.public_url else origin + path

    def client_config(self, client: _Options) -> None:
        o = self.oidc
        timeout = client.get("timeoutSeconds")
        name = "timeoutSeconds"
        if timeout is None and client.get("timeout") is not None:
            name = "timeout"
        seconds = self.integer(client, name)
        if seconds is not None:
            if seconds > 0:
                o.set("timeout", _duration(seconds), f"from clientConfig.{name}")
            else:
                self.warn(client.path(name), "must be positive; not carried over")
        retries = self.integer(client, "maxRetries")
        if retries is not None:
            if retries < 0:
                self.warn(client.path("maxRetries"), "must not be negative; not carried over")
            elif retries > MAX_RETRIES:
                self.warn(client.path("maxRetries"), f"oidcproxy retries at most {MAX_RETRIES} "
                          f"times; {MAX_RETRIES} is used")
                o.set("max_retries", MAX_RETRIES)
            else:
                o.set("max_retries", retries)
        tls = self.table(client, "tls")
        if tls is not None:
            skip = self.boolean(tls, "insecureSkipVerify")
            values = {option: self.string(tls, option) for option in ("ca", "cert", "key")}
            if skip and values["ca"]:
                self.warn(tls.path("ca"), "is of no use with insecureSkipVerify (nothing is "
                          "verified); not carried over")
                values["ca"] = None
            for one, other in (("cert", "key"), ("key", "cert")):
                if values[one] and not values[other]:
                    self.warn(tls.path(one), f"needs clientConfig.tls.{other} too (a client "
                              "certificate and its key); not carried over")
                    values[one] = None
            for option, key, what in (("ca", "ca_bundle", "idp-ca"),
                                      ("cert", "client_cert", "idp-client-cert"),
                                      ("key", "client_key", "idp-client-key")):
                value = values[option]
                if value:
                    o.set(key, self.pem_file(tls.path(option), value, what),
                          f"FIXME: write clientConfig.tls.{option} here")
            if skip is not None:
                o.set("insecure_skip_verify", skip, "testing only: the IdP's certificate is not verified"
                      if skip else None)
            self.unknown(tls)
        self.unknown(client)

    def unknown(self, opts: _Options) -> None:
        for key in opts.unused():
            self.warn(opts.path(key), "not an option of Traefik Hub's OIDC middleware; not carried over")

    # -- [session], [redis], [state_cookie], [csrf], [headers]

    def same_site(self, opts: _Options, section: _Section, key: str) -> None:
        value = self.string(opts, "sameSite")
        if value is None:
            return
        names = {"lax": "Lax", "strict": "Strict", "none": "None"}
        if value.lower() in names:
            section.set(key, names[value.lower()])
        else:
            self.warn(opts.path("sameSite"), f"{value!r} is not one of none, lax, strict; not carried over")

    def cookie_name(self, opts: _Options, section: _Section, key: str) -> None:
        name = self.string(opts, "name")
        if name is None:
            return
        try:
            section.set(key, _cookie_name(name))
        except ValueError as e:
            self.warn(opts.path("name"), f"{e}; not carried over")

    def cookie_domain(self, opts: _Options, section: _Section, key: str) -> None:
        domain = self.string(opts, "domain")
        if domain:
            # A leading dot means nothing to browsers (RFC 6265 5.2.3).
            section.set(key, domain.lstrip("."))

    def cookie_path(self, opts: _Options, section: _Section, key: str) -> None:
        path = self.string(opts, "path")
        if path is None:
            return
        try:
            section.set(key, _route_prefix(path))
        except ValueError as e:
            self.warn(opts.path("path"), f"{e}; not carried over")

    def session_options(self, opts: _Options) -> None:
        s = self.session
        s.set("secrets", [{"credential": SESSION_KEY_CREDENTIAL}],
              "new: 32+ random bytes (Traefik Hub keeps its own key)")
        self.credentials[SESSION_KEY_CREDENTIAL] = ("new: 32 or more random bytes, e.g. "
                                                    "head -c 32 /dev/urandom | base64")
        session = self.table(opts, "session")
        if session is None:
            session = _Options({}, opts.path("session"))
        self.cookie_name(session, s, "cookie_name")
        self.cookie_path(session, s, "cookie_path")
        self.cookie_domain(session, s, "cookie_domain")
        expiry = self.integer(session, "expiry")
        source = "from session.expiry"
        if expiry is None:
            expiry, source = 86400, "Traefik Hub's default session.expiry"
        elif expiry <= 0:
            self.warn(session.path("expiry"), "must be positive (Traefik Hub refuses it too); "
                      "Traefik Hub's default 24h is used")
            expiry, source = 86400, "Traefik Hub's default session.expiry"
        sliding = self.boolean(session, "sliding")
        if sliding is False:
            s.set("lifetime", _duration(expiry), source)
        else:
            # Traefik Hub's sliding session (its default) ends expiry after
            # the last request, with no absolute end; oidcproxy always has one.
            s.set("lifetime", _duration(max(expiry, SLIDING_LIFETIME)),
                  "the absolute end (Traefik Hub has none): adjust")
            s.set("idle_timeout", _duration(expiry), source)
            s.set("sliding", True, "from session.sliding" if sliding else "Traefik Hub's default")
            lifetime = _duration(max(expiry, SLIDING_LIFETIME))
            self.warn(session.path("sliding"), "a sliding session has no absolute end in Traefik Hub; "
                      f"oidcproxy ends it session.lifetime after login ({lifetime} chosen: adjust it)")
        refresh = self.boolean(session, "refresh")
        if refresh is not None:
            s.set("refresh", "on_expiry" if refresh else "off")
        self.same_site(session, s, "same_site")
        secure = self.boolean(session, "secure")
        if secure is not None:
            s.set("cookie_secure", secure)
        if self.boolean(session, "httpOnly") is False:
            self.warn(session.path("httpOnly"), "false cannot be carried over: oidcproxy's session "
                      "cookie is always HttpOnly (scripts read the session with GET /oidc/userinfo)")
        store = self.table(session, "store")
        if store is not None:
            redis = self.table(store, "redis")
            if redis is not None:
                s.set("store", "redis")
                self.redis_options(redis)
            self.unknown(store)
        self.unknown(session)

    def redis_options(self, opts: _Options) -> None:
        r = self.redis
        endpoints = opts.get("endpoints")
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not isinstance(endpoints, list) or not endpoints or \
                not all(isinstance(e, str) for e in endpoints):
            self.warn(opts.path("endpoints"), "needs a list of host:port; the default "
                      "127.0.0.1:6379 is used")
            endpoints = ["127.0.0.1:6379"]
        database = self.integer(opts, "database")
        tls = self.table(opts, "tls")
        scheme = "rediss" if tls is not None else "redis"
        sentinel = self.table(opts, "sentinel")
        master = self.string(sentinel, "masterSet") if sentinel is not None else None
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
        username = self.string(opts, "username")
        if username:
            r.set("username", username)
        password = self.string(opts, "password")
        if password:
            r.set("password", self.secret(opts.path("password"), password, "redis-password"),
                  "a systemd credential: see the top of this file")
        if self.boolean(opts, "cluster"):
            self.warn(opts.path("cluster"), "Redis Cluster is not supported by oidcproxy: use one "
                      "Redis or Redis Sentinel")
        if tls is not None:
            ca = self.string(tls, "caBundle")
            if ca:
                r.set("ca_bundle", self.pem_file(tls.path("caBundle"), ca, "redis-ca"),
                      "FIXME: write session.store.redis.tls.caBundle here")
            for option in ("cert", "key"):
                if self.string(tls, option):
                    self.warn(tls.path(option), "oidcproxy does not present a client certificate to "
                              "Redis; not carried over (use username and password)")
            if self.boolean(tls, "insecureSkipVerify"):
                self.warn(tls.path("insecureSkipVerify"), "oidcproxy always verifies Redis's "
                          "certificate; not carried over (give its CA in ca_bundle)")
            self.unknown(tls)
        if sentinel is not None:
            for option in ("username", "password"):
                if self.string(sentinel, option):
                    self.warn(sentinel.path(option), "oidcproxy does not authenticate to the "
                              "Sentinels themselves; not carried over")
            if not master:
                self.warn(sentinel.path("masterSet"), "is required with sentinel; Sentinel is not "
                          "used")
            self.unknown(sentinel)
        self.unknown(opts)

    def state_cookie_options(self, opts: _Options) -> None:
        state = self.table(opts, "stateCookie")
        if state is None:
            return
        c = self.state_cookie
        self.cookie_name(state, c, "name")
        self.cookie_path(state, c, "path")
        self.cookie_domain(state, c, "domain")
        max_age = self.integer(state, "maxAge")
        if max_age is not None:
            if max_age > 0:
                c.set("max_age", _duration(max_age), "from stateCookie.maxAge")
            else:
                self.warn(state.path("maxAge"), "a state cookie that expires at once makes every "
                          "login fail; not carried over (default 10m)")
        self.same_site(state, c, "same_site")
        if c.has("same_site") and c.entries[-1].value == "Strict":
            self.warn(state.path("sameSite"), "strict: the IdP's redirect back is a cross-site "
                      "navigation, which carries no Strict cookie, so every login would fail; "
                      "Lax is used")
            c.entries.pop()
            c.set("same_site", "Lax")
        for option, key in (("secure", "secure"), ("httpOnly", "http_only")):
            value = self.boolean(state, option)
            if value is not None:
                c.set(key, value)
        self.unknown(state)

    def csrf_options(self, opts: _Options) -> None:
        if opts.get("csrf") is None:
            return
        csrf = self.table(opts, "csrf")
        if csrf is None:
            return
        c = self.csrf
        header = self.string(csrf, "headerName")
        c.set("header_name", header or CSRF_HEADER, None if header else "Traefik Hub's default")
        c.set("cookie_name", CSRF_COOKIE, "Traefik Hub's name: scripts read the token from it")
        secure = self.boolean(csrf, "secure")
        if secure is not None:
            c.set("secure", secure)
        self.unknown(csrf)

    def headers_options(self, opts: _Options) -> None:
        forward = self.string_map(opts, "forwardHeaders")
        h = self.headers
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

    # -- IngressRoutes

    def uses(self, ir: Document, ref: Any, mw: Document) -> bool:
        if not isinstance(ref, dict):
            return False
        name = ref.get("name")
        namespace = ref.get("namespace") or ir.namespace
        return name == mw.name and namespace == mw.namespace

    def oidc_middleware(self, ir: Document, ref: Any) -> bool:
        """Whether a route's middleware reference names some OIDC middleware of the input."""
        if not isinstance(ref, dict):
            return False
        namespace = ref.get("namespace") or ir.namespace
        return any(d.kind in _MIDDLEWARE_KINDS and d.name == ref.get("name") and d.namespace == namespace
                   and isinstance(_dig(d.data, "spec", "plugin"), dict)
                   and _lower_get(d.data["spec"]["plugin"], "oidc") is not None
                   for d in self.documents)

    def ingress_routes(self, mw: Document) -> List[Tuple[Document, List[Tuple[int, List[_Match]]]]]:
        """The IngressRoutes using C{mw}, each with its routes' matches (index, matches)."""
        out = []
        for ir in self.documents:
            if ir.kind not in _INGRESS_KINDS:
                continue
            routes = _dig(ir.data, "spec", "routes")
            if not isinstance(routes, list):
                continue
            if not any(isinstance(r, dict) and isinstance(r.get("middlewares"), list)
                       and any(self.uses(ir, m, mw) for m in r["middlewares"]) for r in routes):
                continue
            parsed = []
            for i, route in enumerate(routes):
                where = f"IngressRoute {ir.namespace}/{ir.name}: spec.routes[{i}]"
                if not isinstance(route, dict):
                    self.warn(where, "not a mapping; skipped")
                    continue
                parsed.append((i, self.matches(where, route)))
            out.append((ir, parsed))
        if not out:
            self.warn(f"Middleware {mw.namespace}/{mw.name}", "no IngressRoute in the input uses it: "
                      "add [[routes]] to the output")
        return out

    def matches(self, where: str, route: Dict[str, Any]) -> List[_Match]:
        kind = route.get("kind", "Rule")
        if kind != "Rule":
            self.warn(where, f"kind {kind!r} is not a router rule; skipped")
            return []
        rule = route.get("match")
        if not isinstance(rule, str) or not rule.strip():
            self.warn(f"{where}.match", "missing; skipped")
            return []
        try:
            alternatives = _dnf(parse_rule(rule))
        except _RuleError as e:
            self.warn(f"{where}.match", f"cannot read {rule!r}: {e}; skipped")
            return []
        out = []
        for literals in alternatives:
            out.extend(_conjunction(literals, lambda m: self.warn(f"{where}.match", m)))
        return out

    def uses_tls(self, ir: Document) -> bool:
        spec = ir.data.get("spec")
        if not isinstance(spec, dict):
            return False
        points = spec.get("entryPoints") or []
        # tls: {} turns TLS on too (with the default certificate).
        return spec.get("tls") is not None or (isinstance(points, list) and "websecure" in points)

    def emit_routes(self, mw: Document,
                    ingress: List[Tuple[Document, List[Tuple[int, List[_Match]]]]],
                    rule: Optional[str]) -> None:
        rule_ok = True
        if rule is not None:
            from ..config.policy import Policy, RuleSyntaxError

            try:
                Policy.parse(rule)
            except RuleSyntaxError as e:
                rule_ok = False
                self.warn(f"Middleware {mw.namespace}/{mw.name}: spec.plugin.oidc.claims",
                          f"oidcproxy's rule language cannot read it ({e.message} at position "
                          f"{e.position}); carried over as is, so the configuration is refused "
                          "until it is fixed")
        seen: Dict[Tuple[Optional[str], str], str] = {}
        for ir, routes in ingress:
            spec = _mapping(ir.data.get("spec"))
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
                refs = route.get("middlewares") if isinstance(route.get("middlewares"), list) else []
                protected = any(self.uses(ir, m, mw) for m in refs)
                for ref in refs:
                    if self.uses(ir, ref, mw):
                        continue
                    name = ref.get("name") if isinstance(ref, dict) else ref
                    if self.oidc_middleware(ir, ref):
                        self.warn(where, f"uses another OIDC middleware ({name}); skipped (import it "
                                  "into a configuration of its own with --middleware)")
                        matches = []
                    else:
                        self.warn(f"{where}.middlewares", f"middleware {name!r} is not carried over")
                for key in route:
                    if key not in ("match", "kind", "services", "middlewares", "syntax"):
                        self.warn(f"{where}.{key}", "not carried over (oidcproxy picks the longest "
                                  "matching path prefix)" if key == "priority" else "not carried over")
                if not matches:
                    continue
                upstream, fixme = self.upstream(ir, where, route.get("services"))
                for m in matches:
                    self.route(where, route, m, upstream, fixme, protected, rule, rule_ok, seen)

    def route(self, where: str, route: Dict[str, Any], m: _Match, upstream: str,
              fixme: Optional[str], protected: bool, rule: Optional[str], rule_ok: bool,
              seen: Dict[Tuple[Optional[str], str], str]) -> None:
        shown = f"{where} ({route.get('match')})"
        try:
            path = _route_prefix(m.path)
        except ValueError as e:
            self.warn(shown, f"path {m.path!r}: {e}; no route for it")
            return
        if path in self.proxy_paths:
            self.warn(shown, f"{path} is answered by oidcproxy itself ({self.proxy_paths[path]}); "
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
        section = _Section("[[routes]]")
        section.notes.append(f"{where}: {route.get('match')}")
        section.set("path", path)
        if m.host:
            section.set("host", m.host)
        section.set("upstream", upstream, fixme)
        if protected:
            section.set("auth", "session")
            if rule is not None:
                section.set("rule", rule, None if rule_ok else "FIXME: not in oidcproxy's rule language")
        else:
            section.set("auth", "none", "no OIDC middleware on this route in Traefik")
        if m.methods:
            section.set("methods", list(m.methods))
        self.routes.append(section)

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
        spec = _mapping(doc.data.get("spec")) if doc is not None else {}
        ports = [p for p in _sequence(spec.get("ports")) if isinstance(p, dict)]
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

    # -- output

    def render(self, mw: Document) -> str:
        out = [
            f"# oidcproxy configuration imported from Traefik Hub's OIDC middleware "
            f"{mw.namespace}/{mw.name}",
            f"# ({mw.source}) by {PROG}. Check every FIXME, then run",
            "#   twistd --pidfile= oidcproxy --config THIS_FILE --check",
        ]
        if self.credentials:
            out.append("#")
            out.append("# Secrets are systemd credentials, read from $CREDENTIALS_DIRECTORY/NAME.")
            out.append("# Supply each with LoadCredential=NAME:/path/to/file in the service unit, or")
            out.append('# replace { credential = "NAME" } by { file = "/path/to/file" }:')
            width = max(len(n) for n in self.credentials)
            for name, source in sorted(self.credentials.items()):
                out.append(_comment(f"  {name.ljust(width)}  {source}"))
        sections = [self.top, self.oidc, self.session, self.state_cookie, self.redis]
        if self.csrf.entries:
            sections.append(self.csrf)
        sections.append(self.headers)
        sections.extend(self.routes)
        for section in sections:
            if section.header is not None and not section.entries and section.header != "headers":
                continue
            out.append("")
            out.extend(_comment(n) for n in section.notes)
            if section.header is not None:
                header = section.header
                out.append(header if header.startswith("[[") else f"[{toml_key(header)}]")
            for e in section.entries:
                line = f"{toml_key(e.key)} = {toml_value(e.value)}"
                if e.comment:
                    line += "  " + _comment(e.comment)
                out.append(line)
        return "\n".join(out) + "\n"


def _lower_get(data: Mapping[Any, Any], name: str) -> Any:
    for key, value in data.items():
        if str(key).lower() == name:
            return value
    return None


def _mapping(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sequence(value: Any) -> List[Any]:
    return value if isinstance(value, list) else []


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _secret_urn(value: str) -> Optional[Tuple[str, str]]:
    """C{(name, key)} of C{urn:k8s:secret:NAME:KEY}, or None."""
    if not value.startswith(SECRET_URN):
        return None
    name, sep, key = value[len(SECRET_URN):].partition(":")
    if not sep or not name or not key or "/" in name + key:
        return None
    return name, key


def _cluster_dns(endpoint: str) -> bool:
    """Whether a host[:port] is a Kubernetes service name (no use outside the cluster)."""
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 else endpoint
    return "." not in host or host.endswith((".svc", ".svc.cluster.local", ".cluster.local"))


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size and not (unit == "d" and seconds < 2 * 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


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
    return _Importer(documents, middleware, public_url, upstreams or {}).run()


# -- the TOML emitter --------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = ['"']
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """A bare key when it can be one, else a quoted key."""
    return key if _BARE_KEY.match(key) else toml_string(key)


def toml_value(value: Any) -> str:
    """Strings, booleans, integers, lists and (inline) tables of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _comment(text: str) -> str:
    """A one-line TOML comment (control characters, newlines included, become spaces)."""
    clean = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    return "# " + clean if clean else "#"


# -- the console script ------------------------------------------------------------


def _options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print an oidcproxy TOML configuration equivalent to a Traefik Hub OIDC "
                    "middleware and the IngressRoutes that use it. What cannot be carried over "
                    "is listed on stderr.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="Kubernetes YAML (several documents per file allowed; - for stdin)")
    parser.add_argument("--middleware", metavar="NAME",
                        help="the OIDC Middleware to import (NAME or NAMESPACE/NAME) when there are "
                             "several")
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
                upstreams[service] = _http_url(url)
            except ValueError as e:
                raise TraefikImportError(f"--upstream {item!r}: {e}") from None
        if args.public_url is not None:
            try:
                _http_url(args.public_url)
            except ValueError as e:
                raise TraefikImportError(f"--public-url: {e}") from None
        documents: List[Document] = []
        for path in args.files:
            documents.extend(load_documents(_read(path, stdin), "<stdin>" if path == "-" else path))
        result = convert(documents, args.middleware, args.public_url, upstreams)
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
