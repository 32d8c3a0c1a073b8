"""
Secrets: a literal in the file, or a reference to where the value is kept
(an environment variable, a file, a systemd credential), read once when the
configuration is loaded.
"""

from __future__ import annotations

import os
from typing import Any


class Secret:
    """
    A resolved secret value that does not show itself in reprs or logs.
    """

    __slots__ = ("_value", "origin")

    def __init__(self, value: str, origin: str) -> None:
        self._value = value
        self.origin = origin

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<Secret from {self.origin}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_secret(value: Any) -> Secret:
    """
    A secret is a literal string or exactly one of C{{ env = "NAME" }},
    C{{ file = "/path" }}, C{{ credential = "name" }}. Missing sources and empty
    values are errors: never an empty secret.

    @raise ValueError: what is wrong, in one line that holds no secret.
    """
    if isinstance(value, str):
        if not value:
            raise ValueError("is empty")
        return Secret(value, "the config file")
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(
            'expected a string or one of { env = "NAME" }, { file = "/path" }, '
            '{ credential = "name" }'
        )
    (kind, ref), = value.items()
    if kind not in ("env", "file", "credential") or not isinstance(ref, str) or not ref:
        raise ValueError(
            f"unknown secret reference {kind!r}; use env, file or credential with a string"
        )
    if any(c < " " or c == "\x7f" for c in ref):
        # No file or variable is named so; open() would raise on a NUL, and a
        # newline would split the error message over lines.
        raise ValueError(f"{kind} name {ref!r} holds a control character")
    if kind == "env":
        env = os.environ.get(ref)
        if env is None:
            raise ValueError(f"environment variable {ref} is not set")
        text, origin = env, f"environment variable {ref}"
    else:
        path = _credential_path(ref) if kind == "credential" else ref
        text = _read_file(path)
        origin = f"file {path}"
    if not text:
        raise ValueError(f"{origin} is empty")
    return Secret(text, origin)


def _credential_path(name: str) -> str:
    """The file of systemd credential C{name}."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ValueError(
            f"credential {name!r} needs $CREDENTIALS_DIRECTORY "
            "(set by systemd's LoadCredential=)"
        )
    if "/" in name or name in (".", ".."):
        raise ValueError(f"credential name {name!r} must not contain '/'")
    return os.path.join(directory, name)


def _read_file(path: str) -> str:
    """A secret file's text, without one final line break."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"cannot read secret file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text
