"""
The values of the configuration, one checker each.

Each function takes the value as written and returns it checked (and, where
said, normalised), or raises C{ValueError} with a one-line message naming the
value; the reader prefixes the key path. They are public because the Traefik
importer checks what it writes with the same rules.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from typing import Sequence, Union
from urllib.parse import urlsplit

from ..core.assurance import is_acr_value
from .schema import HTTP_METHODS, IPNetwork

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_HOST_PORT = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):\d{1,5}(?:/\S*)?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parse_duration(text: str) -> float:
    """
    Parse C{"30s"}, C{"500ms"}, C{"1h30m"}, C{"0s"} into seconds.

    @raise ValueError: not a duration.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("expected a duration string like \"30s\", \"5m\" or \"8h\"")
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit (ms, s, m, h, d), like \"30s\""
        )
    if not math.isfinite(total):
        # A number too long for a float: infinite, which no timer or cookie can take.
        raise ValueError(f"{text!r} is too long a duration")
    return total


def parse_size(text: Union[str, int]) -> int:
    """
    Parse C{"10MB"} (decimal), C{"4KiB"} (binary) or a plain byte count.

    @raise ValueError: not a size.
    """
    if isinstance(text, bool):
        raise ValueError("expected a size like \"10MB\"")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is negative")
        return text
    m = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"{text!r} is not a size; use bytes or a unit (KB, MB, GB, KiB, MiB, GiB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def http_url(text: str) -> str:
    """An absolute http(s) URL with a host, without user information, query or fragment."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL{_scheme_hint(text)}")
    if parts.username or parts.password:
        raise ValueError(f"{text!r} must not contain user information")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return text


def _scheme_hint(text: str) -> str:
    """
    For a C{host:port} written without its scheme (C{127.0.0.1:9000},
    C{backend:80}), the suggestion to add C{http://}; else nothing.
    """
    if _HOST_PORT.fullmatch(text):
        return f"; did you mean 'http://{text}'?"
    return ""


def route_prefix(text: str) -> str:
    """
    A path of plain characters starting with C{/}, normalised (no C{.}, C{..}
    or C{//} segments); a trailing C{/} is dropped (but from C{/} itself).
    """
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/'")
    if any(c in text for c in "?#\\%") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise ValueError(
            f"{text!r} may only hold plain path characters (no '?', '#', '\\', '%', spaces)"
        )
    segments = text.split("/")
    if any(s in (".", "..") for s in segments) or "//" in text:
        raise ValueError(f"{text!r} must be a normalised path (no '.', '..' or '//' segments)")
    return text.rstrip("/") or "/"


_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def route_host(text: str) -> str:
    """A host name or a C{*.example.com} wildcard, returned in lower case."""
    host = text.lower()
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    if not host or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} is not a host name or a '*.example.com' wildcard")
    return host


def origin_of(text: str) -> str:
    """
    A browser origin as browsers serialise it in C{Origin}: C{scheme://host}
    with C{:port} unless it is the scheme's default, in lower case.

    @raise ValueError: not an http(s) origin (a path, user information, a
        query, no host, a bad port, C{null}).
    """
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) origin (scheme://host[:port])"
                         f"{_scheme_hint(text)}")
    if parts.username is not None or parts.password is not None or parts.path \
            or parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"{text!r} is not an origin: scheme://host[:port] without a path")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def network(text: str) -> IPNetwork:
    """An IP address or a CIDR network (host bits may be set)."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR network") from None


def readable_file(path: str) -> str:
    """The path of a file this process can read (now, when the configuration is loaded)."""
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ValueError(f"{path} is not a readable file")
    return path


def header_name(text: str) -> str:
    """An HTTP header name (an RFC 9110 token)."""
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid header name")
    return text


_PROVIDER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


DEFAULT_PROVIDER_NAME = "oidc"
"""How a route's C{providers} list names the C{[oidc]} table (kept as C{""} in the configuration)."""


def provider_name(text: str) -> str:
    """A provider's name: 1 to 64 letters, digits, C{-} and C{_}."""
    if not _PROVIDER_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not a provider name (1 to 64 letters, digits, - and _)")
    return text


def provider_cookie_name(base: str, provider: str) -> str:
    """
    The session cookie of C{provider}: C{base} (C{session.cookie_name}) for
    the default provider (C{""}, C{[oidc]}), C{base-NAME} for a named one.
    """
    return f"{base}-{provider}" if provider else base


def cookie_name(text: str) -> str:
    """A cookie name (an RFC 9110 token)."""
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid cookie name")
    return text


def cookie_domain(text: str) -> str:
    """A cookie C{Domain}: a host name (letters, digits, hyphens, dots), without a leading dot."""
    labels = text.lower().split(".")
    if not text or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{text!r} is not a cookie domain (a host name without a leading dot)")
    return text


def endpoint_string(text: str) -> str:
    """A Twisted server endpoint string: C{type:args}, checked for its shape only."""
    kind = text.split(":", 1)[0]
    if not text.strip() or not kind or not kind.replace("-", "").isalnum():
        raise ValueError(f"{text!r} is not a Twisted endpoint string like \"tcp:9102:interface=127.0.0.1\"")
    return text


def endpoint_prefix(text: str) -> str:
    """A path as a route's C{path} (L{route_prefix}), other than C{/}."""
    prefix = route_prefix(text)
    if prefix == "/":
        raise ValueError("must not be '/': the proxy's endpoints need a prefix of their own")
    return prefix


def http_method(text: str) -> str:
    """One of L{HTTP_METHODS}, in upper case as written."""
    if text not in HTTP_METHODS:
        raise ValueError(f"{text!r} is not one of {', '.join(HTTP_METHODS)}")
    return text


def email_domain(text: str) -> str:
    """A domain name of an allow-list, returned in lower case without a final dot."""
    domain = text.lower().rstrip(".")
    if not domain or "@" in domain or not all(_HOST_LABEL.fullmatch(x) for x in domain.split(".")):
        raise ValueError(f"{text!r} is not a domain name")
    return domain


def acr_value(text: str) -> str:
    """
    An authentication context class reference as C{acr_values} sends it
    (L{is_acr_value}).
    """
    if not is_acr_value(text):
        raise ValueError(f"{text!r} is not an acr value (printable ASCII without spaces, "
                         "quotes or backslashes)")
    return text


def replacement_prefix(text: str) -> str:
    """A path as a route's C{path} (L{route_prefix}), or empty (the prefix is removed)."""
    if text == "":
        return text
    return route_prefix(text)


def absolute_path(text: str) -> str:
    """A path as a route's C{path} (L{route_prefix}), for the proxy's own paths and cookies."""
    return route_prefix(text)


def one_of(value: str, choices: Sequence[str]) -> str:
    """C{value}, if it is one of C{choices}."""
    if value not in choices:
        raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    return value
