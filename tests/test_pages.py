"""
Tests for L{oidcproxy.core.pages}: HTML for browsers, JSON for API clients,
nothing reflected, no version banner.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from oidcproxy.core.pages import render_error, wants_json


def request(accept=None, method=b"GET"):
    r = DummyRequest([b""])
    r.method = method
    if accept is not None:
        r.requestHeaders.setRawHeaders(b"accept", [accept])
    return r


class WantsJSONTests(SynchronousTestCase):
    def test_table(self):
        """JSON for API-style Accept headers, HTML for browsers and for no Accept."""
        cases = [
            (None, False),
            (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
            (b"application/json", True),
            (b"application/json, text/plain, */*", True),
            (b"application/problem+json", True),
            (b"text/plain", True),
            (b"*/*", False),
            (b"text/html, application/json", False),
        ]
        for accept, expected in cases:
            self.assertEqual(wants_json(request(accept)), expected, accept)


class RenderErrorTests(SynchronousTestCase):
    def test_html(self):
        """Browsers get a small escaped HTML page with the status."""
        r = request(b"text/html")
        r.responseHeaders.setRawHeaders(b"server", [b"TwistedWeb/1.0"])
        body = render_error(r, 502, "bad_gateway", "Upstream <down> & out.")
        self.assertEqual(r.responseCode, 502)
        self.assertEqual(r.responseHeaders.getRawHeaders(b"content-type"),
                         [b"text/html; charset=utf-8"])
        self.assertIn(b"<h1>502 Bad Gateway</h1>", body)
        self.assertIn(b"Upstream &lt;down&gt; &amp; out.", body)
        self.assertIsNone(r.responseHeaders.getRawHeaders(b"server"))
        self.assertEqual(r.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(r.responseHeaders.getRawHeaders(b"content-length"),
                         [str(len(body)).encode()])

    def test_json(self):
        """API clients get JSON with a machine-readable error code."""
        r = request(b"application/json")
        body = render_error(r, 504, "upstream_timeout", "Too slow.")
        self.assertEqual(json.loads(body), {"error": "upstream_timeout", "message": "Too slow."})
        self.assertEqual(r.responseHeaders.getRawHeaders(b"content-type"), [b"application/json"])

    def test_head_has_no_body(self):
        """HEAD gets the headers and no body."""
        r = request(b"text/html", method=b"HEAD")
        self.assertEqual(render_error(r, 404, "not_found", "No."), b"")
        self.assertEqual(r.responseCode, 404)
