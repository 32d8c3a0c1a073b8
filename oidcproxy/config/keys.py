"""
Every configuration key, recorded from the parser itself: L{config_keys}
runs L{read_config} over a table that answers every question with "absent"
yet says every key is there, so each getter's declaration (kind, default,
allowed values, documentation) is recorded, on every branch. The reference
in the documentation is generated from this, so it cannot drift from what
the parser accepts.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import attr

from .parse import read_config
from .reader import ConfigError, Problems, Table


@attr.s(frozen=True, auto_attribs=True)
class Key:
    """
    One key as the parser reads it.

    @ivar path: the key path, C{"session.lifetime"}; the keys of each
        C{[[routes]]} entry are C{"routes.path"} and so on.
    @ivar kind: C{"string"}, C{"boolean"}, C{"integer"}, C{"duration"},
        C{"size"}, C{"choice"}, C{"list of strings"}, C{"secret"},
        C{"list of secrets"}, C{"table"} or C{"array of tables"}.
    @ivar default: what the parser uses when the key is absent, as parsed
        (seconds, bytes, tuples); None when the key is then unset.
    @ivar default_text: the default in words, where it is another key's
        value or a rule (then C{default} is not it).
    @ivar allowed: what values are allowed, in words (from the check's
        docstring, the choices or the bounds).
    @ivar inherits: for a route's key that overrides C{[upstream]}: the
        C{[upstream]} key it defaults to.
    @ivar free: a table whose keys are the user's (C{[headers]}).
    """

    path: str
    kind: str
    default: Any
    doc: str
    default_text: Optional[str] = None
    required: bool = False
    choices: Tuple[str, ...] = ()
    allowed: str = ""
    inherits: Optional[str] = None
    free: bool = False

    @property
    def table(self) -> str:
        """The table the key is in (C{""} at the top level)."""
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]

    @property
    def is_table(self) -> bool:
        return self.kind in ("table", "array of tables") and not self.free

    def default_toml(self) -> Optional[str]:
        """The default as TOML, or None when it is not a literal (unset, required, a rule)."""
        if self.default_text is not None or self.default is None or self.required:
            return None
        return toml_value(self.kind, self.default)

    def default_words(self) -> str:
        """The default as the reference states it."""
        if self.required:
            return "required"
        if self.inherits is not None:
            return f"{self.inherits}"
        if self.default_text is not None:
            return self.default_text
        literal = self.default_toml()
        return literal if literal is not None else "not set"


def format_duration(seconds: float) -> str:
    """C{seconds} as a duration string the parser reads back: C{"8h"}, C{"75s"}, C{"500ms"}."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == 0:
        return "0s"
    return f"{seconds * 1000:g}ms"


def format_size(size: int) -> Any:
    """C{size} as the file would write it: C{"10MB"} for a round number, else the integer."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


def toml_value(kind: str, value: Any) -> str:
    """A parsed default written back as a TOML value."""
    if kind == "duration":
        value = format_duration(value)
    elif kind == "size":
        value = format_size(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_value("", v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _allowed(check: Optional[Callable[[Any], Any]], choices: Sequence[str], bounds: str) -> str:
    if choices:
        return ", ".join(f"``{c}``" for c in choices)
    words = []
    doc = getattr(check, "__doc__", None) if check not in (None, str) else None
    if doc:
        words.append(_from_epytext(doc.strip().split("\n\n")[0], check))
    if bounds:
        words.append(bounds)
    return "; ".join(words)


def _from_epytext(text: str, check: Any) -> str:
    """
    A check's docstring in reStructuredText: C{x} as literal; L{NAME} as the
    values of the tuple it names, or dropped with its parentheses (a name of
    the code means nothing to a reader).
    """
    names = getattr(sys.modules.get(getattr(check, "__module__", "")), "__dict__", {})

    def link(m: re.Match[str]) -> str:
        value = names.get(m.group(1))
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return ", ".join(f"``{v}``" for v in value)
        return ""
    text = re.sub(r"L\{([^}]*)\}", link, " ".join(text.split()))
    text = re.sub(r"\s*\(\)", "", text)
    return re.sub(r"C\{([^}]*)\}", r"``\1``", text)


class _Recorder(Table):
    """A table that holds nothing but says it has every key: each getter declares its key."""

    def __init__(self, keys: Dict[str, Key], path: str) -> None:
        super().__init__(Problems(), {}, path)
        self._keys = keys

    def declare(self, key: str, kind: str, default: Any = None, *, doc: str,
                default_text: Optional[str] = None, required: bool = False,
                choices: Sequence[str] = (), bounds: str = "",
                check: Optional[Callable[[Any], Any]] = None) -> None:
        path = self.keypath(key)
        if path in self._keys:  # read twice (optional_boolean, a shared reader): the first says it
            return
        self._keys[path] = Key(path=path, kind=kind, default=default, doc=doc,
                               default_text=default_text, required=required,
                               choices=tuple(choices), allowed=_allowed(check, choices, bounds))

    def has(self, key: str) -> bool:
        return True

    def table(self, key: str, *, doc: str = "", default: Any = None) -> Optional[Table]:
        self.declare(key, "table", default, doc=doc)
        self._known.append(key)
        return _Recorder(self._keys, self.keypath(key))

    def tables(self, key: str, *, doc: str = "") -> List[Table]:
        self.declare(key, "array of tables", doc=doc)
        self._known.append(key)
        return [_Recorder(self._keys, self.keypath(key))]

    def items(self) -> List[Tuple[str, Any]]:
        self._keys[self._path] = attr.evolve(self._keys[self._path], free=True)
        return []


def config_keys() -> Tuple[Key, ...]:
    """Every key the parser reads, tables included, in the order it reads them."""
    keys: Dict[str, Key] = {}
    try:
        read_config(_Recorder(keys, ""), "(reference)")
    except ConfigError:
        pass  # the empty values the recorder hands out need not make a valid file
    out = []
    for key in keys.values():
        table, _, name = key.path.rpartition(".")
        if table == "routes" and f"upstream.{name}" in keys:
            key = attr.evolve(key, inherits=f"upstream.{name}")
        out.append(key)
    return tuple(out)


def tables(keys: Sequence[Key]) -> List[Tuple[Optional[Key], List[Key]]]:
    """The keys grouped by table: the top level first (no table key), then each table."""
    groups: Dict[str, List[Key]] = {"": []}
    heads: Dict[str, Key] = {}
    for key in keys:
        if key.is_table or (key.free and not key.table):  # [headers]: a table of its own
            heads[key.path] = key
            groups.setdefault(key.path, [])
        else:
            groups.setdefault(key.table, []).append(key)
    return [(heads.get(path), members) for path, members in groups.items()]
