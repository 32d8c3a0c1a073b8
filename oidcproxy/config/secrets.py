"""
Secrets: a literal in the file, or a reference to where the value is kept
(an environment variable, a file, a systemd credential), read once when the
configuration is loaded.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import Any, NamedTuple, Optional


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


MIN_KEY_BYTES = 32
"""A key's secret holds at least 256 bits (RFC 7518, 3.2 for HS256; AES-256)."""

MAKE_ONE = "python3 -c 'import secrets; print(secrets.token_hex(32))'"
"""The command the messages on secrets suggest (64 hex digits: 32 random bytes)."""

MIN_DISTINCT_BYTES = 16
"""Fewer distinct byte values than this in a secret's bytes earn a warning."""

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class SecretBytes(NamedTuple):
    """The bytes a secret's text stands for, and the form they were read in."""

    data: bytes
    form: str
    """C{"hex"}, C{"base64"}, C{"base64url"} or C{"text"} (its UTF-8 bytes)."""


def secret_bytes(text: str) -> SecretBytes:
    """
    What a secret is worth, in bytes: hex (an even number of hex digits) is
    decoded, then base64 or base64url (padded or not) when it decodes
    cleanly; any other text counts its UTF-8 bytes. Only the strength checks
    use this: keys are derived from the text as written.
    """
    if _HEX.fullmatch(text):
        return SecretBytes(bytes.fromhex(text), "hex")
    if _BASE64.fullmatch(text):
        form, altchars = "base64", None
    elif _BASE64URL.fullmatch(text):
        form, altchars = "base64url", b"-_"
    else:
        return SecretBytes(text.encode("utf-8"), "text")
    if (text.endswith("=") and len(text) % 4) or len(text) % 4 == 1:
        return SecretBytes(text.encode("utf-8"), "text")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except binascii.Error:
        return SecretBytes(text.encode("utf-8"), "text")
    return SecretBytes(data, form)


def _measured(value: SecretBytes) -> str:
    size = f"{len(value.data)} byte{'' if len(value.data) == 1 else 's'}"
    if value.form == "text":
        return f"{size} of UTF-8 text"
    return f"{size} once decoded from {value.form}"


def short_secret(text: str, minimum: int = MIN_KEY_BYTES) -> Optional[str]:
    """
    None when the secret C{text} holds at least C{minimum} bytes (see
    L{secret_bytes}), else the problem in one line that holds no secret.
    """
    value = secret_bytes(text)
    if len(value.data) >= minimum:
        return None
    return (f"too short: {_measured(value)}, at least {minimum} are needed; "
            f"make one with: {MAKE_ONE}")


def weak_secret(text: str) -> Optional[str]:
    """
    A warning (one line, no secret in it) when the secret C{text} looks easy
    to guess although long enough: one character repeated, or fewer than
    L{MIN_DISTINCT_BYTES} distinct byte values in a secret of at least
    L{MIN_KEY_BYTES} bytes; None otherwise.
    """
    if len(set(text)) == 1:
        why = "is one character repeated"
    else:
        value = secret_bytes(text)
        distinct = len(set(value.data))
        # Random bytes repeat some values: only a key's length (which 32
        # random bytes fill with about 30 values) is held to the count.
        if distinct >= MIN_DISTINCT_BYTES or len(value.data) < MIN_KEY_BYTES:
            return None
        why = f"has only {distinct} distinct byte values in its {_measured(value)}"
    return f"{why}: it looks easy to guess; make a random one with: {MAKE_ONE}"


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
