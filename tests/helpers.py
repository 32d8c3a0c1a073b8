"""
Small helpers shared by the tests, and the policy for what a test needs
from the machine.

A test that needs a program, a file or a Python module the machine lacks
fails, saying what to install; it does not skip, so that a machine missing
a part cannot pass the suite by running less of it. C{tests/run.sh}
installs every part. Where skipping is wanted on purpose (a developer's
laptop without nginx, say), C{OIDCPROXY_TESTS_ALLOW_SKIP=1} turns each of
these failures into a skip with the same message.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import Dict, Optional

from twisted.trial.unittest import FailTest, SkipTest

EXAMPLE_ENV = {
    "OIDCPROXY_CLIENT_SECRET": "example-client-secret",
    "OIDCPROXY_SESSION_SECRET": "example-session-secret-of-at-least-32-bytes",
}

ALLOW_SKIP = "OIDCPROXY_TESTS_ALLOW_SKIP"
"""The environment variable that lets a test skip for a missing part (value C{1})."""


def set_env(case, values: Dict[str, Optional[str]]) -> None:
    """Set (or, with None, unset) environment variables for one test."""
    saved = {k: os.environ.get(k) for k in values}

    def restore() -> None:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    case.addCleanup(restore)
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def use_example_env(case) -> None:
    """The secrets etc/oidcproxy.toml takes from the environment."""
    set_env(case, dict(EXAMPLE_ENV))


# -- what a test needs from the machine ------------------------------------------------------


class MissingRequirement(FailTest):
    """A part this test needs is not on this machine (a failure: trial counts it as one)."""


def skipping_allowed() -> bool:
    """Whether C{OIDCPROXY_TESTS_ALLOW_SKIP=1} is set."""
    return os.environ.get(ALLOW_SKIP, "") == "1"


def missing(message: str) -> Exception:
    """
    What to raise when a part a test needs is missing: a failure saying
    C{message}, or, with C{OIDCPROXY_TESTS_ALLOW_SKIP=1}, a skip saying the same.
    """
    if skipping_allowed():
        return SkipTest(message)
    return MissingRequirement(f"{message} (or set {ALLOW_SKIP}=1 to skip instead of failing)")


def require_program(name: str, package: str, path: Optional[str] = None) -> str:
    """
    The absolute path of the program C{name} (at C{path} when given, else on
    C{$PATH}, or in C{/usr/sbin} and C{/sbin}, which a non-root C{$PATH}
    may lack); when it is not there, fail (or skip, see L{missing}) naming
    the Debian C{package} that has it.
    """
    if path is not None:
        found: Optional[str] = path if os.access(path, os.X_OK) else None
    else:
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise missing(f"{path or name} is not installed: apt-get install {package} "
                      f"(tests/run.sh installs it)")
    return found


def require_file(path: str, why: str) -> str:
    """C{path}, when it is a file; otherwise fail (or skip) saying C{why} it should be there."""
    if not os.path.isfile(path):
        raise missing(f"{path} is missing: {why}")
    return path


def require_module(name: str, how: str) -> ModuleType:
    """The Python module C{name}, imported; otherwise fail (or skip) saying C{how} to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise missing(f"the Python module {name} is not installed ({e}): {how}") from None
