"""
The compiled rule: a small tree of nodes. C{test} is the hot path (no
parsing, no regular expressions, C{&&} and C{||} short-circuit);
C{why_false}, C{why_true} and C{trace} explain a result afterwards.

Every method takes C{now}, the time of the request (seconds since the epoch,
from the guard's clock) that L{NotOlderThan} measures ages against: no node
reads a clock, so one request sees one time and tests choose it.
"""

from __future__ import annotations

from typing import Any, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from ...core.numbers import finite_number
from ..values import parse_duration
from .claims import (
    MISSING,
    ClaimPath,
    Claims,
    lookup,
    quote,
    render,
    scalar_text,
    scalarish,
    seconds,
    tf,
)


class Node:
    """
    A node of a compiled rule (or an allow-list check).

    C{test} is the hot path. C{why_false}/C{why_true} explain a result already
    known, and C{trace} appends one line per node it evaluates to C{out}.
    """

    __slots__ = ("text",)
    prec = 2  # 0: ||, 1: &&, 2: ! and calls; decides where the text needs parentheses
    text: str

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        raise NotImplementedError()

    def why_false(self, idc: Claims, acc: Claims, now: float) -> str:
        raise NotImplementedError()

    def why_true(self, idc: Claims, acc: Claims, now: float) -> str:
        raise NotImplementedError()

    def trace(self, idc: Claims, acc: Claims, now: float, depth: int, out: List[str]) -> bool:
        raise NotImplementedError()

    def claim_paths(self) -> Iterator[ClaimPath]:
        """The claims this node (and the nodes under it) read."""
        raise NotImplementedError()


def wrap(node: Node, prec: int) -> str:
    return f"({node.text})" if node.prec <= prec else node.text


class Function(Node):
    """A function call; its first argument is a claim."""

    __slots__ = ("claim", "path", "access", "args")
    name = ""

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        self.claim = claim
        self.path = path
        self.access = access
        self.args = args
        self.text = f"{self.name}({', '.join(quote(a) for a in (claim, *args))})"

    def detail(self, idc: Claims, acc: Claims, now: float) -> str:
        claims = acc if self.access else idc
        if claims is None:
            return f"{self.claim} is missing (no access token)"
        return f"{self.claim} is {render(lookup(claims, self.path))}"

    def why_false(self, idc: Claims, acc: Claims, now: float) -> str:
        return f"{self.text} is false: {self.detail(idc, acc, now)}"

    def why_true(self, idc: Claims, acc: Claims, now: float) -> str:
        return f"{self.text} is true: {self.detail(idc, acc, now)}"

    def trace(self, idc: Claims, acc: Claims, now: float, depth: int, out: List[str]) -> bool:
        result = self.test(idc, acc, now)
        out.append(f"{'  ' * depth}{self.text}: {tf(result)} ({self.detail(idc, acc, now)})")
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        yield ("access_token" if self.access else "id_token", self.path)

    def __repr__(self) -> str:
        token = "access" if self.access else "id"
        args = "".join(f", {a!r}" for a in self.args)
        return f"{self.name}({token}{list(self.path)!r}{args})"


class Equals(Function):
    __slots__ = ("value",)
    name = "Equals"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.value = args[0]

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        v = lookup(acc if self.access else idc, self.path)
        if v.__class__ is str:
            return v == self.value
        return scalar_text(v) == self.value


class Prefix(Function):
    __slots__ = ("value",)
    name = "Prefix"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.value = args[0]

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        v = lookup(acc if self.access else idc, self.path)
        if isinstance(v, str):
            return v.startswith(self.value)
        if isinstance(v, (list, tuple)):
            for element in v:
                if isinstance(element, str) and element.startswith(self.value):
                    return True
        return False


def array_has(array: Sequence[Any], value: str, scalarish: bool) -> bool:
    if value in array:  # a str never equals a non-str: this finds string elements only
        return True
    if scalarish:
        for element in array:
            if element.__class__ is not str and scalar_text(element) == value:
                return True
    return False


class Contains(Function):
    __slots__ = ("value", "scalarish")
    name = "Contains"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.value = args[0]
        self.scalarish = scalarish(self.value)

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        v = lookup(acc if self.access else idc, self.path)
        if isinstance(v, str):
            return self.value in v
        if isinstance(v, (list, tuple)):
            return array_has(v, self.value, self.scalarish)
        return False


class SplitContains(Function):
    __slots__ = ("sep", "value", "simple")
    name = "SplitContains"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.sep, self.value = args
        # With a one-character separator that is not in the value, the parts
        # are the maximal runs between separators: find the value bounded by
        # separators or the ends, without building the list of parts.
        self.simple = len(self.sep) == 1 and self.sep not in self.value

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        s = lookup(acc if self.access else idc, self.path)
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


class OneOf(Function):
    __slots__ = ("values", "scalarish")
    name = "OneOf"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.values: FrozenSet[str] = frozenset(args)
        self.scalarish = any(scalarish(a) for a in args)

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        v = lookup(acc if self.access else idc, self.path)
        if v.__class__ is str:
            return v in self.values
        if isinstance(v, (list, tuple)):
            values = self.values
            for element in v:
                if element.__class__ is str:
                    if element in values:
                        return True
                elif self.scalarish or isinstance(element, str):
                    if scalar_text(element) in values:
                        return True
            return False
        return scalar_text(v) in self.values


def duration(text: str) -> float:
    """
    The seconds of a L{NotOlderThan} duration (C{"15m"}, C{"30s"}, C{"1h"},
    as the configuration writes durations).

    @raise ValueError: not a duration, or not more than zero.
    """
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} is no time at all")
    return value


def age(value: Any, now: float) -> Optional[float]:
    """
    How long before C{now} a NumericDate claim is (negative: after it); None
    when the claim is not a NumericDate: a finite JSON number, not a boolean.
    """
    number = finite_number(value)
    return None if number is None else now - number


class NotOlderThan(Function):
    """
    The claim is a NumericDate (C{auth_time}, C{iat}) at most C{seconds}
    before the time of the request; one in the future counts as fresh, as
    an IdP's clock a little ahead of ours makes it.
    """

    __slots__ = ("seconds",)
    name = "NotOlderThan"

    def __init__(self, claim: str, path: Tuple[str, ...], access: bool, args: Tuple[str, ...]) -> None:
        super().__init__(claim, path, access, args)
        self.seconds = duration(args[0])

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        ago = age(lookup(acc if self.access else idc, self.path), now)
        return ago is not None and ago <= self.seconds

    def detail(self, idc: Claims, acc: Claims, now: float) -> str:
        claims = acc if self.access else idc
        if claims is None:
            return f"{self.claim} is missing (no access token)"
        value = lookup(claims, self.path)
        ago = age(value, now)
        if ago is None:
            if value is MISSING:
                return f"{self.claim} is missing"
            return f"{self.claim} is {render(value)}, not a NumericDate"
        if ago < 0:
            return f"{self.claim} is {seconds(-ago)}s in the future"
        limit = "at most" if ago <= self.seconds else "more than"
        return f"{self.claim} is {seconds(ago)}s ago, {limit} {self.args[0]}"


class And(Node):
    __slots__ = ("children",)
    prec = 1

    def __init__(self, children: Sequence[Node]) -> None:
        self.children = tuple(children)
        self.text = " && ".join(wrap(c, 1) for c in self.children)

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        for child in self.children:
            if not child.test(idc, acc, now):
                return False
        return True

    def why_false(self, idc: Claims, acc: Claims, now: float) -> str:
        for child in self.children:
            if not child.test(idc, acc, now):
                return child.why_false(idc, acc, now)
        return f"{self.text} is true"  # pragma: no cover - only called when false

    def why_true(self, idc: Claims, acc: Claims, now: float) -> str:
        return "; ".join(child.why_true(idc, acc, now) for child in self.children)

    def trace(self, idc: Claims, acc: Claims, now: float, depth: int, out: List[str]) -> bool:
        at = len(out)
        out.append("")
        result = True
        for child in self.children:
            if not child.trace(idc, acc, now, depth + 1, out):
                result = False
                break
        out[at] = f"{'  ' * depth}{self.text}: {tf(result)}"
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        for child in self.children:
            yield from child.claim_paths()

    def __repr__(self) -> str:
        return f"And({', '.join(repr(c) for c in self.children)})"


class Or(Node):
    __slots__ = ("children",)
    prec = 0

    def __init__(self, children: Sequence[Node]) -> None:
        self.children = tuple(children)
        self.text = " || ".join(wrap(c, 0) for c in self.children)

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        for child in self.children:
            if child.test(idc, acc, now):
                return True
        return False

    def why_false(self, idc: Claims, acc: Claims, now: float) -> str:
        return "; ".join(child.why_false(idc, acc, now) for child in self.children)

    def why_true(self, idc: Claims, acc: Claims, now: float) -> str:
        for child in self.children:
            if child.test(idc, acc, now):
                return child.why_true(idc, acc, now)
        return f"{self.text} is false"  # pragma: no cover - only called when true

    def trace(self, idc: Claims, acc: Claims, now: float, depth: int, out: List[str]) -> bool:
        at = len(out)
        out.append("")
        result = False
        for child in self.children:
            if child.trace(idc, acc, now, depth + 1, out):
                result = True
                break
        out[at] = f"{'  ' * depth}{self.text}: {tf(result)}"
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        for child in self.children:
            yield from child.claim_paths()

    def __repr__(self) -> str:
        return f"Or({', '.join(repr(c) for c in self.children)})"


class Not(Node):
    __slots__ = ("child",)

    def __init__(self, child: Node) -> None:
        self.child = child
        self.text = "!" + wrap(child, 1)

    def test(self, idc: Claims, acc: Claims, now: float) -> bool:
        return not self.child.test(idc, acc, now)

    def why_false(self, idc: Claims, acc: Claims, now: float) -> str:
        return self.child.why_true(idc, acc, now)

    def why_true(self, idc: Claims, acc: Claims, now: float) -> str:
        return self.child.why_false(idc, acc, now)

    def trace(self, idc: Claims, acc: Claims, now: float, depth: int, out: List[str]) -> bool:
        at = len(out)
        out.append("")
        result = not self.child.trace(idc, acc, now, depth + 1, out)
        out[at] = f"{'  ' * depth}{self.text}: {tf(result)}"
        return result

    def claim_paths(self) -> Iterator[ClaimPath]:
        return self.child.claim_paths()

    def __repr__(self) -> str:
        return f"Not({self.child!r})"

