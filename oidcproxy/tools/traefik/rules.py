"""
Traefik router rules (v2 and v3 syntax): parsed, expanded into alternatives
of conjunctions, and each conjunction mapped to the oidcproxy routes it can
be (host, path prefix, methods); what a route cannot express is warned about.
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, Optional, Set, Tuple

import attr

from ...config import HTTP_METHODS, route_host

MAX_ALTERNATIVES = 32
"""Most routes one IngressRoute C{match} may expand to (its C{||} alternatives)."""


class RuleError(ValueError):
    """A router rule that cannot be read, or expands to too many alternatives."""


_RULE_TOKEN = re.compile(
    r"\s*(?:(?P<op>&&|\|\||[!(),])|(?P<bt>`[^`]*`)|(?P<dq>\"(?:[^\"\\]|\\.)*\")|(?P<id>[A-Za-z]\w*))"
)

RuleNode = Tuple[Any, ...]
"""C{("call", name, args)}, C{("not", x)}, C{("and", a, b)} or C{("or", a, b)}."""
Matcher = Tuple[bool, str, Tuple[str, ...]]
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
            raise RuleError(f"unexpected {rule[pos]!r} at position {pos}")
        pos = m.end()
        if m.group("op"):
            out.append(("op", m.group("op")))
        elif m.group("bt"):
            out.append(("str", m.group("bt")[1:-1]))
        elif m.group("dq"):
            out.append(("str", re.sub(r"\\(.)", r"\1", m.group("dq")[1:-1])))
        else:
            out.append(("id", m.group("id")))


def parse_rule(rule: str) -> RuleNode:
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
            raise RuleError(f"expected {want}, got {got[1] or 'the end'}")
        pos += 1
        return got[1]

    def either() -> RuleNode:
        node = both()
        while peek() == ("op", "||"):
            take("op", "||")
            node = ("or", node, both())
        return node

    def both() -> RuleNode:
        node = unary()
        while peek() == ("op", "&&"):
            take("op", "&&")
            node = ("and", node, unary())
        return node

    def unary() -> RuleNode:
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
        raise RuleError(f"unexpected {peek()[1]!r}")
    return node


def alternatives(node: RuleNode, negate: bool = False) -> List[List[Matcher]]:
    """The rule as alternatives (OR) of conjunctions (AND) of matchers."""
    kind = node[0]
    if kind == "call":
        return [[(negate, node[1], node[2])]]
    if kind == "not":
        return alternatives(node[1], not negate)
    left, right = alternatives(node[1], negate), alternatives(node[2], negate)
    if (kind == "and") != negate:
        out = [a + b for a in left for b in right]
    else:
        out = left + right
    if len(out) > MAX_ALTERNATIVES:
        raise RuleError(f"it expands to more than {MAX_ALTERNATIVES} alternatives")
    return out


def _show_call(literal: Matcher) -> str:
    negated, name, args = literal
    return ("!" if negated else "") + name + "(" + ", ".join(f"`{a}`" for a in args) + ")"


@attr.s(frozen=True, auto_attribs=True)
class Match:
    """What one conjunction of matchers routes: an oidcproxy route's host, path and methods."""

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


def conjunction(literals: List[Matcher], warn: Callable[[str], None]) -> List[Match]:
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
                    found.add(route_host(host))
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
        Match(host=host, path=path, exact=exact, methods=tuple(sorted(methods or ())))
        for host in (sorted(hosts) if hosts else [None])
        for exact, path in (paths or [(False, "/")])
    ]
