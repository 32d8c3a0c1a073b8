"""
Step-up with Microsoft Entra ID's authentication contexts (a provider's
C{acr_claim = "acrs"}): a step-up login asks with the C{claims} request
parameter, and each value of a sign-in's C{acrs} array counts as its acr.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import ConfigError, parse_config
from oidcproxy.core.assurance import Requirement
from oidcproxy.sessions.history import claims_sign_ins
from oidcproxy.sessions.session import PROXY_CLAIMS

from .fakes import API, APP, SESSION_COOKIE, START, GuardStack, make_config, open_session
from .test_config_step_up import document
from .test_guard_bearer import bearer, rs256
from .test_step_up_callback import StepUpCallbackCase

ROUTES = [
    {"path": "/admin", "upstream": "http://up.test", "acr_values": ["c3"]},
    {"path": "/api", "upstream": "http://up.test", "auth": "bearer", "acr_values": ["c3"]},
    {"path": "/", "upstream": "http://up.test"},
]


def entra(case: SynchronousTestCase, **config: Any) -> GuardStack:
    return GuardStack(case, make_config(oidc={"acr_claim": "acrs"}, routes=ROUTES, **config))


class ConfigTests(SynchronousTestCase):
    def test_default_and_choice(self) -> None:
        """acr_claim is "acr" unless set; "acrs" in [oidc] and in a named provider."""
        doc = document({})
        self.assertEqual(parse_config(doc, "t.toml").oidc.acr_claim, "acr")
        doc["oidc"]["acr_claim"] = "acrs"
        doc["providers"] = {"corp": {"issuer": "https://corp.example.com", "client_id": "p",
                                     "client_secret": "s", "acr_claim": "acrs"}}
        config = parse_config(doc, "t.toml")
        self.assertEqual((config.oidc.acr_claim, config.provider_config("corp").acr_claim),
                         ("acrs", "acrs"))

    def test_bad_value(self) -> None:
        doc = document({})
        doc["oidc"]["acr_claim"] = "amr"
        e = self.assertRaises(ConfigError, parse_config, doc, "t.toml")
        self.assertIn("oidc.acr_claim", " ".join(e.problems))


class SignInsTests(SynchronousTestCase):
    def test_each_value_counts(self) -> None:
        claims = {"acrs": ["c1", "c3", "c1", 7, ""], "acr": "x", "auth_time": START}
        self.assertEqual(claims_sign_ins(claims, "acrs"), (("c1", START), ("c3", START)))

    def test_without_acrs(self) -> None:
        """No (usable) acrs: one sign-in without acr (the acr claim is not read)."""
        self.assertEqual(claims_sign_ins({"acr": "c3", "auth_time": START}, "acrs"),
                         (("", START),))
        self.assertEqual(claims_sign_ins({"acrs": "c3"}, "acrs"), (("", None),))

    def test_acr_reads_acr(self) -> None:
        self.assertEqual(claims_sign_ins({"acrs": ["c3"], "acr": "1"}, "acr"), (("1", None),))

    def test_kept_in_sessions(self) -> None:
        """acrs is one of the claims a session always keeps."""
        self.assertIn("acrs", PROXY_CLAIMS)


class LoginTests(StepUpCallbackCase):
    """The step-up login asks with the claims parameter; the callback reads acrs."""

    def stack(self, **config: Any) -> GuardStack:
        return entra(self, **config)

    def test_claims_parameter(self) -> None:
        """The essential acrs claim with the asked values; no acr_values; max_age as ever."""
        h = self.stack()
        browser = self.signed_in(h)
        params = self.step_up(h, browser, Requirement(("c3", "c4"), 600.0))
        self.assertNotIn("acr_values", params)
        self.assertEqual(json.loads(params["claims"]),
                         {"id_token": {"acrs": {"essential": True, "values": ["c3", "c4"]}}})
        self.assertEqual(params["max_age"], "600")

    def test_acr_provider_unchanged(self) -> None:
        """A provider with acr_claim = "acr" sends acr_values and no claims parameter."""
        h = GuardStack(self)
        params = self.step_up(h, self.signed_in(h), Requirement(("c3",)))
        self.assertEqual(params["acr_values"], "c3")
        self.assertNotIn("claims", params)

    def test_callback_reads_acrs(self) -> None:
        """One of the ID token's acrs asked: in; none (or only an acr claim): refused."""
        h = self.stack()
        browser = self.signed_in(h)
        page = self.back(h, browser, self.step_up(h, browser, Requirement(("c3",))),
                         acrs=["c1", "c3"], auth_time=START)
        self.assertEqual((page.code, page.location), (302, APP + "/admin?x=1"))
        page = self.back(h, browser, self.step_up(h, browser, Requirement(("c4",))),
                         acrs=["c1", "c3"], acr="c4", auth_time=START)
        self.assertEqual(page.code, 401)
        self.assertIn(b"did not confirm the sign-in level asked for", page.body)

    def test_carried_per_value(self) -> None:
        """The earlier sign-ins of a stepped-up session: each acrs value of the old one."""
        h = self.stack()
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acrs": ["c1", "c2"],
                                                    "auth_time": START - 50})
        self.back(h, browser, self.step_up(h, browser, Requirement(("c3",))),
                  acrs=["c2", "c3"], auth_time=START)
        session = open_session(browser.jar[SESSION_COOKIE])
        self.assertEqual(session.sign_ins, (("c1", START - 50),))


class GuardTests(SynchronousTestCase):
    def test_session_meets_with_any_value(self) -> None:
        """A session whose acrs hold the route's value is served; the header names that value."""
        h = entra(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acrs": ["c1", "c3"], "auth_time": START})
        self.assertEqual(browser.get("/admin/x", headers=API).code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"c3"])
        self.assertEqual(browser.get("/x", headers=API).code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"c1,c3"])

    def test_session_without_the_value(self) -> None:
        h = entra(self)
        browser = h.browser()
        h.login(browser, "/oidc/login?rd=/", claims={"acrs": ["c1"], "acr": "c3"})
        page = browser.get("/admin/x", headers=API)
        self.assertEqual((page.code, page.json()["error"]),
                         (401, "insufficient_user_authentication"))
        step = browser.navigate("/admin/x")
        self.assertEqual(step.code, 302)
        claims = json.loads(step.location_query()["claims"][0])
        # One context: "value", as Microsoft's documentation asks for it.
        self.assertEqual(claims["id_token"]["acrs"], {"essential": True, "value": "c3"})

    def test_bearer_token(self) -> None:
        """A bearer token's acrs are read the same way."""
        h = entra(self)
        ok: Dict[str, Any] = {"acrs": ["c3"]}
        self.assertEqual(h.browser().get("/api/x", headers=bearer(rs256(h, **ok))).code, 200)
        self.assertEqual(h.app.header(b"x-forwarded-acr"), [b"c3"])
        page = h.browser().get("/api/x", headers=bearer(rs256(h, acr="c3")))
        self.assertEqual(page.code, 401)
