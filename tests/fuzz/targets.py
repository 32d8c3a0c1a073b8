"""
Fuzz targets for the HTTP-facing parsers: each takes the fuzzer's bytes,
feeds them to a parser the way a request would, and raises (a crash) on an
exception other than the parser's documented one or on a broken invariant.
L{run} runs them under atheris; they are plain functions, so a crashing
input can be replayed with C{python -c} as well.
"""

from __future__ import annotations

from typing import Callable, Dict
from urllib.parse import unquote

from twisted.web.http import Request
from twisted.web.test.requesthelper import DummyChannel

from oidcproxy.config import RouteConfig
from oidcproxy.config.policy import Policy, RuleSyntaxError
from oidcproxy.oidc.login import safe_return_to
from oidcproxy.proxy.routes import BadRequestTarget, RouteTable, normalise_path
from oidcproxy.sessions.cookies import CookieSpec, chunk_names, read_cookie, strip_cookies
from oidcproxy.sessions.crypto import Sealer
from tests.urls import browser_resolve, origin

__all__ = ["TARGETS"]

ROUTES = RouteTable([
    RouteConfig(index=0, path="/", upstream="http://up.test"),
    RouteConfig(index=1, path="/app", upstream="http://up.test/base", strip_prefix=True),
    RouteConfig(index=2, path="/app/admin", upstream="http://up.test", replace_prefix="/adm",
                host="admin.test"),
    RouteConfig(index=3, path="/files", upstream="http://up.test", allow_encoded_slashes=True),
    RouteConfig(index=4, path="/x;y", upstream="http://up.test", host="*.wild.test"),
])


def request_target(data: bytes) -> None:
    """
    C{HOST\\nTARGET} (or a target alone): RouteTable.match answers a
    RouteMatch or raises BadRequestTarget; the upstream target is ASCII
    origin-form and its path is already normal.
    """
    host, newline, target = data.partition(b"\n")
    if not newline:
        host, target = None, data  # type: ignore[assignment]
    try:
        found = ROUTES.match(host, target)
    except BadRequestTarget as e:
        assert e.reason and e.reason.isascii(), e.reason
        return
    assert found is not None, "the root route matches every path"
    upstream = found.upstream_target
    assert upstream[:1] == b"/" and upstream[:2] != b"//", upstream
    assert all(0x21 <= b < 0x7F and b != 0x23 for b in upstream), upstream
    path = upstream.split(b"?", 1)[0]
    assert normalise_path(path, found.route.allow_encoded_slashes) == path.decode("ascii"), upstream
    plain = "/" + "/".join(s.split(";", 1)[0] for s in found.path.split("/") if s.split(";", 1)[0])
    prefix = found.route.path
    assert prefix == "/" or plain == prefix or plain.startswith(prefix + "/"), (plain, prefix)


SPEC = CookieSpec("oidcproxy", max_chunks=3)
SEALER = Sealer([b"k" * 32])


def cookie_header(data: bytes) -> None:
    """
    A Cookie header value (a NUL separates two headers): Twisted's parser,
    then the chunk reassembly, the chunk listing, the unsealing and the
    stripping of the proxy's cookies never raise; what is stripped holds
    none of ours.
    """
    values = data.split(b"\x00")
    request = Request(DummyChannel())
    request.requestHeaders.setRawHeaders(b"cookie", values)
    request.parseCookies()
    cookies = request.received_cookies
    value = read_cookie(SPEC, cookies)
    if value is not None:
        assert value.isascii() and value
        SEALER.unseal(value, b"session")
    chunk_names(SPEC, cookies)
    wire = SPEC.wire_name.encode("ascii")
    for kept in strip_cookies(values, {wire}):
        for pair in kept.split(b";"):
            name = pair.split(b"=", 1)[0].strip(b" \t")
            base, _, index = name.rpartition(b"_")
            assert name != wire and not (base == wire and index.isdigit()), kept


PUBLIC = "https://app.test/"


def redirect_target(data: bytes) -> None:
    """
    A return-to target (UTF-8, or raw bytes as surrogates): safe_return_to
    keeps it exactly or refuses it, and what it keeps lands a browser on
    the public origin, decoded once or twice too.
    """
    target = data.decode("utf-8", "surrogateescape")
    kept = safe_return_to(target)
    if kept is None:
        return
    assert kept == target
    for layer in (kept, unquote(kept), unquote(unquote(kept))):
        assert origin(browser_resolve(PUBLIC, layer)) == origin(PUBLIC), layer
        assert origin(browser_resolve(PUBLIC, "https://app.test" + layer)) == origin(PUBLIC), layer


CLAIMS = {"groups": ["admins", "x"], "email": "a@example.com", "email_verified": True, "n": 42,
          "realm_access": {"roles": ["r"]}, "f": 1.5, "none": None}


def claim_rule(data: bytes) -> None:
    """
    A claim rule: Policy.parse parses it or raises RuleSyntaxError with a
    position in the rule; a parsed rule evaluates and explains without an
    exception, and its canonical form parses to itself.
    """
    rule = data.decode("utf-8", "replace")
    try:
        policy = Policy.parse(rule)
    except RuleSyntaxError as e:
        assert 0 <= e.position <= len(rule), (e.position, len(rule))
        str(e)
        return
    policy.evaluate(CLAIMS, None, now=0.0)
    policy.evaluate(CLAIMS, CLAIMS, now=0.0)
    policy.explain(CLAIMS, {}, now=0.0)
    assert policy.rule is not None
    assert Policy.parse(policy.rule).rule == policy.rule


TARGETS: Dict[str, Callable[[bytes], None]] = {
    "request_target": request_target,
    "cookie_header": cookie_header,
    "redirect_target": redirect_target,
    "claim_rule": claim_rule,
}
