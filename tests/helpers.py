"""Small helpers shared by the unit tests."""

from __future__ import annotations

import os
from typing import Dict, Optional

EXAMPLE_ENV = {
    "OIDCPROXY_CLIENT_SECRET": "example-client-secret",
    "OIDCPROXY_SESSION_SECRET": "example-session-secret-of-at-least-32-bytes",
}


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
