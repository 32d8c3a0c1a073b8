"""
Who the development provider knows: its demo users (public, made-up
credentials) and its one client, the demo proxy.
"""

from __future__ import annotations

import hmac
from typing import Tuple

import attr

CLIENT_ID = "oidcproxy-demo"
SCOPES = ("openid", "profile", "email", "groups")


@attr.s(frozen=True, auto_attribs=True)
class DemoUser:
    """A user of the development provider: public, made-up credentials."""

    username: str
    password: str = attr.ib(repr=False)
    name: str
    email: str
    groups: Tuple[str, ...]

    @property
    def sub(self) -> str:
        return "demo-" + self.username


DEMO_USERS = (
    DemoUser("alice", "wonderland", "Alice Liddell", "alice@example.com", ("admins", "staff")),
    DemoUser("bob", "builder", "Bob Builder", "bob@example.com", ("staff",)),
)
"""alice may see the admins-only page, bob may not."""


@attr.s(frozen=True, auto_attribs=True)
class DemoClient:
    """The one client the development provider knows: the demo proxy."""

    client_id: str
    client_secret: str = attr.ib(repr=False)
    redirect_uris: Tuple[str, ...]
    post_logout_redirect_uris: Tuple[str, ...] = ()


def same(a: str, b: str) -> bool:
    """Whether two credentials are equal, in a time that does not tell where they differ."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
