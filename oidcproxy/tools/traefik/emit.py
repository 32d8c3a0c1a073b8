"""
Writing the TOML: sections of entries, each entry on one line with an
optional comment after it (a FIXME, where a value came from), and comment
lines before a section.

tomli-w writes every key and scalar, so quoting and escaping follow a
maintained TOML writer. It writes neither comments nor inline tables (a
table becomes a C{[section]}, an array spans several lines), and the
output needs both: a comment after the value it is about, and secret
references written as docs/reference/config-file.rst shows them (C{{ credential = "NAME" }}).
So arrays and inline tables of those scalars are joined here, on one line.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import attr
import tomli_w


@attr.s(auto_attribs=True)
class Entry:
    key: str
    value: Any
    comment: Optional[str] = None


@attr.s(auto_attribs=True)
class Section:
    """One table of the output."""

    header: Optional[str]
    """C{oidc} for C{[oidc]}; C{[[routes]]} or C{[providers.NAME]} (brackets given) as is;
    None: top level."""
    entries: List[Entry] = attr.Factory(list)
    notes: List[str] = attr.Factory(list)
    """Comment lines before the header."""

    def set(self, key: str, value: Any, comment: Optional[str] = None) -> None:
        self.entries.append(Entry(key, value, comment))

    def has(self, key: str) -> bool:
        return any(e.key == key for e in self.entries)


def render(sections: Sequence[Section]) -> List[str]:
    """
    The lines of C{sections}, each after a blank line. A section without
    entries is left out, but for C{[headers]}: an empty table there means
    "no identity headers", not the defaults.
    """
    out: List[str] = []
    for section in sections:
        if section.header is not None and not section.entries and section.header != "headers":
            continue
        out.append("")
        out.extend(comment(n) for n in section.notes)
        if section.header is not None:
            header = section.header
            out.append(header if header.startswith("[") else f"[{toml_key(header)}]")
        for e in section.entries:
            line = f"{toml_key(e.key)} = {toml_value(e.value)}"
            if e.comment:
                line += "  " + comment(e.comment)
            out.append(line)
    return out


def comment(text: str) -> str:
    """A one-line TOML comment (control characters, newlines included, become spaces)."""
    clean = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    return "# " + clean if clean else "#"


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    return _scalar(text)


def toml_key(key: str) -> str:
    """A bare key when it can be one, else a quoted key."""
    line = tomli_w.dumps({key: 0})
    return line[: -len(" = 0\n")]


def toml_value(value: Any) -> str:
    """Strings, booleans, integers, lists and (inline) tables of them."""
    if isinstance(value, (bool, int, str)):
        return _scalar(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _scalar(value: Any) -> str:
    """tomli-w's text of one string, boolean or integer (its line is C{v = TEXT})."""
    line = tomli_w.dumps({"v": value})
    return line[len("v = "):-1]
