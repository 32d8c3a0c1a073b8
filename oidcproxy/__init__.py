"""
oidcproxy: an OpenID Connect authenticating reverse proxy built on Twisted.

Nothing heavy is imported here: the twistd plugin and C{--check} load fast,
and importing the package installs no reactor. L{OIDCGuard} is imported on
first use.
"""

from typing import Any

from .web.identity import Identity, identity

__version__ = "0.1.0.dev0"

__all__ = ["Identity", "OIDCGuard", "identity"]


def __getattr__(name: str) -> Any:
    if name == "OIDCGuard":
        from .assemble import OIDCGuard

        return OIDCGuard
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
