"""
Shared parts of the adversarial suite (C{tests/test_adv_*.py}): the whole
proxy in memory, generators of hostile inputs, and helpers that name the
input in every failure message.

The proxy under attack is L{tests.fakes.ProxyStack}: the guard in front of
the upstream proxy whose only upstream is a L{RecordingUpstream} (every
request's method, target and headers, repeats included), with a
L{HostileIdP} behind the real IdP client, all on one Clock. Requests go in
either through a browser (treq's in-memory agent) or as raw bytes through a
real L{ProxySite} channel (C{ProxyStack.raw}), where the exact bytes matter
(absolute-form targets, duplicate or odd header names, header limits).

The open-redirect corpus is oauth2-proxy's C{testdata/openredirects.txt} (MIT
licence), kept in this repository as L{CORPUS}; C{tests/data/README.rst}
says where it comes from and gives oauth2-proxy's licence.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, Iterator, List, Sequence, Tuple
from urllib.parse import quote, unquote

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.oidc.login import STATE_PURPOSE, LoginAttempt
from oidcproxy.proxy.headers import canonical_header
from oidcproxy.sessions.crypto import Sealer

from .fakes import APP, CLIENT_ID, CLIENT_SECRET, PROXY_ROUTES, SECRET
from .idp import ISSUER, Page

__all__ = ["APP", "CLIENT_ID", "CLIENT_SECRET", "ISSUER", "SECRET"]

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "data", "openredirects.txt")
"""The open-redirect corpus: one payload a line (oauth2-proxy's, see tests/data/README.rst)."""

PUBLIC_ORIGIN_ROOT = APP + "/"
"""Where every refused redirect lands: the configured public URL's root."""

API = {b"accept": [b"application/json"]}

ROUTES = PROXY_ROUTES


# -- inputs ------------------------------------------------------------------------------


def corpus() -> List[str]:
    """Every line of the open-redirect corpus, L{CORPUS}."""
    with open(CORPUS, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def three_ways(value: str) -> List[Tuple[str, str]]:
    """C{value} raw, percent-decoded once and percent-encoded once, labelled."""
    return [("raw", value), ("decoded", unquote(value)), ("encoded", quote(value, safe=""))]


def casings(word: str, count: int = 12, seed: int = 8) -> List[str]:
    """C{word} in lower, upper, title and C{count} random mixed cases (deterministic)."""
    rng = random.Random(seed)
    out = {word.lower(), word.upper(), word.title(),
           "".join(c.upper() if i % 2 else c for i, c in enumerate(word.lower()))}
    while len(out) < count + 3:
        out.add("".join(c.upper() if rng.random() < 0.5 else c for c in word.lower()))
    return sorted(out)


EVIL = "evil.test"
CONTROLS = ["\t", "\n", "\r", "\x0b", "\x0c", "\x00", " ", "\x7f"]
LOOKALIKE_SLASHES = ["\uff0f", "\u2215", "\u2044", "\u29f8", "\u3031", "\u3035", "\u30fd", "\ufe68",
                     "\uff3c", "\u2216"]
LOOKALIKE_DOTS = ["\u3002", "\uff0e", "\uff61", "\u2024"]


def extra_redirects() -> List[Tuple[str, str]]:
    """
    The open-redirect classes of issue 8 item 1 beyond the corpus, as
    C{(label, target)}: backslashes, control characters at every position,
    userinfo, C{#@} and C{?@}, numeric and IPv6 hosts, look-alike slashes and
    dots, script schemes in any case, over-long targets.
    """
    cases: List[Tuple[str, str]] = []
    for target in ["/\\" + EVIL, "\\\\" + EVIL, "\\/" + EVIL, "/\\/" + EVIL, "//\\" + EVIL,
                   "/%5C" + EVIL, "%5C%5C" + EVIL, "/%5c%5c" + EVIL, "/x/..\\..\\" + EVIL,
                   "https:\\\\" + EVIL, "https:/\\" + EVIL, "/.\\" + EVIL]:
        cases.append(("backslash", target))
    for base in ["//" + EVIL, "/x", "/" + EVIL, "https://" + EVIL]:
        for control in CONTROLS:
            for at in range(len(base) + 1):
                cases.append((f"control {control!r}@{at}", base[:at] + control + base[at:]))
                cases.append((f"encoded control {control!r}@{at}",
                              base[:at] + quote(control, safe="") + base[at:]))
    for allowed in ["app.test", "app.test:443", "www.whitelisteddomain.tld"]:
        for scheme in ["https://", "http://", "//", "/\\", ""]:
            cases += [
                ("userinfo", f"{scheme}{allowed}@{EVIL}"),
                ("userinfo", f"{scheme}{allowed}:pw@{EVIL}/"),
                ("#@", f"{scheme}{allowed}#@{EVIL}"),
                ("?@", f"{scheme}{allowed}?@{EVIL}"),
                ("%40", f"{scheme}{allowed}%40{EVIL}"),
                ("dotted", f"{scheme}{allowed}.{EVIL}"),
            ]
    for host in ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1", "0", "[::1]",
                 "[::ffff:127.0.0.1]", "[0:0:0:0:0:ffff:7f00:1]", "3627734734", "0xd8.0x3a.0xd6.0xce",
                 "[fe80::1%25eth0]"]:
        for scheme in ["http://", "https://", "//", "///", "/\\", "\\\\"]:
            cases.append(("numeric host", scheme + host + "/"))
    for slash in LOOKALIKE_SLASHES:
        cases += [("look-alike slash", slash * 2 + EVIL), ("look-alike slash", "/" + slash + EVIL),
                  ("look-alike slash", slash + "/" + EVIL),
                  ("look-alike slash", "/" + quote(slash) + EVIL)]
    for dot in LOOKALIKE_DOTS:
        cases += [("look-alike dot", "//evil" + dot + "test"),
                  ("look-alike dot", "/x/" + dot + dot + "/" + dot + dot + "//" + EVIL),
                  ("look-alike dot", "/" + dot + "/" + EVIL)]
    for scheme in ["javascript", "data", "vbscript"]:
        for spelled in casings(scheme):
            body = {"javascript": "alert(document.domain)", "vbscript": "msgbox(1)",
                    "data": "text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="}[scheme]
            cases += [("script scheme", f"{spelled}:{body}"),
                      ("script scheme", f" {spelled}:{body}"),
                      ("script scheme", f"\t{spelled}:{body}"),
                      ("script scheme", f"{spelled[:4]}\t{spelled[4:]}:{body}"),
                      ("script scheme", f"{spelled}%3A{body}"),
                      ("script scheme", f"{spelled}&colon;{body}")]
    for size in (2049, 4096, 10_000):
        cases.append(("over-long", "/" + "a" * (size - 1)))
        cases.append(("over-long", "/ok?" + "b" * (size - 4)))
    cases.append(("over-long", "/" + "%61" * 2100))
    return cases


def redirect_inputs() -> List[Tuple[str, str]]:
    """Every redirect target to refuse: the corpus and the extras, each three ways."""
    out: List[Tuple[str, str]] = []
    for number, line in enumerate(corpus(), 1):
        for how, value in three_ways(line):
            out.append((f"corpus line {number} {how}", value))
    for label, target in extra_redirects():
        for how, value in three_ways(target):
            out.append((f"{label} {how}", value))
    # Unique values, first label kept: the same value twice proves nothing more.
    seen: Dict[str, str] = {}
    for label, value in out:
        seen.setdefault(value, label)
    return [(label, value) for value, label in seen.items()]


SAFE_TARGETS = [
    ("/", "/"),
    ("/dashboard", "/dashboard"),
    ("/a/b?x=1&y=2", "/a/b?x=1&y=2"),
    ("/search?q=%2Fetc", None),  # decodes to "/etc" in a query: "/search?q=/etc" is safe too
    ("/" + "a" * 2047, "/" + "a" * 2047),
]
"""Targets that must be kept (C{expected} None: the target itself): the suite is not vacuous."""


MARKUP = [
    "<script>alert(1)</script>",
    "\"><script>alert(1)</script>",
    "'><img src=x onerror=alert(1)>",
    "<svg/onload=alert(1)>",
    "javascript:alert(1)",
    "</title><script>alert(1)</script>",
    "&lt;script&gt;",
    "\" autofocus onfocus=\"alert(1)",
    "<a href='//evil.test'>x</a>",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "<iframe srcdoc='<script>alert(1)</script>'>",
    "{{7*7}}<b>",
]
"""Markup that must never come back unescaped in a page."""

DANGEROUS_FRAGMENTS = ["<script", "<img", "<svg", "<iframe", "<a href", "onerror=", "onload=",
                       "onfocus=", "<b>"]


def reflected_markup(body: bytes) -> List[str]:
    """The dangerous fragments of L{MARKUP} that appear unescaped in C{body}."""
    text = body.decode("utf-8", "replace").lower()
    return [fragment for fragment in DANGEROUS_FRAGMENTS
            if text.count(fragment) > _own_count(fragment, text)]


def _own_count(fragment: str, text: str) -> int:
    """How often the proxy's own page markup holds C{fragment} (its continue links)."""
    if fragment == "<a href":
        return text.count('<a href="https://') + text.count('<a href="/')
    return 0


def spellings(name: str) -> List[str]:
    """
    A header name as a client may send it to get past a filter: cases,
    C{_} and C{.} instead of C{-}, mixed.
    """
    lower = name.lower()
    parts = lower.split("-")
    out = {
        name, lower, name.upper(), name.title(), name.swapcase(),
        "_".join(parts), "_".join(parts).upper(), ".".join(parts),
        ".".join(p.title() for p in parts),
    }
    for i in range(1, len(parts)):
        out.add("-".join(parts[:i]) + "_" + "-".join(parts[i:]))
        out.add("_".join(parts[:i]) + "." + ".".join(parts[i:]))
    rng = random.Random(name)
    for _ in range(4):
        out.add("".join(c.upper() if rng.random() < 0.5 else c for c in lower))
    return sorted(out)


def same_header(name: bytes, wanted: bytes) -> bool:
    """Whether C{name} is C{wanted} to an upstream that folds case, C{_} and C{.}."""
    return canonical_header(name) == canonical_header(wanted)


def parse_response(data: bytes) -> Tuple[int, List[Tuple[bytes, bytes]], bytes]:
    """C{(status, [(lower-case name, value)], body)} of the first response in C{data}."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines and lines[0].startswith(b"HTTP/1."), f"not an HTTP response: {data[:200]!r}"
    status = int(lines[0].split(b" ", 2)[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return status, headers, body


def header_of(headers: List[Tuple[bytes, bytes]], name: bytes) -> List[bytes]:
    return [v for n, v in headers if n == name]


def open_state(value: str) -> LoginAttempt:
    """The login attempt inside a state cookie (the test knows the secret)."""
    plain = Sealer([SECRET.encode("ascii")]).unseal(value, STATE_PURPOSE)
    assert plain is not None, "the state cookie does not open"
    attempt = LoginAttempt.from_bytes(plain)
    assert attempt is not None
    return attempt


class Failures:
    """
    Collects the failed cases of a table, so one test reports all of them
    (each naming its input) instead of stopping at the first.
    """

    def __init__(self, case: SynchronousTestCase, what: str) -> None:
        self.case = case
        self.what = what
        self.items: List[str] = []
        self.count = 0

    def check(self, ok: bool, label: str, value: Any, detail: str) -> None:
        self.count += 1
        if not ok:
            self.items.append(f"{label}: {value!r:.200}: {detail}")

    def done(self, at_least: int = 1) -> None:
        self.case.assertGreaterEqual(self.count, at_least, f"{self.what}: too few cases ran")
        if self.items:
            shown = "\n  ".join(self.items[:40])
            more = f"\n  ... and {len(self.items) - 40} more" if len(self.items) > 40 else ""
            self.case.fail(f"{self.what}: {len(self.items)} of {self.count} cases failed:\n  "
                           f"{shown}{more}")


def iter_pairs(values: Sequence[Any], stride: int) -> Iterator[Any]:
    """Every C{stride}-th value (and the last): a sample for the expensive paths."""
    for i, value in enumerate(values):
        if i % stride == 0 or i == len(values) - 1:
            yield value


def json_body(page: Page) -> Any:
    return json.loads(page.body.decode("utf-8"))
