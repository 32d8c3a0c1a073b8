"""
Property-based testing with Hypothesis, the trial way.

Every C{tests/test_prop_*.py} module imports L{given} from here instead of
Hypothesis's own: it registers the settings profiles, counts the generated
cases each property test ran and makes a failure's message carry the shrunk
example and the reproduction blob (trial prints the exception, not
Hypothesis's report).

Profiles (chosen with C{HYPOTHESIS_PROFILE}, default C{ci}):

    - C{ci}: a bounded number of examples per test, for the test command;
    - C{long}: many more examples, for a search before a release or after a
      parser changed (C{HYPOTHESIS_PROFILE=long}).

Each property test appends C{<test id> <cases>} to L{CASES_FILE} in the
current directory, which trial makes its temporary directory (one per
worker with C{-j}); C{tests/run.sh} adds them up.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import given as _given

__all__ = ["CASES_FILE", "PROFILE", "given", "scaled"]

CASES_FILE = "hypothesis-cases.txt"

_COMMON: Any = {
    "deadline": None,  # a shared CI machine makes per-example timings noise
    "print_blob": True,
    "derandomize": False,
    "database": None,  # trial empties its temporary directory each run
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=150, **_COMMON)
settings.register_profile("long", max_examples=5000, **_COMMON)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def scaled(examples: int) -> settings:
    """
    Settings for a test that costs more (or less) than most: C{examples}
    per run in the C{ci} profile, the profile's own figure scaled alike in
    others.
    """
    base = settings.get_profile(PROFILE).max_examples
    return settings(max_examples=max(1, base * examples // 150))


def _record(test_id: str, cases: int) -> None:
    with open(CASES_FILE, "a", encoding="utf-8") as f:
        f.write(f"{test_id} {cases}\n")


def _with_notes(error: BaseException) -> str:
    """
    The error's traceback and Hypothesis's notes (falsifying example, blob),
    those of each error of a group too.
    """
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if sys.version_info < (3, 11):
        # Before 3.11 the traceback module prints neither notes nor groups
        # (unless the exceptiongroup backport taught it to).
        for each in [error, *getattr(error, "exceptions", ())]:
            if each is not error and str(each) not in text:
                text += "".join(traceback.format_exception(type(each), each, each.__traceback__))
            text += "".join(f"{note}\n" for note in getattr(each, "__notes__", ())
                            if str(note) not in text)
    return text


def _reported(error: BaseException) -> bool:
    """Whether Hypothesis has reported on this error (a falsifying example)."""
    return bool(getattr(error, "__notes__", None)) or any(
        _reported(each) for each in getattr(error, "exceptions", ()))


def given(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[[Any], None]]:
    """
    L{hypothesis.given} for a trial test method, counting the cases it runs.
    Put C{@example} and C{@settings} below it (next to the function).
    """

    def decorate(function: Callable[..., Any]) -> Callable[[Any], None]:
        @functools.wraps(function)
        def counted(self: Any, *a: Any, **kw: Any) -> Any:
            self._hypothesis_cases += 1
            return function(self, *a, **kw)

        test = _given(*args, **kwargs)(counted)

        def run(self: Any) -> None:
            self._hypothesis_cases = 0
            try:
                test(self)
            except Exception as e:
                if isinstance(e, self.failureException) or _reported(e):
                    raise self.failureException(_with_notes(e)) from None
                raise
            finally:
                _record(self.id(), self._hypothesis_cases)

        run.__name__ = function.__name__
        run.__qualname__ = function.__qualname__
        run.__doc__ = function.__doc__
        run.__module__ = function.__module__
        return run

    return decorate
