"""
Liveness (C{/health}: the process serves requests) and readiness
(C{/ready}: the IdP's metadata and keys are loaded and Redis answers). No
authentication, never cached.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from twisted.web.server import Request

from ...sessions.session import SessionStoreUnavailable
from ..answers import finish, respond
from ..parts import GuardState

__all__ = ["HealthEndpoints"]


class HealthEndpoints:
    """The health and readiness endpoints of one guard."""

    def __init__(self, state: GuardState) -> None:
        self._state = state

    @staticmethod
    def _get_only(request: Request) -> bool:
        if request.method not in (b"GET", b"HEAD"):
            finish(request, 405, "method_not_allowed", "Use GET.", {b"allow": b"GET, HEAD"},
                   as_json=True)
            return False
        return True

    def health(self, request: Request) -> None:
        """Liveness: the process serves requests."""
        if not self._get_only(request):
            return
        document: Dict[str, Any] = {"status": "ok"}
        if self._state.worker_id is not None:
            document["worker"] = self._state.worker_id
        respond(request, 200, b"application/json", json.dumps(document).encode("utf-8"))

    async def ready(self, request: Request) -> None:
        """
        Readiness: 200 once each IdP's discovery document and keys are loaded
        (C{idp}: C{[oidc]}'s, C{idp:NAME}: those of C{[providers.NAME]})
        and Redis (when sessions or the revocation list live there) answers a
        PING within its command timeout; else 503 naming what is not ready.
        """
        if not self._get_only(request):
            return
        parts = self._state.parts
        checks: Dict[str, str] = {}
        providers = [("idp", parts.provider)] + \
            [(f"idp:{name}", bundle.provider) for name, bundle in parts.named.items()]
        for key, provider in providers:
            if provider is not None:
                checks[key] = "ok" if provider.ready else \
                    "the discovery document or the signing keys are not loaded yet"
        stores = [parts.store] if self._state.config.session.store == "redis" else []
        stores.append(parts.revocations)
        for store in stores:
            ping = getattr(store, "ping", None)
            if ping is None:
                continue
            try:
                await ping()
            except SessionStoreUnavailable:
                checks["redis"] = "no answer to PING within the command timeout"
            else:
                checks.setdefault("redis", "ok")
        not_ready = sorted(name for name, status in checks.items() if status != "ok")
        document: Dict[str, Any] = {"status": "not_ready" if not_ready else "ready",
                                    "checks": checks}
        if not_ready:
            document["not_ready"] = not_ready
        respond(request, 503 if not_ready else 200, b"application/json",
                json.dumps(document).encode("utf-8"))
