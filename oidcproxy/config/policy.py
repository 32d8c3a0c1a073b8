"""
Route authorization: claim rules and allow-lists.

A route's C{rule} uses Traefik Hub's claim syntax::

    Contains(`groups`, `admins`) || (Equals(`email_verified`, `true`) && !Prefix(`email`, `guest`))

It is parsed once, when the configuration is loaded, into a small tree of
nodes (claim paths split into tuples, value lists made sets); L{Policy.evaluate}
runs on every request and only walks that tree, short-circuiting C{&&} and
C{||}: no parsing and no regular expressions. An allowed request gets one shared
L{Decision}; the reason of a denial is built afterwards, by a second walk.

Grammar (EBNF; whitespace, as C{str.isspace} defines it, may appear between
any two tokens)::

    rule     = or ;
    or       = and , { "||" , and } ;
    and      = unary , { "&&" , unary } ;
    unary    = "!" , unary | primary ;
    primary  = "(" , or , ")" | call ;
    call     = function , "(" , [ string , { "," , string } ] , ")" ;
    function = "Equals" | "Prefix" | "Contains" | "SplitContains" | "OneOf" ;
    string   = "`" , { any character but "`" } , "`"
             | '"' , { any character but '"' and "\\" | "\\" , any character } , '"' ;

In a double-quoted string C{\\"} is a quote and C{\\\\} a backslash; any other
backslash is kept as written, so C{"realm\\.x"} and C{"realm\\\\.x"} both mean
the claim name C{realm\\.x}. Nesting (parentheses and C{!}) is limited to
L{MAX_DEPTH} levels.

The first argument of every function is a claim name: dots reach into nested
objects (C{realm_access.roles}); C{\\.} is a dot that is part of a name
(C{https://example\\.com/roles}) and C{\\\\} a backslash. A first part
C{access_token.} or C{id_token.} chooses the token whose claims are read; the
ID token is the default.

    - C{Equals(claim, v)}: the claim is the string C{v}. A number or boolean
      claim is compared in its JSON form: C{true}, C{false}, C{42}, C{1.5}
      (a float with an integral value is written without C{.0}).
    - C{Prefix(claim, v)}: a string claim starts with C{v}; an array claim has
      a string element that starts with C{v}.
    - C{Contains(claim, v)}: a string claim has C{v} as a substring; an array
      claim has an element that equals C{v} (as C{Equals} compares).
    - C{SplitContains(claim, sep, v)}: a string claim split on C{sep} has a
      part that is exactly C{v}. C{sep} must not be empty.
    - C{OneOf(claim, v1, v2, ...)}: the claim equals one of the values (as
      C{Equals} compares), or an array claim has an element that does.

A claim that is missing, or is of a type the function does not handle (an
object, C{null}, a number given to C{Prefix}), makes the function false, never
an error; so C{!Equals(`x`, `y`)} is true when C{x} is missing. Everything is
case-sensitive.

Allow-lists are combined with the rule by AND:

    - C{allowed_groups}: the ID token's C{groups} claim (a string or an array)
      is, or has an element that is, one of the groups (case-sensitive).
    - C{allowed_emails}, C{allowed_email_domains}: the ID token's C{email}
      claim is one of the listed addresses, I{or} its domain is one of the
      listed domains or a subdomain of one on a dot boundary; both compare
      case-insensitively. A domain match needs an address with exactly one
      C{@}, a non-empty local part and a domain with no empty label. Unless
      C{require_email_verified} is false, C{email_verified} must also be the
      JSON value C{true} (the string C{"true"} is not).

Checks run in this order and stop at the first that fails: groups, emails,
the rule.
"""

# The project targets Python 3.9 and spells optional types Optional[X] (UP007 is
# ignored in pyproject.toml); newer ruff reports them as UP045 instead.

from __future__ import annotations

import difflib
import json
from typing import (
    Any,
    Dict,
    FrozenSet,
    Iterator,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
)

import attr

__all__ = ["MAX_DEPTH", "Decision", "Policy", "RuleSyntaxError"]

MAX_DEPTH = 64
"""The deepest nesting of parentheses and C{!} a rule may have."""

_REASON_MAX = 200
_VALUE_MAX = 60
_LIST_MAX = 80

Claims = Optional[Mapping[str, Any]]

ClaimPath = Tuple[str, Tuple[str, ...]]
"""A claim a policy reads: its token (C{"id_token"} or C{"access_token"}) and its path."""


class RuleSyntaxError(ValueError):
    """
    A rule could not be parsed.

    @ivar message: what is wrong.
    @ivar position: the 0-based character offset in C{rule} where it is wrong.
    @ivar rule: the rule text.
    """

    def __init__(self, message: str, position: int, rule: str) -> None:
        super().__init__(message, position, rule)
        self.message = message
        self.position = position
        self.rule = rule

    def __str__(self) -> str:
        head = f"{self.message} at position {self.position}: "
        # One character for one character, so the caret lines up.
        shown = "".join(c if c.isprintable() else " " for c in self.rule)
        return f"{head}{shown}\n{' ' * (len(head) + self.position)}^"


@attr.s(frozen=True, slots=True)
class Decision:
    """
    The outcome of L{Policy.evaluate}.

    @ivar allowed: whether the request may go on.
    @ivar reason: a short human text (at most 200 characters) naming the part
        that decided; C{"allowed"} for every allowed request.
    """

    allowed: bool = attr.ib()
    reason: str = attr.ib()


_ALLOWED = Decision(True, "allowed")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _lookup(claims: Claims, path: Tuple[str, ...]) -> Any:
    """The value at C{path} in C{claims}, or L{_MISSING}."""
    if claims is None:
        return _MISSING
    value: Any = claims
    for key in path:
        try:
            value = value.get(key, _MISSING)
        except AttributeError:  # a string, number, array, or _MISSING itself
            return _MISSING
    return value


def _scalar_text(value: Any) -> Optional[str]:
    """The JSON text of a string, boolean or number claim; None for other types."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    return None


def _scalarish(text: str) -> bool:
    """Whether some boolean or number could have C{text} as its L{_scalar_text}."""
    if text in ("true", "false"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _render(value: Any) -> str:
    """A short JSON-like rendering of a claim value, for reasons and traces."""
    if value is _MISSING:
        return "missing"
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return _clip(text, _VALUE_MAX)


def _show(text: str) -> str:
    """An e-mail address as is when it is short and printable, else as JSON."""
    if len(text) <= _VALUE_MAX and text.isprintable() and text.strip() == text:
        return text
    return _render(text)


def _quote(text: str) -> str:
    """A string argument as it would be written in a rule."""
    if "`" not in text:
        return f"`{text}`"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tf(value: bool) -> str:
    return "true" if value else "false"


# -- the tree ------------------------------------------------------------------


class _Node:
    """
    A node of a compiled rule (or an allow-list check).

    C{test} is the hot path. C{why_false}/C{why_true} explain a result already
    known, and C{trace} appends one line per node it evaluates to C{out}.
    """

    __slots__ = ("text",)
    prec = 2  # 0: ||, 1: &&, 2: ! and calls; decides where the text needs parentheses
    text: str

    def test(self, idc: Claims, acc: Claims) -> bool:
        raise NotImplementedError()

    def why_false(self, idc: Claims, acc: Claims) -> str:
        raise NotImplementedError()

    def why_true(self, idc: Claims, acc: Claims) -> str:
        raise NotImplementedError()

    def trace(self, idc: Claims, acc: Claims, depth: int, out: List[str]) -> bool:
        raise NotImplementedError()

    def claim_paths(self) -> Iterator[ClaimPath]:
        """The claims this node (and the nodes under it) read."""
        raise NotImplementedError()


def _wrap(node: _Node, prec: int) -> str:
    return f"({node.text})" if node.prec <= prec else node.text


class _Function(_Node):
    """A function call; its first argument is a claim."""

    __slots__ = ("claim", "path", "access", "args")
    name = ""

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        self.claim = claim
        self.path = path
        self.access = access
        self.args = args
        self.text = f"{self.name}({', '.join(_quote(a) for a in (claim, *args))})"

    def detail(self, idc: Claims, acc: Claims) -> str:
        claims = acc if self.access else idc
        if claims is None:
            return f"{self.claim} is missing (no access token)"
        return f"{self.claim} is {_render(_lookup(claims, self.path))}"

    def why_false(self, idc: Claims, acc: Claims) -> str:
        return f"{self.text} is false: {self.detail(idc, acc)}"

    def why_true(self, idc: Claims, acc: Claims) -> str:
        return f"{self.text} is true: {self.detail(idc, acc)}"

    def trace(self, idc: Claims, acc: Claims, depth: int, out: List[str]) -> bool:
        result = self.test(idc, acc)
        out.append(f"{'  ' * depth}{self.text}: {_tf(result)} ({self.detail(idc, acc)})")
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        yield ("access_token" if self.access else "id_token", self.path)

    def __repr__(self) -> str:
        token = "access" if self.access else "id"
        args = "".join(f", {a!r}" for a in self.args)
        return f"{self.name}({token}{list(self.path)!r}{args})"


class _Equals(_Function):
    __slots__ = ("value",)
    name = "Equals"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.value = args[0]

    def test(self, idc: Claims, acc: Claims) -> bool:
        v = _lookup(acc if self.access else idc, self.path)
        if v.__class__ is str:
            return v == self.value
        return _scalar_text(v) == self.value


class _Prefix(_Function):
    __slots__ = ("value",)
    name = "Prefix"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.value = args[0]

    def test(self, idc: Claims, acc: Claims) -> bool:
        v = _lookup(acc if self.access else idc, self.path)
        if isinstance(v, str):
            return v.startswith(self.value)
        if isinstance(v, (list, tuple)):
            for element in v:
                if isinstance(element, str) and element.startswith(self.value):
                    return True
        return False


def _array_has(array: Sequence[Any], value: str, scalarish: bool) -> bool:
    if value in array:  # a str never equals a non-str: this finds string elements only
        return True
    if scalarish:
        for element in array:
            if element.__class__ is not str and _scalar_text(element) == value:
                return True
    return False


class _Contains(_Function):
    __slots__ = ("value", "scalarish")
    name = "Contains"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.value = args[0]
        self.scalarish = _scalarish(self.value)

    def test(self, idc: Claims, acc: Claims) -> bool:
        v = _lookup(acc if self.access else idc, self.path)
        if isinstance(v, str):
            return self.value in v
        if isinstance(v, (list, tuple)):
            return _array_has(v, self.value, self.scalarish)
        return False


class _SplitContains(_Function):
    __slots__ = ("sep", "value", "simple")
    name = "SplitContains"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.sep, self.value = args
        # With a one-character separator that is not in the value, the parts
        # are the maximal runs between separators: find the value bounded by
        # separators or the ends, without building the list of parts.
        self.simple = len(self.sep) == 1 and self.sep not in self.value

    def test(self, idc: Claims, acc: Claims) -> bool:
        s = _lookup(acc if self.access else idc, self.path)
        if not isinstance(s, str):
            return False
        value = self.value
        sep = self.sep
        if not self.simple:
            return value in s.split(sep)
        n = len(value)
        end = len(s)
        i = s.find(value)
        while i >= 0:
            j = i + n
            if (i == 0 or s[i - 1] == sep) and (j == end or s[j] == sep):
                return True
            i = s.find(value, i + 1)
        return False


class _OneOf(_Function):
    __slots__ = ("values", "scalarish")
    name = "OneOf"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.values: FrozenSet[str] = frozenset(args)
        self.scalarish = any(_scalarish(a) for a in args)

    def test(self, idc: Claims, acc: Claims) -> bool:
        v = _lookup(acc if self.access else idc, self.path)
        if v.__class__ is str:
            return v in self.values
        if isinstance(v, (list, tuple)):
            values = self.values
            for element in v:
                if element.__class__ is str:
                    if element in values:
                        return True
                elif self.scalarish or isinstance(element, str):
                    if _scalar_text(element) in values:
                        return True
            return False
        return _scalar_text(v) in self.values


class _And(_Node):
    __slots__ = ("children",)
    prec = 1

    def __init__(self, children: Sequence[_Node]) -> None:
        self.children = tuple(children)
        self.text = " && ".join(_wrap(c, 1) for c in self.children)

    def test(self, idc: Claims, acc: Claims) -> bool:
        for child in self.children:
            if not child.test(idc, acc):
                return False
        return True

    def why_false(self, idc: Claims, acc: Claims) -> str:
        for child in self.children:
            if not child.test(idc, acc):
                return child.why_false(idc, acc)
        return f"{self.text} is true"  # pragma: no cover - only called when false

    def why_true(self, idc: Claims, acc: Claims) -> str:
        return "; ".join(child.why_true(idc, acc) for child in self.children)

    def trace(self, idc: Claims, acc: Claims, depth: int, out: List[str]) -> bool:
        at = len(out)
        out.append("")
        result = True
        for child in self.children:
            if not child.trace(idc, acc, depth + 1, out):
                result = False
                break
        out[at] = f"{'  ' * depth}{self.text}: {_tf(result)}"
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        for child in self.children:
            yield from child.claim_paths()

    def __repr__(self) -> str:
        return f"And({', '.join(repr(c) for c in self.children)})"


class _Or(_Node):
    __slots__ = ("children",)
    prec = 0

    def __init__(self, children: Sequence[_Node]) -> None:
        self.children = tuple(children)
        self.text = " || ".join(_wrap(c, 0) for c in self.children)

    def test(self, idc: Claims, acc: Claims) -> bool:
        for child in self.children:
            if child.test(idc, acc):
                return True
        return False

    def why_false(self, idc: Claims, acc: Claims) -> str:
        return "; ".join(child.why_false(idc, acc) for child in self.children)

    def why_true(self, idc: Claims, acc: Claims) -> str:
        for child in self.children:
            if child.test(idc, acc):
                return child.why_true(idc, acc)
        return f"{self.text} is false"  # pragma: no cover - only called when true

    def trace(self, idc: Claims, acc: Claims, depth: int, out: List[str]) -> bool:
        at = len(out)
        out.append("")
        result = False
        for child in self.children:
            if child.trace(idc, acc, depth + 1, out):
                result = True
                break
        out[at] = f"{'  ' * depth}{self.text}: {_tf(result)}"
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        for child in self.children:
            yield from child.claim_paths()

    def __repr__(self) -> str:
        return f"Or({', '.join(repr(c) for c in self.children)})"


class _Not(_Node):
    __slots__ = ("child",)

    def __init__(self, child: _Node) -> None:
        self.child = child
        self.text = "!" + _wrap(child, 1)

    def test(self, idc: Claims, acc: Claims) -> bool:
        return not self.child.test(idc, acc)

    def why_false(self, idc: Claims, acc: Claims) -> str:
        return self.child.why_true(idc, acc)

    def why_true(self, idc: Claims, acc: Claims) -> str:
        return self.child.why_false(idc, acc)

    def trace(self, idc: Claims, acc: Claims, depth: int, out: List[str]) -> bool:
        at = len(out)
        out.append("")
        result = not self.child.trace(idc, acc, depth + 1, out)
        out[at] = f"{'  ' * depth}{self.text}: {_tf(result)}"
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        return self.child.claim_paths()

    def __repr__(self) -> str:
        return f"Not({self.child!r})"


# -- allow-lists ---------------------------------------------------------------


class _Check(_Node):
    """An allow-list: C{message} explains the result in both directions."""

    __slots__ = ()

    def message(self, idc: Claims) -> str:
        raise NotImplementedError()

    def why_false(self, idc: Claims, acc: Claims) -> str:
        return f"{self.text}: {self.message(idc)}"

    why_true = why_false

    def trace(self, idc: Claims, acc: Claims, depth: int, out: List[str]) -> bool:
        result = self.test(idc, acc)
        out.append(f"{'  ' * depth}{self.text}: {_tf(result)} ({self.message(idc)})")
        return result


class _GroupsCheck(_Check):
    __slots__ = ("groups", "scalarish", "listing")

    def __init__(self, groups: Tuple[str, ...]) -> None:
        self.text = "allowed_groups"
        self.groups = frozenset(groups)
        self.scalarish = any(_scalarish(g) for g in groups)
        self.listing = _clip(", ".join(groups), _LIST_MAX)

    def test(self, idc: Claims, acc: Claims) -> bool:
        v = _lookup(idc, ("groups",))
        if v.__class__ is str:
            return v in self.groups
        if isinstance(v, (list, tuple)):
            for element in v:
                if element.__class__ is str:
                    if element in self.groups:
                        return True
                elif (self.scalarish or isinstance(element, str)) and _scalar_text(element) in self.groups:
                    return True
        return False

    def claim_paths(self) -> Iterator[ClaimPath]:
        yield ("id_token", ("groups",))

    def message(self, idc: Claims) -> str:
        v = _lookup(idc, ("groups",))
        text = f"groups is {_render(v)}"
        if self.test(idc, None):
            return text
        return f"{text}; allowed: {self.listing}"


class _EmailCheck(_Check):
    __slots__ = ("emails", "domains", "suffixes", "verify", "email_listing", "domain_listing")

    def __init__(self, emails: Tuple[str, ...], domains: Tuple[str, ...], verify: bool) -> None:
        self.emails = frozenset(e.lower() for e in emails)
        self.domains = frozenset(domains)
        # An address in one of the domains ends with "@domain" or ".domain";
        # _email_domain then checks the rest of its shape.
        self.suffixes = tuple(f"{c}{d}" for d in domains for c in "@.")
        self.verify = verify
        self.email_listing = _clip(", ".join(emails), _LIST_MAX)
        self.domain_listing = _clip(", ".join(domains), _LIST_MAX)
        if emails and domains:
            self.text = "allowed_emails or allowed_email_domains"
        elif emails:
            self.text = "allowed_emails"
        else:
            self.text = "allowed_email_domains"

    def claim_paths(self) -> Iterator[ClaimPath]:
        yield ("id_token", ("email",))
        if self.verify:
            yield ("id_token", ("email_verified",))

    def listed(self, email: str) -> bool:
        """Whether C{email} is allowed by the lists, verification aside."""
        lowered = email.lower()
        if lowered in self.emails:
            return True
        return bool(self.suffixes) and lowered.endswith(self.suffixes) and _email_domain(lowered) is not None

    def test(self, idc: Claims, acc: Claims) -> bool:
        email = _lookup(idc, ("email",))
        if not isinstance(email, str) or not self.listed(email):
            return False
        return not self.verify or _lookup(idc, ("email_verified",)) is True

    def message(self, idc: Claims) -> str:
        email = _lookup(idc, ("email",))
        if email is _MISSING:
            return "email is missing"
        if not isinstance(email, str):
            return f"email is {_render(email)}, not a string"
        shown = _show(email)
        if not self.listed(email):
            if self.domains and _email_domain(email.lower()) is None:
                return f"{shown} is not a valid email address"
            if self.emails and self.domains:
                return f"{shown} is not one of {self.email_listing} and not in {self.domain_listing}"
            if self.emails:
                return f"{shown} is not one of {self.email_listing}"
            return f"{shown} is not in {self.domain_listing}"
        if not self.verify:
            return f"{shown} is allowed"
        verified = _lookup(idc, ("email_verified",))
        if verified is True:
            return f"{shown} is allowed and verified"
        return f"{shown} is not verified (email_verified is {_render(verified)})"


def _email_domain(lowered: str) -> Optional[str]:
    """The domain of an address with one C{@}, a local part and no empty label; else None."""
    at = lowered.find("@")
    if at <= 0 or lowered.find("@", at + 1) >= 0:
        return None
    domain = lowered[at + 1:]
    if not domain or domain[0] == "." or domain[-1] == "." or ".." in domain:
        return None
    return domain


def _strings(name: str, values: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a string")
    out = tuple(values)
    for v in out:
        if not isinstance(v, str):
            raise TypeError(f"{name} must hold strings, not {type(v).__name__}")
    return out


# -- the parser ----------------------------------------------------------------

_FUNCTIONS: Dict[str, Tuple[type, int, Optional[int]]] = {
    "Equals": (_Equals, 2, 2),
    "Prefix": (_Prefix, 2, 2),
    "Contains": (_Contains, 2, 2),
    "SplitContains": (_SplitContains, 3, 3),
    "OneOf": (_OneOf, 2, None),
}

_TOKENS = ("id_token", "access_token")

_Arg = Tuple[str, int, Sequence[int]]
"""A string argument: its value, the offset of its opening quote, the offset of each character."""


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def fail(self, message: str, position: int) -> NoReturn:
        raise RuleSyntaxError(message, position, self.text)

    def skip(self) -> None:
        text = self.text
        pos = self.pos
        end = len(text)
        while pos < end and text[pos].isspace():
            pos += 1
        self.pos = pos

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def found(self) -> str:
        """What is at the current position, for an "expected X, got Y" message."""
        text = self.text
        pos = self.pos
        if pos >= len(text):
            return "end of rule"
        c = text[pos]
        if _is_word(c):
            end = pos
            while end < len(text) and _is_word(text[end]):
                end += 1
            return f"'{_clip(text[pos:end], 30)}'"
        if c in "`\"":
            return "a string"
        if text.startswith("&&", pos) or text.startswith("||", pos):
            return f"`{text[pos:pos + 2]}`"
        return f"`{c}`"

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"rule is nested too deeply (more than {MAX_DEPTH} levels)", position)

    def parse(self) -> _Node:
        self.skip()
        if self.pos == len(self.text):
            self.fail("empty rule", 0)
        node = self.parse_or()
        self.skip()
        if self.pos < len(self.text):
            if self.peek() == ")":
                self.fail("unmatched `)`", self.pos)
            self.fail(f"expected `&&`, `||` or end of rule, got {self.found()}", self.pos)
        return node

    def parse_or(self) -> _Node:
        terms = [self.parse_and()]
        while True:
            self.skip()
            if self.text.startswith("||", self.pos):
                self.pos += 2
                terms.append(self.parse_and())
            elif self.peek() == "|":
                self.fail("expected `||`, got a single `|`", self.pos)
            else:
                return terms[0] if len(terms) == 1 else _Or(terms)

    def parse_and(self) -> _Node:
        terms = [self.parse_unary()]
        while True:
            self.skip()
            if self.text.startswith("&&", self.pos):
                self.pos += 2
                terms.append(self.parse_unary())
            elif self.peek() == "&":
                self.fail("expected `&&`, got a single `&`", self.pos)
            else:
                return terms[0] if len(terms) == 1 else _And(terms)

    def parse_unary(self) -> _Node:
        self.skip()
        if self.peek() != "!":
            return self.parse_primary()
        self.enter(self.pos)
        self.pos += 1
        child = self.parse_unary()
        self.depth -= 1
        return _Not(child)

    def parse_primary(self) -> _Node:
        self.skip()
        start = self.pos
        c = self.peek()
        if c == "(":
            self.enter(start)
            self.pos += 1
            node = self.parse_or()
            self.skip()
            if self.peek() != ")":
                if self.pos == len(self.text):
                    self.fail("expected `)`, got end of rule", self.pos)
                self.fail(f"expected `&&`, `||` or `)`, got {self.found()}", self.pos)
            self.pos += 1
            self.depth -= 1
            return node
        if c and _is_word(c):
            while self.pos < len(self.text) and _is_word(self.text[self.pos]):
                self.pos += 1
            word = self.text[start:self.pos]
            self.skip()
            if self.peek() != "(":
                if word in _FUNCTIONS:
                    self.fail(f"expected `(` after {word}, got {self.found()}", self.pos)
                self.fail(f"expected a function call, got bare word '{_clip(word, 30)}'", start)
            if word not in _FUNCTIONS:
                self.fail(_unknown_function(word), start)
            return self.parse_call(word)
        self.fail(f"expected a function call, `(` or `!`, got {self.found()}", start)

    def parse_call(self, name: str) -> _Node:
        self.pos += 1  # the "("
        args: List[_Arg] = []
        self.skip()
        if self.peek() == ")":
            close = self.pos
        else:
            while True:
                args.append(self.parse_string())
                self.skip()
                c = self.peek()
                if c == ",":
                    self.pos += 1
                elif c == ")":
                    close = self.pos
                    break
                else:
                    self.fail(f"expected `,` or `)`, got {self.found()}", self.pos)
        self.pos = close + 1
        cls, least, most = _FUNCTIONS[name]
        if len(args) < least:
            at_least = "at least " if most is None else ""
            self.fail(f"{name} takes {at_least}{least} arguments, got {len(args)}", close)
        if most is not None and len(args) > most:
            self.fail(f"{name} takes {most} arguments, got {len(args)}", args[most][1])
        claim, path, access = self.claim(args[0])
        if name == "SplitContains" and args[1][0] == "":
            self.fail("SplitContains separator must not be empty", args[1][1])
        node: _Node = cls(claim, path, access, tuple(a[0] for a in args[1:]))
        return node

    def parse_string(self) -> _Arg:
        self.skip()
        text = self.text
        start = self.pos
        c = self.peek()
        if c == "`":
            end = text.find("`", start + 1)
            if end < 0:
                self.fail("unterminated string", start)
            self.pos = end + 1
            return text[start + 1:end], start, range(start + 1, end)
        if c == '"':
            chars: List[str] = []
            positions: List[int] = []
            i = start + 1
            while i < len(text):
                ch = text[i]
                if ch == '"':
                    self.pos = i + 1
                    return "".join(chars), start, positions
                positions.append(i)
                if ch == "\\" and i + 1 < len(text) and text[i + 1] in '"\\':
                    chars.append(text[i + 1])
                    i += 2
                else:
                    chars.append(ch)
                    i += 1
            self.fail("unterminated string", start)
        self.fail(f"expected a string in backticks or double quotes, got {self.found()}", start)

    def claim(self, arg: _Arg) -> Tuple[str, Tuple[str, ...], bool]:
        """The claim name as written, its path and whether it is read from the access token."""
        value, start, positions = arg
        if value == "":
            self.fail("empty claim name", start)
        if value.strip() != value:
            self.fail("claim name starts or ends with whitespace", start)
        parts: List[str] = []
        current: List[str] = []
        i = 0
        while i < len(value):
            ch = value[i]
            if ch == "\\":
                if i + 1 == len(value):
                    self.fail("claim name ends with a lone `\\`", positions[i])
                escaped = value[i + 1]
                if escaped not in ".\\":
                    self.fail(f"unknown escape `\\{escaped}` in claim name (only `\\.` and `\\\\`)",
                              positions[i])
                current.append(escaped)
                i += 2
                continue
            if ch == ".":
                if not current:
                    self.fail("empty part in claim name", positions[i])
                parts.append("".join(current))
                current = []
            else:
                current.append(ch)
            i += 1
        if not current:
            self.fail("empty part in claim name", positions[len(value) - 1])
        parts.append("".join(current))
        access = False
        if len(parts) > 1 and parts[0] in _TOKENS:
            access = parts[0] == "access_token"
            del parts[0]
        return value, tuple(parts), access


def _unknown_function(word: str) -> str:
    lowered = {f.lower(): f for f in _FUNCTIONS}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    hint = f" (did you mean {lowered[close[0]]}?)" if close else ""
    return f"unknown function '{_clip(word, 30)}'{hint}"


# -- the policy ----------------------------------------------------------------


class Policy:
    """
    A route's compiled rule and allow-lists. Build one with L{Policy.parse}.
    """

    __slots__ = ("_rule", "_checks")

    def __init__(self, rule: Optional[_Node], allow_lists: Sequence[_Node] = ()) -> None:
        self._rule = rule
        self._checks: Tuple[_Node, ...] = tuple(allow_lists) + ((rule,) if rule is not None else ())

    @classmethod
    def parse(
        cls,
        rule: Optional[str] = None,
        *,
        allowed_groups: Sequence[str] = (),
        allowed_emails: Sequence[str] = (),
        allowed_email_domains: Sequence[str] = (),
        require_email_verified: bool = True,
    ) -> Policy:
        """
        Compile a rule and allow-lists.

        @param rule: the rule text, or None for none (an empty rule is an error).
        @param allowed_email_domains: domain names; letter case and one final
            dot are ignored.
        @raise RuleSyntaxError: the rule is malformed.
        @raise TypeError: a list is a string, or holds something else than strings.
        """
        node = None
        if rule is not None:
            if not isinstance(rule, str):
                raise TypeError(f"rule must be a string, not {type(rule).__name__}")
            node = _Parser(rule).parse()
        groups = _strings("allowed_groups", allowed_groups)
        emails = _strings("allowed_emails", allowed_emails)
        domains = tuple(
            d.lower().rstrip(".") for d in _strings("allowed_email_domains", allowed_email_domains)
        )
        checks: List[_Node] = []
        if groups:
            checks.append(_GroupsCheck(groups))
        if emails or domains:
            checks.append(_EmailCheck(emails, domains, require_email_verified))
        return cls(node, checks)

    @property
    def rule(self) -> Optional[str]:
        """The rule in canonical form (one space around operators, backticks), or None."""
        return None if self._rule is None else self._rule.text

    def claim_paths(self) -> FrozenSet[ClaimPath]:
        """
        Every claim the rule and the allow-lists read, whatever the claims
        of a request: C{(token, path)} with C{token} C{"id_token"} (the
        session's claims) or C{"access_token"}, and C{path} the claim's name
        split at its unescaped dots (C{("realm_access", "roles")}).
        """
        return frozenset(path for check in self._checks for path in check.claim_paths())

    @property
    def always_allows(self) -> bool:
        """True when there is no rule and no allow-list."""
        return not self._checks

    def evaluate(self, id_claims: Mapping[str, Any], access_claims: Optional[Mapping[str, Any]] = None
                 ) -> Decision:
        """
        Decide on a request from the claims of its ID token and access token
        (None when there is no access token, or it is opaque).
        """
        for check in self._checks:
            if not check.test(id_claims, access_claims):
                return Decision(False, _clip(check.why_false(id_claims, access_claims), _REASON_MAX))
        return _ALLOWED

    def explain(self, id_claims: Mapping[str, Any], access_claims: Optional[Mapping[str, Any]] = None
                ) -> List[str]:
        """
        A trace of L{evaluate}: one line per check and sub-expression it
        evaluates, in order, indented by two spaces per level, each ending in
        C{: true} or C{: false} (and, for a function or an allow-list, what
        the claim is). Checks that L{evaluate} skips are not listed.
        """
        out: List[str] = []
        for check in self._checks:
            if not check.trace(id_claims, access_claims, 0, out):
                break
        return out

    def __repr__(self) -> str:
        lists = ", ".join(c.text for c in self._checks if c is not self._rule)
        return f"<Policy rule={self.rule!r} allow_lists={lists!r}>"
