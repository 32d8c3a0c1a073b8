"""
Tests for L{oidcproxy.core.assurance}: what a step-up requirement is met
by, the RFC 9470 challenge the proxy sends, and the one it reads in an
upstream's answer.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.core.assurance import (
    Requirement,
    challenge,
    meeting,
    parse_challenge,
    sign_in_of,
    unmet,
)

NOW = 1_800_000_000.0


class SignInTests(SynchronousTestCase):
    def test_of_claims(self) -> None:
        self.assertEqual(sign_in_of({"acr": "gold", "auth_time": 5}), ("gold", 5.0))
        self.assertEqual(sign_in_of({}), ("", None))

    def test_malformed_claims(self) -> None:
        """An acr that is no string is none; an auth_time that is no finite number is unknown."""
        for bad in (True, "5", float("inf"), float("nan"), 10 ** 400, None, [1]):
            self.assertEqual(sign_in_of({"acr": 3, "auth_time": bad}), ("", None), bad)


class MeetingTests(SynchronousTestCase):
    def test_acr(self) -> None:
        req = Requirement(("gold",))
        self.assertEqual(meeting(req, [("gold", None)], NOW), ("gold", None))
        self.assertIsNone(meeting(req, [("silver", NOW)], NOW))
        self.assertIsNone(meeting(req, [], NOW))

    def test_preference_order(self) -> None:
        """Of the route's acr values the most preferred held wins, not the latest sign-in."""
        req = Requirement(("gold", "silver"))
        held = [("silver", NOW - 1), ("gold", NOW - 100)]
        self.assertEqual(meeting(req, held, NOW), ("gold", NOW - 100))

    def test_age(self) -> None:
        req = Requirement((), 60.0)
        self.assertEqual(meeting(req, [("", NOW - 60)], NOW), ("", NOW - 60))
        self.assertIsNone(meeting(req, [("", NOW - 61)], NOW))
        self.assertIsNone(meeting(req, [("x", None)], NOW), "no auth_time: age unknown")

    def test_age_in_whole_seconds(self) -> None:
        """
        The age is counted in whole seconds, as an OP counts it for
        C{max_age} (OpenID Connect's NumericDate C{auth_time}): a sign-in
        60.9 s old still meets 60 s. Else a step-up asked the moment the
        proxy finds it too old gets the same sign-in back from an OP that
        does not (yet), and steps up again until the attempts run out.
        """
        req = Requirement((), 60.0)
        self.assertEqual(meeting(req, [("", NOW - 60)], NOW + 0.9), ("", NOW - 60))
        self.assertIsNone(meeting(req, [("", NOW - 60)], NOW + 1.0))

    def test_acr_and_age_on_one_sign_in(self) -> None:
        """Both must hold of the same sign-in: an old gold and a fresh silver are not enough."""
        req = Requirement(("gold",), 60.0)
        self.assertIsNone(meeting(req, [("silver", NOW), ("gold", NOW - 600)], NOW))
        self.assertEqual(meeting(req, [("silver", NOW), ("gold", NOW - 6)], NOW),
                         ("gold", NOW - 6))

    def test_unmet_words(self) -> None:
        self.assertIsNone(unmet(Requirement(("gold",)), [("gold", NOW)], NOW))
        self.assertEqual(unmet(Requirement(("gold", "platinum"), 900.0), [("silver", NOW - 1200)],
                               NOW),
                         "acr gold or platinum and a sign-in at most 900s old required; "
                         "the sign-in has acr 'silver', signed in 1200s ago")
        self.assertEqual(unmet(Requirement((), 5.0), [("", None)], NOW),
                         "a sign-in at most 5s old required; the sign-in has no acr, "
                         "no auth_time")


class ChallengeTests(SynchronousTestCase):
    def test_challenge(self) -> None:
        self.assertEqual(
            challenge(Requirement(("gold", "urn:x:silver"), 900.0)),
            b'Bearer realm="oidcproxy", error="insufficient_user_authentication", '
            b'error_description="A different authentication level is required", '
            b'acr_values="gold urn:x:silver", max_age=900')
        self.assertEqual(
            challenge(Requirement((), 30.5)),
            b'Bearer realm="oidcproxy", error="insufficient_user_authentication", '
            b'error_description="A different authentication level is required", max_age=30')

    def test_round_trip(self) -> None:
        """What the proxy sends, the proxy reads back."""
        for req in (Requirement(("gold",)), Requirement((), 0.0), Requirement(("a", "b"), 60.0)):
            self.assertEqual(parse_challenge([challenge(req)]), req)


class ParseChallengeTests(SynchronousTestCase):
    def test_rfc_9470_examples(self) -> None:
        self.assertEqual(parse_challenge([
            b'Bearer error="insufficient_user_authentication", error_description="A different '
            b'authentication level is required", acr_values="myACR"']),
            Requirement(("myACR",)))
        self.assertEqual(parse_challenge([
            b'Bearer error="insufficient_user_authentication", error_description="More recent '
            b'authentication is required", max_age="5"']), Requirement((), 5.0))

    def test_spelling(self) -> None:
        """Scheme and names in any case, tokens unquoted, spaces around =, escapes in quotes."""
        self.assertEqual(parse_challenge([
            b'bearer ERROR = insufficient_user_authentication ,Acr_Values="a\\b b", max_age=10']),
            Requirement(("ab", "b"), 10.0))

    def test_among_other_challenges(self) -> None:
        """The Bearer challenge is found after others, in one value or in several."""
        self.assertEqual(parse_challenge([
            b'Basic realm="x", Negotiate abc123==, Bearer realm="api", '
            b'error="insufficient_user_authentication", acr_values="gold"']),
            Requirement(("gold",)))
        self.assertEqual(parse_challenge([
            b'Basic realm="x"', b'Bearer error="insufficient_user_authentication", max_age=0']),
            Requirement((), 0.0))

    def test_not_a_step_up(self) -> None:
        """Other errors, other schemes, or a step-up that asks for nothing: passed on."""
        for value in (
            b'Bearer realm="api"',
            b'Bearer error="invalid_token", acr_values="gold"',
            b'Basic error="insufficient_user_authentication", acr_values="gold"',
            b'Bearer error="insufficient_user_authentication"',
            b'DPoP error="insufficient_user_authentication", acr_values="gold"',
        ):
            self.assertIsNone(parse_challenge([value]), value)
        self.assertIsNone(parse_challenge(None))
        self.assertIsNone(parse_challenge([]))

    def test_malformed(self) -> None:
        """What could not be sent on as asked is no step-up: passed on, never a crash."""
        for value in (
            b'Bearer error="insufficient_user_authentication", acr_values=""',
            b'Bearer error="insufficient_user_authentication", acr_values="a a"',
            b'Bearer error="insufficient_user_authentication", max_age=-1',
            b'Bearer error="insufficient_user_authentication", max_age=1.5',
            b'Bearer error="insufficient_user_authentication", max_age=99999999999',
            b'Bearer error="insufficient_user_authentication", acr_values="caf\xc3\xa9"',
            b'Bearer error="insufficient_user_authentication", acr_values="gold',
            b'Bearer error="insufficient_user_authentication" acr_values="gold"',
            b"Bearer " + b"a" * 5000,
            b'Bearer error="insufficient_user_authentication", acr_values="' + b"g" * 5000 + b'"',
            b"",
            b",,,",
            b"\x00\xff",
        ):
            self.assertIsNone(parse_challenge([value]), value[:80])
