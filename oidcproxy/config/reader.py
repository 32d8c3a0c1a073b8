"""
The reader of a parsed TOML document: typed getters per table that record
every problem under its key path and go on with a fallback, so one run
reports everything wrong with a file; and the error that lists them.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from .secrets import Secret, read_secret
from .values import one_of, parse_duration, parse_size

T = TypeVar("T")


class ConfigError(Exception):
    """
    The configuration is invalid.

    @ivar source: the file that was read.
    @ivar problems: one message per problem, each starting with its key path.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__(source, problems)
        self.source = source
        self.problems = list(problems)

    def lines(self) -> List[str]:
        return [f"config: {p} (in {self.source})" for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class Problems:
    """
    The problems found so far, each C{"key.path: what is wrong"}.

    Unknown keys come first in L{items}, whichever table they are in: a
    misspelt key is often the cause of the problems after it (C{upstrem}
    leaves C{upstream} missing, C{[odic]} leaves the routes without an
    C{[oidc]} table), and the cause should be read before its consequences.
    """

    def __init__(self) -> None:
        self._unknown: List[str] = []
        self._others: List[str] = []

    @property
    def items(self) -> List[str]:
        """Every problem: the unknown keys, then the others, each in the order found."""
        return self._unknown + self._others

    def add(self, keypath: str, message: str) -> None:
        self._others.append(f"{keypath}: {message}" if keypath else message)

    def unknown(self, keypath: str, message: str) -> None:
        """An unknown key (listed before the other problems)."""
        self._unknown.append(f"{keypath}: {message}")


_MISSING: Any = object()


class Table:
    """
    A TOML table being read: typed getters that record problems under their key
    path and return a fallback, so validation goes on and reports everything.
    """

    def __init__(self, problems: Problems, data: Dict[str, Any], path: str) -> None:
        self._problems = problems
        self._data = data
        self._path = path
        self._known: List[str] = []

    @property
    def problems(self) -> Problems:
        return self._problems

    def keypath(self, key: str) -> str:
        if not key.isprintable():
            # A quoted TOML key may hold a newline: the message stays one line.
            key = repr(key)
        return f"{self._path}.{key}" if self._path else key

    def has(self, key: str) -> bool:
        return key in self._data

    def problem(self, key: str, message: str) -> None:
        self._problems.add(self.keypath(key), message)

    def _raw(self, key: str, kinds: Tuple[type, ...], what: str, default: Any) -> Any:
        self._known.append(key)
        if key not in self._data:
            return _MISSING if default is _MISSING else default
        value = self._data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.problem(key, f"expected {what}, got {describe(value)}")
            return _MISSING if default is _MISSING else default
        return value

    def _parsed(self, key: str, kinds: Tuple[type, ...], what: str, default: T,
                parse: Callable[[Any], T], required: bool = False) -> T:
        value = self._raw(key, kinds, what, _MISSING)
        if value is _MISSING:
            if required and key not in self._data:
                self.problem(key, "is required")
            return default
        try:
            return parse(value)
        except ValueError as e:
            self.problem(key, str(e))
            return default

    def declare(self, key: str, kind: str, default: Any = None, *, doc: str,
                default_text: Optional[str] = None, required: bool = False,
                choices: Sequence[str] = (), bounds: str = "",
                check: Optional[Callable[[Any], Any]] = None) -> None:
        """
        What a getter reads, for the reference (L{oidcproxy.config.keys}
        records it; reading a file ignores it).

        @param doc: what the key does, in reStructuredText.
        @param default_text: the default in words, where the C{default}
            passed to the getter stands for another key's value or a rule.
        """

    def string(self, key: str, default: Any = None, required: bool = False,
               check: Callable[[str], Any] = str, *, doc: str = "",
               default_text: Optional[str] = None) -> Any:
        self.declare(key, "string", default, doc=doc, default_text=default_text,
                     required=required, check=check)
        return self._parsed(key, (str,), "a string", default, check, required)

    def boolean(self, key: str, default: bool, *, doc: str = "",
                default_text: Optional[str] = None) -> bool:
        self.declare(key, "boolean", default, doc=doc, default_text=default_text)
        return self._parsed(key, (bool,), "true or false", default, bool)

    def integer(self, key: str, default: int, minimum: int = 0, maximum: Optional[int] = None,
                *, doc: str = "", default_text: Optional[str] = None) -> int:
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        self.declare(key, "integer", default, doc=doc, default_text=default_text, bounds=bound)

        def check(v: int) -> int:
            if v < minimum or (maximum is not None and v > maximum):
                raise ValueError(f"{v} is out of range; expected {bound}")
            return v
        return self._parsed(key, (int,), "an integer", default, check)

    def duration(self, key: str, default: float, positive: bool = False, *, doc: str = "",
                 default_text: Optional[str] = None) -> float:
        self.declare(key, "duration", default, doc=doc, default_text=default_text,
                     bounds="longer than zero" if positive else "")

        def check(v: str) -> float:
            seconds = parse_duration(v)
            if positive and seconds <= 0:
                raise ValueError(f"{v!r} must be longer than zero")
            return seconds
        return self._parsed(key, (str,), 'a duration string like "30s"', default, check)

    def size(self, key: str, default: int, *, doc: str = "") -> int:
        self.declare(key, "size", default, doc=doc)
        return self._parsed(key, (str, int), 'a size like "10MB"', default, parse_size)

    def choice(self, key: str, choices: Sequence[str], default: str, *, doc: str = "") -> str:
        self.declare(key, "choice", default, doc=doc, choices=choices)

        def check(v: str) -> str:
            if v not in choices:
                raise ValueError(f"{v!r} is not one of {', '.join(map(repr, choices))}")
            return v
        return self._parsed(key, (str,), "a string", default, check)

    def strings(self, key: str, default: Tuple[str, ...],
                check: Callable[[str], T] = str,  # type: ignore[assignment]
                *, choices: Sequence[str] = (), doc: str = "",
                default_text: Optional[str] = None) -> Tuple[T, ...]:
        """A list of strings, each passed to C{check} (or one of C{choices}, when given)."""
        self.declare(key, "list of strings", default, doc=doc, default_text=default_text,
                     choices=choices, check=check)
        if choices:
            def check(v: str) -> T:
                return one_of(v, choices)  # type: ignore[return-value]
        values = self._raw(key, (list,), "a list of strings", _MISSING)
        if values is _MISSING:
            return default  # type: ignore[return-value]
        out = []
        for i, v in enumerate(values):
            where = f"{key}[{i}]"
            if not isinstance(v, str):
                self.problem(where, f"expected a string, got {describe(v)}")
                continue
            try:
                out.append(check(v))
            except ValueError as e:
                self.problem(where, str(e))
        return tuple(out)

    def secret(self, key: str, required: bool = False, *, doc: str = "") -> Optional[Secret]:
        self.declare(key, "secret", doc=doc, required=required)
        self._known.append(key)
        if key not in self._data:
            if required:
                self.problem(key, "is required")
            return None
        return self._secret(self.keypath(key), self._data[key])

    def secrets(self, key: str, *, doc: str = "") -> Tuple[Secret, ...]:
        self.declare(key, "list of secrets", doc=doc)
        values = self._raw(key, (list,), "a list of secrets", _MISSING)
        if values is _MISSING:
            return ()
        out = []
        for i, v in enumerate(values):
            s = self._secret(f"{self.keypath(key)}[{i}]", v)
            if s is not None:
                out.append(s)
        return tuple(out)

    def _secret(self, keypath: str, value: Any) -> Optional[Secret]:
        try:
            return read_secret(value)
        except ValueError as e:
            self._problems.add(keypath, str(e))
            return None

    def optional_boolean(self, key: str, *, doc: str = "", default_text: str = "") -> Optional[bool]:
        """A boolean whose default depends on other keys: None when absent."""
        self.declare(key, "boolean", None, doc=doc, default_text=default_text)
        if self.has(key):
            return self.boolean(key, False)
        self._known.append(key)
        return None

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as written, unchecked, for a check that needs another key's value."""
        return self._data.get(key, default)

    def table(self, key: str, *, doc: str = "", default: Any = None) -> Optional[Table]:
        """Table C{key}; C{default} is what stands for it when absent, for the reference."""
        self.declare(key, "table", default, doc=doc)
        value = self._raw(key, (dict,), "a table", _MISSING)
        if value is _MISSING:
            return None
        return Table(self._problems, value, self.keypath(key))

    def tables(self, key: str, *, doc: str = "") -> List[Table]:
        self.declare(key, "array of tables", doc=doc)
        values = self._raw(key, (list,), f"an array of tables ([[{key}]])", _MISSING)
        if values is _MISSING:
            return []
        out = []
        for i, v in enumerate(values):
            where = f"{self.keypath(key)}[{i}]"
            if not isinstance(v, dict):
                self._problems.add(where, f"expected a table, got {describe(v)}")
                continue
            out.append(Table(self._problems, v, where))
        return out

    def items(self) -> List[Tuple[str, Any]]:
        """All entries, for free-form tables like C{[headers]}."""
        self._known.extend(self._data)
        return list(self._data.items())

    def done(self) -> None:
        """Report every key that no getter asked for."""
        for key in self._data:
            if key not in self._known:
                hint = difflib.get_close_matches(key, self._known, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                self._problems.unknown(self.keypath(key), f"unknown key{extra}")


def describe(value: Any) -> str:
    """A value of the wrong type, as a message names it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


