"""
Claims as the rule language sees them: reading a claim path, the JSON text
of a scalar, and the short renderings that reasons and traces show.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Tuple

REASON_MAX = 200
"""The longest reason of a denial, in characters."""
VALUE_MAX = 60
"""The longest claim value shown in a reason or a trace."""
LIST_MAX = 80
"""The longest allow-list shown in a reason."""

Claims = Optional[Mapping[str, Any]]

ClaimPath = Tuple[str, Tuple[str, ...]]
"""A claim a policy reads: its token (C{"id_token"} or C{"access_token"}) and its path."""


class Missing:
    """The value of a claim that is not there (unlike a claim whose value is C{null})."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = Missing()


def lookup(claims: Claims, path: Tuple[str, ...]) -> Any:
    """The value at C{path} in C{claims}, or L{MISSING}."""
    if claims is None:
        return MISSING
    value: Any = claims
    for key in path:
        try:
            value = value.get(key, MISSING)
        except AttributeError:  # a string, number, array, or MISSING itself
            return MISSING
    return value


def scalar_text(value: Any) -> Optional[str]:
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


def scalarish(text: str) -> bool:
    """Whether some boolean or number could have C{text} as its L{scalar_text}."""
    if text in ("true", "false"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def render(value: Any) -> str:
    """A short JSON-like rendering of a claim value, for reasons and traces."""
    if value is MISSING:
        return "missing"
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return clip(text, VALUE_MAX)


def show(text: str) -> str:
    """An e-mail address as is when it is short and printable, else as JSON."""
    if len(text) <= VALUE_MAX and text.isprintable() and text.strip() == text:
        return text
    return render(text)


def quote(text: str) -> str:
    """A string argument as it would be written in a rule."""
    if "`" not in text:
        return f"`{text}`"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def seconds(value: float) -> str:
    """A number of seconds as a reason shows it: C{1200}, C{0.25}, C{899.999}, C{3.2e+20}."""
    if value >= 1e12:
        return f"{value:.6g}"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def tf(value: bool) -> str:
    return "true" if value else "false"

