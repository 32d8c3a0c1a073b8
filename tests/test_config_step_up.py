"""
Tests for the configuration of step-up authentication: the routes'
C{acr_values}, C{max_auth_age} and C{step_up}, the providers'
C{step_up_prompt_login} and the C{[step_up]} table.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.config import Config, ConfigError, StepUpConfig, parse_config
from oidcproxy.core.assurance import Requirement

from .fakes import SECRET


def document(route: Dict[str, Any], **changes: Any) -> Dict[str, Any]:
    """A valid file whose second route has C{route}'s keys."""
    doc: Dict[str, Any] = {
        "public_url": "https://app.example.com",
        "session": {"secrets": [SECRET]},
        "oidc": {"issuer": "https://idp.example.com", "client_id": "proxy",
                 "client_secret": "s3cret"},
        "routes": [
            {"path": "/", "upstream": "http://127.0.0.1:9000"},
            {"path": "/admin", "upstream": "http://127.0.0.1:9001", **route},
        ],
    }
    doc.update(changes)
    return doc


class StepUpConfigCase(SynchronousTestCase):
    def parse(self, doc: Dict[str, Any]) -> Config:
        return parse_config(doc, "test.toml")

    def problems(self, doc: Dict[str, Any]) -> List[str]:
        e = self.assertRaises(ConfigError, parse_config, doc, "test.toml")
        return list(e.problems)


class RouteKeysTests(StepUpConfigCase):
    """A route's acr_values, max_auth_age and step_up."""

    def test_defaults(self) -> None:
        """A route asks nothing of the sign-in unless told: no acr, any age, no step_up."""
        route = self.parse(document({})).routes[1]
        self.assertEqual((route.acr_values, route.max_auth_age, route.step_up), ((), None, False))
        self.assertIsNone(route.requirement)

    def test_read(self) -> None:
        """The keys are read as given: acr values in order, the age in seconds."""
        route = self.parse(document({"acr_values": ["gold", "urn:mace:incommon:iap:silver"],
                                     "max_auth_age": "15m", "step_up": True})).routes[1]
        self.assertEqual(route.acr_values, ("gold", "urn:mace:incommon:iap:silver"))
        self.assertEqual(route.max_auth_age, 900.0)
        self.assertTrue(route.step_up)
        self.assertEqual(route.requirement,
                         Requirement(("gold", "urn:mace:incommon:iap:silver"), 900.0))

    def test_max_auth_age_alone(self) -> None:
        """max_auth_age alone is an assurance requirement too."""
        route = self.parse(document({"max_auth_age": "30s"})).routes[1]
        self.assertEqual(route.requirement, Requirement((), 30.0))
        self.assertEqual(route.acr_values, ())

    def test_bad_acr_values(self) -> None:
        """An acr value with a space, a quote, a backslash or nothing is refused, by name."""
        for bad in ("two words", 'a"b', "a\\b", "", "caf\u00e9"):
            problems = self.problems(document({"acr_values": [bad]}))
            self.assertEqual(len(problems), 1, bad)
            self.assertIn("routes[1].acr_values", problems[0])
            self.assertIn("is not an acr value", problems[0])

    def test_acr_values_twice_or_empty(self) -> None:
        """A value named twice is refused; an empty list (the default) asks nothing."""
        self.assertIn("names a value twice",
                      " ".join(self.problems(document({"acr_values": ["a", "a"]}))))
        self.assertIsNone(self.parse(document({"acr_values": []})).routes[1].requirement)

    def test_max_auth_age_positive(self) -> None:
        """A max_auth_age of zero or a malformed one is refused."""
        for bad in ("0s", "soon"):
            problems = self.problems(document({"max_auth_age": bad}))
            self.assertIn("routes[1].max_auth_age", " ".join(problems), bad)

    def test_not_on_public_or_optional_routes(self) -> None:
        """A route that serves requests without a sign-in cannot ask for more of one."""
        for auth in ("none", "optional"):
            for key, value in (("acr_values", ["gold"]), ("max_auth_age", "1m"),
                               ("step_up", True)):
                problems = self.problems(document({"auth": auth, key: value}))
                self.assertEqual(len(problems), 1, (auth, key))
                self.assertIn(f"routes[1].{key}", problems[0])
                self.assertIn(f'auth = "{auth}"', problems[0])

    def test_step_up_needs_browsers(self) -> None:
        """step_up on a bearer-only route is refused; acr_values there is fine."""
        problems = self.problems(document({"auth": "bearer", "step_up": True}))
        self.assertIn("routes[1].step_up", " ".join(problems))
        route = self.parse(document({"auth": "bearer", "acr_values": ["gold"]},
                                    bearer={"audiences": ["api"]})).routes[1]
        self.assertEqual(route.acr_values, ("gold",))

    def test_with_several_providers(self) -> None:
        """A route of a named provider takes the keys as any other."""
        doc = document({"provider": "corp", "acr_values": ["mfa"]},
                       providers={"corp": {"issuer": "https://corp.example",
                                           "client_id": "c", "client_secret": "s",
                                           "step_up_prompt_login": True}})
        config = self.parse(doc)
        self.assertEqual(config.routes[1].acr_values, ("mfa",))
        corp = config.provider_config("corp")
        assert corp is not None
        self.assertTrue(corp.step_up_prompt_login)


class ProviderKeyTests(StepUpConfigCase):
    """[oidc] step_up_prompt_login."""

    def test_default_off(self) -> None:
        config = self.parse(document({}))
        assert config.oidc is not None
        self.assertFalse(config.oidc.step_up_prompt_login)

    def test_on(self) -> None:
        doc = document({})
        doc["oidc"]["step_up_prompt_login"] = True
        config = self.parse(doc)
        assert config.oidc is not None
        self.assertTrue(config.oidc.step_up_prompt_login)


class StepUpTableTests(StepUpConfigCase):
    """The [step_up] table."""

    def test_defaults(self) -> None:
        self.assertEqual(self.parse(document({})).step_up, StepUpConfig())
        self.assertEqual(StepUpConfig().acr_header, "X-Forwarded-Acr")
        self.assertEqual(StepUpConfig().auth_time_header, "X-Forwarded-Auth-Time")

    def test_read(self) -> None:
        config = self.parse(document({}, step_up={
            "acr_header": "X-Auth-Level", "auth_time_header": "", "max_attempts": 5,
            "attempt_window": "1h"}))
        self.assertEqual(config.step_up, StepUpConfig(
            acr_header="X-Auth-Level", auth_time_header=None, max_attempts=5,
            attempt_window=3600.0))

    def test_bad_values(self) -> None:
        problems = " ".join(self.problems(document({}, step_up={
            "acr_header": "bad header", "max_attempts": 0, "attempt_window": "0s",
            "extra": 1})))
        for key in ("step_up.acr_header", "step_up.max_attempts", "step_up.attempt_window",
                    "step_up.extra"):
            self.assertIn(key, problems)

    def test_header_of_headers_refused(self) -> None:
        """A step-up header that [headers] also sets would be set twice: refused."""
        problems = self.problems(document({}, headers={"x-forwarded-acr": "acr"}))
        self.assertEqual(len(problems), 1)
        self.assertIn("step_up.acr_header", problems[0])
        self.assertIn("[headers]", problems[0])
        # Named otherwise, it is fine.
        config = self.parse(document({}, headers={"X-Acr": "acr"},
                                     step_up={"acr_header": "X-Level"}))
        self.assertEqual(config.step_up.acr_header, "X-Level")

    def test_two_step_up_headers_the_same(self) -> None:
        problems = self.problems(document({}, step_up={"acr_header": "X-A",
                                                       "auth_time_header": "x-a"}))
        self.assertIn("step_up.auth_time_header", " ".join(problems))
