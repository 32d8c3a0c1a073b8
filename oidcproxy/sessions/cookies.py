"""
The proxy's cookies: names and attributes, values split over several cookies
when they are too long for one, reading them back, and removing them from
what goes upstream.

A value is sent as C{NAME=part0}, C{NAME_1=part1}, C{NAME_2=part2}, ...: the
first chunk keeps the plain name, so a small value is one ordinary cookie.
Browsers keep about 4096 bytes per cookie (name, value and attributes), hence
L{CHUNK_SIZE}.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Container, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

import attr

CHUNK_SIZE = 3800
"""Bytes of value per cookie."""

CHUNK_NAME_BOUND = 50
"""
L{chunk_names} looks for chunks up to this index (or C{max_chunks}, when
larger), so chunks left behind by a larger configuration are still found and
deleted.
"""

SAME_SITE_VALUES = ("Strict", "Lax", "None")

# RFC 6265 4.1.1 cookie-octet: printable ASCII without space, DQUOTE, comma,
# semicolon and backslash. Chunks are plain slices of the value, so any
# cookie-octet string chunks safely.
_COOKIE_VALUE = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*\Z")
# RFC 9110 token: what a cookie name may be.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# Path and Domain attribute values: printable ASCII without ';'.
_ATTRIBUTE_VALUE = re.compile(r"[\x21-\x3A\x3C-\x7E]+\Z")
# A chunk suffix as we write it: _1, _2, ... (no leading zeros).
_CHUNK_SUFFIX = re.compile(r"_([1-9][0-9]{0,5})\Z")


class CookieTooLarge(Exception):
    """A value needs more chunks than the cookie spec allows."""


def _check_name(instance: object, attribute: attr.Attribute, value: str) -> None:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"cookie name {value!r} is not a token")


def _check_path(instance: object, attribute: attr.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value.startswith("/") or not _ATTRIBUTE_VALUE.match(value):
        raise ValueError(f"cookie path {value!r} must start with '/' and be printable ASCII without ';'")


def _check_domain(instance: object, attribute: attr.Attribute, value: Optional[str]) -> None:
    if value is not None and (not isinstance(value, str) or not _ATTRIBUTE_VALUE.match(value)):
        raise ValueError(f"cookie domain {value!r} must be printable ASCII without ';'")


def _check_same_site(instance: CookieSpec, attribute: attr.Attribute, value: str) -> None:
    if value not in SAME_SITE_VALUES:
        raise ValueError(f"SameSite must be one of {', '.join(SAME_SITE_VALUES)}, not {value!r}")
    if value == "None" and not instance.secure:
        # Browsers reject SameSite=None without Secure.
        raise ValueError("SameSite=None requires secure cookies")


def _check_max_chunks(instance: object, attribute: attr.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_chunks must be a positive integer, not {value!r}")


@attr.s(frozen=True, auto_attribs=True)
class CookieSpec:
    """
    The name and attributes of one proxy cookie.

    @ivar name: the base name; L{wire_name} adds the security prefix.
    @ivar max_chunks: the most cookies one value may be spread over.
    @raise ValueError: an invalid attribute (name not a token, path not
        starting with C{/}, C{;} in path or domain, unknown C{same_site},
        C{SameSite=None} without C{secure}, C{max_chunks < 1}).
    """

    name: str = attr.ib(validator=_check_name)
    path: str = attr.ib(default="/", validator=_check_path)
    domain: Optional[str] = attr.ib(default=None, validator=_check_domain)
    secure: bool = True
    http_only: bool = True
    same_site: str = attr.ib(default="Lax", validator=_check_same_site)
    max_chunks: int = attr.ib(default=5, validator=_check_max_chunks)

    @property
    def wire_name(self) -> str:
        """
        The name sent to the browser: C{__Host-NAME} for a secure cookie
        without Domain on path C{/} (browsers then refuse any other site or
        path setting it), C{__Secure-NAME} for other secure cookies, the bare
        name otherwise.
        """
        return self._wire[0]

    @cached_property
    def _wire(self) -> Tuple[str, Tuple[bytes, ...]]:
        """
        L{wire_name}, and the names of chunks 0 to C{max_chunks} as a
        request's parsed cookies have them (bytes): worked out once per spec,
        not per request.
        """
        if self.secure and self.domain is None and self.path == "/":
            base = "__Host-" + self.name
        elif self.secure:
            base = "__Secure-" + self.name
        else:
            base = self.name
        return base, tuple(_chunk_name(base, index).encode("ascii")
                           for index in range(self.max_chunks + 1))


def _chunk_name(base: str, index: int) -> str:
    return base if index == 0 else f"{base}_{index}"


def _chunk_index(base: str, name: str) -> Optional[int]:
    """The chunk index of C{name} (0 for the base name), C{None} if not ours."""
    if name == base:
        return 0
    if not name.startswith(base):
        return None
    found = _CHUNK_SUFFIX.match(name, len(base))
    return None if found is None else int(found.group(1))


def _header(spec: CookieSpec, name: str, value: str, max_age: Optional[int]) -> bytes:
    parts = [f"{name}={value}", f"Path={spec.path}"]
    if spec.domain is not None:
        parts.append(f"Domain={spec.domain}")
    if spec.secure:
        parts.append("Secure")
    if spec.http_only:
        parts.append("HttpOnly")
    parts.append(f"SameSite={spec.same_site}")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts).encode("ascii")


def _deletions(spec: CookieSpec, present: Iterable[str], keep: int) -> List[bytes]:
    """Max-Age=0 headers for our names in C{present} with chunk index >= C{keep}."""
    base = spec.wire_name
    indexes = set()
    for name in present:
        index = _chunk_index(base, name)
        if index is not None and index >= keep:
            indexes.add(index)
    return [_header(spec, _chunk_name(base, i), "", 0) for i in sorted(indexes)]


def set_cookie_headers(
    spec: CookieSpec, value: str, max_age: Optional[int], present: Iterable[str]
) -> List[bytes]:
    """
    The C{Set-Cookie} header values that store C{value}.

    @param value: a non-empty string of RFC 6265 cookie-octets (sealed
        values and session ids are URL-safe base64).
    @param max_age: the cookie's lifetime in seconds, or C{None} for a
        browser-session cookie.
    @param present: cookie names the request carried (see L{chunk_names});
        chunks among them that this value no longer needs get a deletion
        header, after the headers that set the value.
    @raise CookieTooLarge: the value needs more than C{spec.max_chunks}
        cookies.
    @raise ValueError: an empty or not cookie-safe value, a negative
        C{max_age}.
    """
    if not isinstance(value, str) or not value or not _COOKIE_VALUE.match(value):
        raise ValueError("cookie value must be a non-empty string of cookie-safe characters")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
        raise ValueError(f"max_age must be a non-negative integer or None, not {max_age!r}")
    chunks = [value[i : i + CHUNK_SIZE] for i in range(0, len(value), CHUNK_SIZE)]
    if len(chunks) > spec.max_chunks:
        raise CookieTooLarge(
            f"a {len(value)}-byte value needs {len(chunks)} cookies; at most {spec.max_chunks} are allowed"
        )
    base = spec.wire_name
    headers = [_header(spec, _chunk_name(base, i), chunk, max_age) for i, chunk in enumerate(chunks)]
    headers.extend(_deletions(spec, present, len(chunks)))
    return headers


def clear_cookie_headers(spec: CookieSpec, present: Iterable[str]) -> List[bytes]:
    """
    C{Set-Cookie} header values deleting the cookie: always the base name,
    then every chunk name in C{present}.
    """
    base = spec.wire_name
    return [_header(spec, base, "", 0)] + _deletions(spec, present, 1)


def read_cookie(spec: CookieSpec, cookies: Mapping[bytes, bytes]) -> Optional[str]:
    """
    The value stored by L{set_cookie_headers}, from a request's parsed cookies
    (C{request.received_cookies}).

    Chunks are joined in order from the base name, stopping at the first
    missing index.

    @return: the value, or C{None} when the base cookie is missing or empty,
        more than C{spec.max_chunks} chunks are present, or the value is not
        ASCII.
    """
    names = spec._wire[1]
    first = cookies.get(names[0])
    if not first:
        return None
    value = first
    if names[1] in cookies:
        parts = [first]
        for name in names[1:]:
            part = cookies.get(name)
            if part is None:
                break
            parts.append(part)
        if len(parts) > spec.max_chunks:
            return None
        value = b"".join(parts)
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def chunk_names(spec: CookieSpec, cookies: Mapping[bytes, bytes]) -> List[str]:
    """
    Our cookie names the request carries: the base name and C{_1}, C{_2}, ...
    up to C{max(CHUNK_NAME_BOUND, spec.max_chunks)}, gaps included, in index
    order. Pass the result as C{present} to L{set_cookie_headers} or
    L{clear_cookie_headers}.
    """
    base = spec.wire_name
    bound = max(CHUNK_NAME_BOUND, spec.max_chunks)
    prefix = spec._wire[1][0]
    found = []
    # The request's few cookies are looked at, not every possible name.
    for raw in cookies:
        if not raw.startswith(prefix):
            continue
        if raw == prefix:
            found.append((0, base))
            continue
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        index = _chunk_index(base, name)
        if index is not None and index <= bound and name == _chunk_name(base, index):
            found.append((index, name))
    if len(found) == 1:
        return [found[0][1]]
    return [name for _, name in sorted(found)]


def _is_ours(name: bytes, names: Container[bytes]) -> bool:
    if name in names:
        return True
    base, sep, index = name.rpartition(b"_")
    return bool(sep) and index.isdigit() and base in names


def strip_cookies(cookie_header_values: Sequence[bytes], names: Container[bytes]) -> List[bytes]:
    """
    Remove the proxy's cookies from raw C{Cookie} header values before the
    request goes upstream.

    A cookie is removed when its name (surrounding blanks ignored) is in
    C{names} or is a name in C{names} followed by C{_} and digits (a chunk).
    A header value without our cookies is kept exactly; in one that had some,
    every other cookie-pair is kept byte for byte and in order, empty pairs
    are dropped, and the value is dropped altogether when nothing is left.
    """
    kept_values = []
    for value in cookie_header_values:
        pairs = value.split(b";")
        kept = [pair for pair in pairs if not _is_ours(pair.split(b"=", 1)[0].strip(b" \t"), names)]
        if len(kept) == len(pairs):
            kept_values.append(value)
            continue
        rewritten = b";".join(pair for pair in kept if pair.strip(b" \t")).strip(b" \t")
        if rewritten:
            kept_values.append(rewritten)
    return kept_values


_NAME_PREFIXES = ("__host-", "__secure-")


def _folded(name: bytes) -> str:
    """A cookie name in lower case, without blanks and C{__Host-}/C{__Secure-} prefixes."""
    text = name.decode("latin-1").strip(" \t").lower()
    while text.startswith(_NAME_PREFIXES):
        text = text.split("-", 1)[1]
    return text


class OwnedNames:
    """
    The proxy's cookie names, to refuse them in C{Set-Cookie} headers it did
    not write (an upstream's, an embedded application's).

    Matching is stricter than any browser: case-insensitive, with or without
    a C{__Host-}/C{__Secure-} prefix (also in another case), and for a
    nameless cookie (C{Set-Cookie: =NAME=x}, which browsers send back as
    C{NAME=x}) on the name inside its value.

    @param names: base names (the session cookie, the CSRF cookie), owned
        as they are and with a chunk suffix (C{_1}, C{_2}, ...).
    @param prefixes: base names owned with any C{_suffix} (the state
        cookies, C{<name>_<state>}).
    """

    def __init__(self, names: Iterable[str], prefixes: Iterable[str] = ()) -> None:
        self._names: FrozenSet[str] = frozenset(_folded(n.encode("latin-1")) for n in names)
        self._prefixes: Tuple[str, ...] = tuple(
            _folded(p.encode("latin-1")) + "_" for p in prefixes)

    def owns(self, name: bytes) -> bool:
        """Whether a cookie of this name would be taken for one of the proxy's."""
        folded = _folded(name)
        if folded in self._names or (self._prefixes and folded.startswith(self._prefixes)):
            return True
        base, sep, index = folded.rpartition("_")
        return bool(sep) and index.isdigit() and base in self._names

    def claimed(self, set_cookie: bytes) -> Optional[bytes]:
        """
        The name of one of the proxy's cookies that the C{Set-Cookie} header
        value C{set_cookie} would set, or None.
        """
        pair = set_cookie.split(b";", 1)[0]
        name, equals, value = pair.partition(b"=")
        if self.owns(name):
            return name.strip(b" \t")
        if equals and not name.strip(b" \t"):
            inner = value.partition(b"=")[0]
            if self.owns(inner):
                return inner.strip(b" \t")
        return None
