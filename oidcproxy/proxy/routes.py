"""
Pick the route for a request and compute the target sent upstream.

The request target is parsed and its path normalised exactly once. The
normalised path is what the routing (and so the authentication) decision is
made on, and it is also what goes upstream, so the proxy and the upstream can
never disagree about which path was asked for: an upstream never sees a dot
segment, a doubled slash or an escape that decodes to an unreserved character.

Everything that can be worked out from the configuration is done in
L{RouteTable.__init__}; L{RouteTable.match} runs on every request and does a
handful of C{bytes.translate}, C{str.find} and dict lookups.
"""

# The project targets Python 3.9 and spells optional types Optional[X] (UP007 is
# ignored in pyproject.toml); newer ruff reports them as UP045 instead.

from __future__ import annotations

import string
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, urlsplit

import attr

from oidcproxy.config import RouteConfig

__all__ = ["BadRequestTarget", "RouteMatch", "RouteTable", "normalise_path", "request_host",
           "split_target"]


class BadRequestTarget(Exception):
    """
    The request target (or Host) is ambiguous or malformed: answer 400.

    @ivar reason: a short human text, safe to show; it holds no raw request
        bytes (at most the hex value of an offending byte).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@attr.s(frozen=True, auto_attribs=True)
class RouteMatch:
    """The route chosen for a request and what to send upstream."""

    route: RouteConfig
    host: Optional[str]
    """The host matched on: lower case, no port, None if the request had none."""
    path: str
    """The normalised request path the decision was made on."""
    query: Optional[bytes]
    """The raw query without the C{?}; None when the target had no C{?}."""
    upstream_target: bytes
    """Origin-form target for the upstream: base path + rewritten path + query."""


# -- byte classes ----------------------------------------------------------------

_VISIBLE = bytes(range(0x21, 0x7F))
# Deleting the allowed bytes with bytes.translate leaves only the offending
# ones: one C-level pass instead of a Python loop.
_TARGET_OK = _VISIBLE.replace(b"#", b"")
_PATH_OK = _TARGET_OK.replace(b"?", b"").replace(b"\\", b"")
_HOST_OK = (string.ascii_letters + string.digits + "-.:[]").encode("ascii")
_PORT_DIGITS = frozenset(string.digits)

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HEX = "0123456789abcdefABCDEF"

# Every valid two-digit escape except %00, %2F and %5C, mapped to what it
# becomes: the character itself when unreserved, else the escape in upper case.
_PCT: Dict[str, str] = {}
_PCT_SLASH: Dict[str, str] = {}
for _hi in _HEX:
    for _lo in _HEX:
        _key = _hi + _lo
        _value = int(_key, 16)
        if _value in (0x2F, 0x5C):
            _PCT_SLASH[_key] = "%" + _key.upper()
        elif _value != 0:
            _char = chr(_value)
            _PCT[_key] = _char if _char in _UNRESERVED else "%" + _key.upper()
del _hi, _lo, _key, _value, _char

_DOTS = (".", "..")


def _dotlike(text: str) -> bool:
    """
    Whether C{text} would be a dot segment to an upstream that takes C{;}
    or a decoded C{%3B} as the start of segment parameters.
    """
    if ";" in text:
        text = text.split(";", 1)[0]
    if "%3B" in text:
        text = text.split("%3B", 1)[0]
    return text in _DOTS


def _bad_bytes(leftover: bytes, where: str) -> BadRequestTarget:
    if b"\\"[0] in leftover:
        return BadRequestTarget(f"backslash in the {where}")
    if b"?"[0] in leftover:
        return BadRequestTarget(f"'?' in the {where}")
    return BadRequestTarget(f"byte 0x{leftover[0]:02x} is not allowed in the {where}")


# -- paths -----------------------------------------------------------------------


def _normalise(raw: bytes, allow_encoded_slashes: bool) -> Tuple[str, bool]:
    """
    L{normalise_path}, also telling whether the result holds an encoded
    slash or backslash.
    """
    leftover = raw.translate(None, _PATH_OK)
    if leftover:
        raise _bad_bytes(leftover, "path")
    if raw[:1] != b"/":
        raise BadRequestTarget("the path must start with '/'")
    path = raw.decode("ascii")
    encoded_slash = False
    if "%" in path:
        parts = path.split("%")
        out = [parts[0]]
        for part in parts[1:]:
            key = part[:2]
            decoded = _PCT.get(key)
            if decoded is None:
                if key in _PCT_SLASH:
                    if not allow_encoded_slashes:
                        raise BadRequestTarget("encoded slash or backslash in the path")
                    decoded = _PCT_SLASH[key]
                    encoded_slash = True
                elif key == "00":
                    raise BadRequestTarget("encoded NUL in the path")
                else:
                    raise BadRequestTarget("invalid percent-encoding in the path")
            out.append(decoded)
            out.append(part[2:])
        path = "".join(out)
    if not encoded_slash and "//" not in path and "/." not in path:
        # No empty segment and no segment starting with '.': nothing to do.
        return path, False

    stack: List[str] = []
    directory = False
    for segment in path.split("/")[1:]:
        if not segment:
            # Runs of slashes are merged; a trailing one is kept.
            directory = True
            continue
        name = segment.split(";", 1)[0] if ";" in segment else segment
        if name == ".":
            directory = True
            continue
        if name == "..":
            if not stack:
                raise BadRequestTarget("the path goes above the root")
            stack.pop()
            directory = True
            continue
        if name[:1] == "." and "%3B" in name and _dotlike(name):
            # "..%3Bx": a dot segment to an upstream that decodes before it
            # strips parameters, a plain name to one that does not.
            raise BadRequestTarget("ambiguous dot segment in the path")
        if encoded_slash and ("%2F" in segment or "%5C" in segment):
            for piece in segment.replace("%5C", "%2F").split("%2F"):
                if _dotlike(piece):
                    raise BadRequestTarget("dot segment next to an encoded slash in the path")
        stack.append(segment)
        directory = False
    if not stack:
        return "/", encoded_slash
    return "/" + "/".join(stack) + ("/" if directory else ""), encoded_slash


def normalise_path(raw: bytes, allow_encoded_slashes: bool = False) -> str:
    """
    Normalise a raw request path (without the query).

    Escapes of unreserved characters are decoded, every other escape is kept
    with upper-case hex; dot segments (also C{%2e%2e} and C{..;x}) are
    resolved; runs of slashes are merged. Segment parameters (C{;x=1}) are
    kept.

    @param allow_encoded_slashes: keep C{%2F} and C{%5C} (as opaque data, not
        segment separators) instead of rejecting them.
    @raise BadRequestTarget: a forbidden byte, a backslash, a bad or NUL
        escape, an encoded slash when not allowed, a C{..} above the root.
    """
    return _normalise(raw, allow_encoded_slashes)[0]


def _match_form(path: str) -> str:
    """
    The path routes are matched against: each segment's C{;...} parameters
    dropped, and segments left empty by that dropped too, the way a servlet
    container would see it (C{/admin;x=1/y} and C{/;x/admin} are C{/admin}).
    """
    names = [segment.split(";", 1)[0] for segment in path.split("/")]
    return "/" + "/".join(name for name in names if name)


# -- hosts -----------------------------------------------------------------------


def request_host(host_header: Optional[bytes]) -> Optional[str]:
    """
    The host name of a C{Host} header (or absolute-form authority): lower
    case, without the port and without one trailing dot.

    @return: None for a missing or empty value.
    @raise BadRequestTarget: characters other than letters, digits, C{-},
        C{.}, C{:}, C{[}, C{]}, or a malformed value (bad port, unbalanced
        brackets, empty label, no name).
    """
    if not host_header:
        return None
    if host_header.translate(None, _HOST_OK):
        raise BadRequestTarget("invalid Host")
    host = host_header.decode("ascii").lower()
    if host[0] == "[":
        end = host.find("]")
        name, port = host[: end + 1], host[end + 1 :]
        if end < 2 or "[" in name[1:]:
            raise BadRequestTarget("invalid Host")
    else:
        name, colon, port = host.partition(":")
        port = colon + port
        if "[" in host or "]" in host:
            raise BadRequestTarget("invalid Host")
        if name.endswith("."):
            name = name[:-1]
        if not name or name[0] == "." or name[-1] == "." or ".." in name:
            raise BadRequestTarget("invalid Host")
    if port and (port[0] != ":" or not _PORT_DIGITS.issuperset(port[1:])):
        raise BadRequestTarget("invalid Host")
    return name


# -- targets ---------------------------------------------------------------------


def split_target(raw_target: bytes) -> Tuple[Optional[bytes], bytes]:
    """
    The authority of an absolute-form request target (C{http://host:port/p?q})
    and its origin-form rest (C{/p?q}); C{(None, raw_target)} for an
    origin-form target. RFC 9112 3.2.2: with an absolute-form target the
    authority is the host the request is for, and C{Host} is ignored.

    @raise BadRequestTarget: neither form, or an absolute form without a
        host. The authority itself is checked by L{request_host}.
    """
    if raw_target[:1] == b"/":
        return None, raw_target
    scheme = raw_target[:8].lower()
    if scheme.startswith(b"http://"):
        start = 7
    elif scheme.startswith(b"https://"):
        start = 8
    else:
        raise BadRequestTarget("unsupported request-target form")
    end = len(raw_target)
    for separator in (b"/", b"?"):
        at = raw_target.find(separator, start, end)
        if at != -1:
            end = at
    if end == start:
        raise BadRequestTarget("absolute-form target without a host")
    rest = raw_target[end:]
    if rest[:1] != b"/":
        rest = b"/" + rest
    return raw_target[start:end], rest


# -- the table -------------------------------------------------------------------


class _Route:
    """A route with what matching and rewriting need, worked out once."""

    __slots__ = ("config", "prefix", "depth", "replacement", "base")

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.prefix = config.path
        self.depth = 0 if config.path == "/" else config.path.count("/")
        replacement: Optional[str]
        if config.replace_prefix is not None:
            replacement = config.replace_prefix.rstrip("/")
        elif config.strip_prefix:
            replacement = ""
        else:
            replacement = None
        self.replacement = replacement
        base = urlsplit(config.upstream).path.rstrip("/")
        # The configured base path should already be a valid path; escape
        # anything that is not, so the target stays plain ASCII.
        self.base = quote(base, safe="/%:@!$&'()*+,;=-._~")

    def target(self, path: str) -> str:
        """The upstream path (without query) for a normalised request path."""
        replacement = self.replacement
        if replacement is None:
            return self.base + path
        if self.depth == 0:
            rest = path
        elif ";" not in path:
            # The match form equals the path: the prefix is a plain head.
            rest = path[len(self.prefix) :]
        else:
            # Skip the segments the prefix matched, counting only those that
            # are not empty once their parameters are dropped.
            segments = path[1:].split("/")
            i = matched = 0
            while matched < self.depth:
                if segments[i].split(";", 1)[0]:
                    matched += 1
                i += 1
            rest = "/" + "/".join(segments[i:]) if i < len(segments) else ""
        if replacement:
            return self.base + replacement + rest
        return self.base + (rest or "/")


class _Bucket:
    """The routes sharing one prefix, by host."""

    __slots__ = ("exact", "wildcard", "anyhost")

    def __init__(self) -> None:
        self.exact: Dict[str, _Route] = {}
        self.wildcard: Dict[str, _Route] = {}
        self.anyhost: Optional[_Route] = None

    def add(self, route: _Route) -> None:
        host = route.config.host
        if host is None:
            if self.anyhost is None:
                self.anyhost = route
        elif host.startswith("*."):
            self.wildcard.setdefault(host[2:].lower(), route)
        else:
            self.exact.setdefault(host.lower(), route)

    def pick(self, host: Optional[str]) -> Optional[_Route]:
        if host is not None:
            if self.exact:
                found = self.exact.get(host)
                if found is not None:
                    return found
            if self.wildcard:
                # Longest suffix first, and always at least one label before it.
                dot = host.find(".")
                while dot != -1:
                    found = self.wildcard.get(host[dot + 1 :])
                    if found is not None:
                        return found
                    dot = host.find(".", dot + 1)
        return self.anyhost


def _pick_either(spelled: _Bucket, folded: _Bucket, host: Optional[str]) -> Optional[_Route]:
    """
    L{_Bucket.pick} over the routes of one prefix in two buckets: those
    spelled exactly as the request's path (case-sensitive ones) and the
    case-insensitive ones. The host decides first (exact, then wildcard,
    then any host); at the same rank the exact spelling wins.
    """
    if host is not None:
        for bucket in (spelled, folded):
            found = bucket.exact.get(host)
            if found is not None:
                return found
        if spelled.wildcard or folded.wildcard:
            dot = host.find(".")
            while dot != -1:
                suffix = host[dot + 1 :]
                for bucket in (spelled, folded):
                    found = bucket.wildcard.get(suffix)
                    if found is not None:
                        return found
                dot = host.find(".", dot + 1)
    return spelled.anyhost if spelled.anyhost is not None else folded.anyhost


class RouteTable:
    """
    The configured routes, ready for matching.

    The longest matching prefix wins; among routes with the same prefix an
    exact host beats a wildcard host (the longer suffix first), which beats a
    route for every host. Two routes with the same host and prefix: the first
    one given wins.

    A route with C{case_insensitive} matches its prefix in any ASCII case
    (C{/ADMIN/x} and C{/Admin/x} for C{/admin}); the others only as spelled.
    At the same prefix length and host rank, a route spelled exactly as the
    request's path wins over a case-insensitive one.
    """

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes: Tuple[RouteConfig, ...] = tuple(routes)
        self._buckets: Dict[str, _Bucket] = {}
        # Case-insensitive routes, by their prefix in lower case. A prefix
        # without letters reads the same in every case: it stays above.
        self._folded: Dict[str, _Bucket] = {}
        for config in routes:
            route = _Route(config)
            key = route.prefix
            buckets = self._buckets
            if config.case_insensitive and key.lower() != key.upper():
                key = key.lower()
                buckets = self._folded
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = _Bucket()
            bucket.add(route)
        self._root = self._buckets.get("/")
        self._lengths: Tuple[int, ...] = tuple(sorted(
            {len(prefix) for prefix in (*self._buckets, *self._folded) if prefix != "/"},
            reverse=True))
        self._encoded_slashes = any(config.allow_encoded_slashes for config in routes)

    def _find(self, host: Optional[str], path: str) -> Optional[_Route]:
        size = len(path)
        buckets = self._buckets
        folded = self._folded
        for length in self._lengths:
            if length > size or (length < size and path[length] != "/"):
                continue
            head = path[:length]
            bucket = buckets.get(head)
            if folded:
                # ASCII case folding: the path is ASCII (every other byte
                # is refused or percent-encoded by then).
                other = folded.get(head.lower())
                if other is not None:
                    found = other.pick(host) if bucket is None \
                        else _pick_either(bucket, other, host)
                    if found is not None:
                        return found
                    continue
            if bucket is not None:
                found = bucket.pick(host)
                if found is not None:
                    return found
        if self._root is not None:
            return self._root.pick(host)
        return None

    def match(self, host_header: Optional[bytes], raw_target: bytes) -> Optional[RouteMatch]:
        """
        Route a request.

        @param host_header: the C{Host} header value, None if there was none.
            An absolute-form target's authority is used instead.
        @param raw_target: the request target as it came in the request line.
        @return: None when no route matches (answer 404).
        @raise BadRequestTarget: the target or host is malformed or ambiguous
            (answer 400).
        """
        if not raw_target:
            raise BadRequestTarget("empty request target")
        leftover = raw_target.translate(None, _TARGET_OK)
        if leftover:
            raise _bad_bytes(leftover, "request target")
        authority, rest = split_target(raw_target)
        if authority is not None:
            host_header = authority
        mark = rest.find(b"?")
        if mark == -1:
            raw_path, query = rest, None
        else:
            raw_path, query = rest[:mark], rest[mark + 1 :]

        host = request_host(host_header)
        path, encoded_slash = _normalise(raw_path, self._encoded_slashes)
        route = self._find(host, _match_form(path) if ";" in path else path)
        if route is None:
            return None
        if encoded_slash and not route.config.allow_encoded_slashes:
            raise BadRequestTarget("encoded slash or backslash in the path")
        target = route.target(path).encode("ascii")
        if query is not None:
            target += b"?" + query
        return RouteMatch(
            route=route.config, host=host, path=path, query=query, upstream_target=target
        )
