"""
The parser of the rule language (the grammar is in L{oidcproxy.config.policy}):
rule text to a tree of L{nodes}, with errors that point at the character.
"""

from __future__ import annotations

import difflib
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple

from .claims import clip, quote, render
from .nodes import (
    And,
    Contains,
    Equals,
    Node,
    Not,
    NotOlderThan,
    OneOf,
    Or,
    Prefix,
    SplitContains,
    duration,
)

MAX_DEPTH = 64
"""The deepest nesting of parentheses and C{!} a rule may have."""


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
        # The rule and the caret on lines of their own, indented alike, so the
        # caret lines up whatever is put before the message (the key's name
        # in a configuration problem); one character for one character.
        shown = "".join(c if c.isprintable() else " " for c in self.rule)
        return (f"{self.message} at position {self.position}:\n"
                f"    {shown}\n    {' ' * self.position}^")



FUNCTIONS: Dict[str, Tuple[type, int, Optional[int]]] = {
    "Equals": (Equals, 2, 2),
    "Prefix": (Prefix, 2, 2),
    "Contains": (Contains, 2, 2),
    "SplitContains": (SplitContains, 3, 3),
    "OneOf": (OneOf, 2, None),
    "NotOlderThan": (NotOlderThan, 2, 2),
}

TOKENS = ("id_token", "access_token")

Arg = Tuple[str, int, Sequence[int]]
"""A string argument: its value, the offset of its opening quote, the offset of each character."""


def is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


class Parser:
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
        if is_word(c):
            end = pos
            while end < len(text) and is_word(text[end]):
                end += 1
            return f"'{clip(text[pos:end], 30)}'"
        if c in "`\"":
            return "a string"
        if text.startswith("&&", pos) or text.startswith("||", pos):
            return f"`{text[pos:pos + 2]}`"
        return f"`{c}`"

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"rule is nested too deeply (more than {MAX_DEPTH} levels)", position)

    def parse(self) -> Node:
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

    def parse_or(self) -> Node:
        terms = [self.parse_and()]
        while True:
            self.skip()
            if self.text.startswith("||", self.pos):
                self.pos += 2
                terms.append(self.parse_and())
            elif self.peek() == "|":
                self.fail("expected `||`, got a single `|`", self.pos)
            else:
                return terms[0] if len(terms) == 1 else Or(terms)

    def parse_and(self) -> Node:
        terms = [self.parse_unary()]
        while True:
            self.skip()
            if self.text.startswith("&&", self.pos):
                self.pos += 2
                terms.append(self.parse_unary())
            elif self.peek() == "&":
                self.fail("expected `&&`, got a single `&`", self.pos)
            else:
                return terms[0] if len(terms) == 1 else And(terms)

    def parse_unary(self) -> Node:
        self.skip()
        if self.peek() != "!":
            return self.parse_primary()
        self.enter(self.pos)
        self.pos += 1
        child = self.parse_unary()
        self.depth -= 1
        return Not(child)

    def parse_primary(self) -> Node:
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
        if c and is_word(c):
            while self.pos < len(self.text) and is_word(self.text[self.pos]):
                self.pos += 1
            word = self.text[start:self.pos]
            self.skip()
            if self.peek() != "(":
                if word in FUNCTIONS:
                    self.fail(f"expected `(` after {word}, got {self.found()}", self.pos)
                self.fail(f"expected a function call, got bare word '{clip(word, 30)}'", start)
            if word not in FUNCTIONS:
                self.fail(unknown_function(word), start)
            return self.parse_call(word)
        self.fail(f"expected a function call, `(` or `!`, got {self.found()}", start)

    def parse_call(self, name: str) -> Node:
        self.pos += 1  # the "("
        args: List[Arg] = []
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
        cls, least, most = FUNCTIONS[name]
        if len(args) < least:
            at_least = "at least " if most is None else ""
            self.fail(f"{name} takes {at_least}{least} arguments, got {len(args)}", close)
        if most is not None and len(args) > most:
            self.fail(f"{name} takes {most} arguments, got {len(args)}", args[most][1])
        claim, path, access = self.claim(args[0])
        if name == "SplitContains" and args[1][0] == "":
            self.fail("SplitContains separator must not be empty", args[1][1])
        if name == "NotOlderThan":
            try:
                duration(args[1][0])
            except ValueError:
                text = args[1][0]
                shown = clip(quote(text), 40) if text.isprintable() else render(text)
                self.fail("NotOlderThan takes a duration more than zero, like `15m`, `30s` or "
                          f"`1h`, not {shown}", args[1][1])
        node: Node = cls(claim, path, access, tuple(a[0] for a in args[1:]))
        return node

    def parse_string(self) -> Arg:
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

    def claim(self, arg: Arg) -> Tuple[str, Tuple[str, ...], bool]:
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
        if len(parts) > 1 and parts[0] in TOKENS:
            access = parts[0] == "access_token"
            del parts[0]
        return value, tuple(parts), access


def unknown_function(word: str) -> str:
    lowered = {f.lower(): f for f in FUNCTIONS}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    hint = f" (did you mean {lowered[close[0]]}?)" if close else ""
    return f"unknown function '{clip(word, 30)}'{hint}"

