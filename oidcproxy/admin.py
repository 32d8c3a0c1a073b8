"""
The session admin API, on a listener of its own (loopback by default):
list a user's sessions and end one or all of them.

    GET    /sessions?sub=SUB              the user's live sessions
    DELETE /sessions?sub=SUB              end them all
    DELETE /sessions/<handle>?sub=SUB     end one (handle from the listing)

Every call needs C{Authorization: Bearer <admin.token>}. A session is shown
by a handle (a hash of its id), never by the id itself: the id is what the
user's cookie holds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .sessions.session import Session, SessionStoreUnavailable

log = Logger()


def handle(session: Session) -> str:
    """The public name of a session in the admin API."""
    return hashlib.sha256(b"oidcproxy admin " + session.id.encode("ascii")).hexdigest()[:32]


class AdminResource(Resource):
    """
    @param store: a session store that can list a user's sessions
        (C{sessions_of}): the Redis store, or the memory store.
    @param token: the bearer token every request must carry.
    """

    isLeaf = True

    def __init__(self, store: Any, token: str) -> None:
        super().__init__()
        self._store = store
        self._token = token.encode("utf-8")

    def render(self, request: Request) -> Any:
        d = Deferred.fromCoroutine(self._handle(request))

        def failed(failure: Any) -> None:
            log.failure("admin request failed", failure)
            if not request.finished:
                self._json(request, 500, {"error": "internal_error"})

        d.addErrback(failed)
        return NOT_DONE_YET

    def _authorized(self, request: Request) -> bool:
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) != 1 or not values[0].startswith(b"Bearer "):
            return False
        return hmac.compare_digest(values[0][len(b"Bearer "):], self._token)

    @staticmethod
    def _json(request: Request, code: int, document: Any) -> None:
        body = json.dumps(document).encode("utf-8")
        request.setResponseCode(code)
        request.responseHeaders.removeHeader(b"server")
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        request.responseHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    async def _handle(self, request: Request) -> None:
        if not self._authorized(request):
            request.responseHeaders.setRawHeaders(b"www-authenticate",
                                                  [b'Bearer realm="oidcproxy-admin"'])
            self._json(request, 401, {"error": "unauthenticated"})
            return
        path = request.path.rstrip(b"/")
        parts = path.split(b"/")
        if len(parts) < 2 or parts[1] != b"sessions" or len(parts) > 3:
            self._json(request, 404, {"error": "not_found"})
            return
        subs = request.args.get(b"sub", [])
        if len(subs) != 1 or not subs[0]:
            self._json(request, 400, {"error": "invalid_request",
                                      "message": "exactly one sub parameter is required"})
            return
        sub = subs[0].decode("utf-8", "replace")
        target: Optional[str] = parts[2].decode("ascii", "replace") if len(parts) == 3 else None
        if request.method == b"GET" and target is None:
            await self._list(request, sub)
        elif request.method == b"DELETE":
            await self._delete(request, sub, target)
        else:
            request.responseHeaders.setRawHeaders(b"allow", [b"GET, DELETE"])
            self._json(request, 405, {"error": "method_not_allowed"})

    async def _sessions(self, request: Request, sub: str) -> Optional[List[Session]]:
        try:
            return list(await self._store.sessions_of(sub))
        except SessionStoreUnavailable:
            self._json(request, 503, {"error": "session_store_unavailable"})
            return None

    async def _list(self, request: Request, sub: str) -> None:
        sessions = await self._sessions(request, sub)
        if sessions is None:
            return
        listing: List[Dict[str, Any]] = [
            {"handle": handle(s), "created": int(s.created), "last_seen": int(s.last_seen),
             "expires": int(s.expires), "sid": s.sid}
            for s in sessions
        ]
        self._json(request, 200, {"sub": sub, "sessions": listing})

    async def _delete(self, request: Request, sub: str, target: Optional[str]) -> None:
        sessions = await self._sessions(request, sub)
        if sessions is None:
            return
        doomed = [s for s in sessions if target is None or handle(s) == target]
        if target is not None and not doomed:
            self._json(request, 404, {"error": "not_found"})
            return
        try:
            for session in doomed:
                await self._store.delete(session)
        except SessionStoreUnavailable:
            self._json(request, 503, {"error": "session_store_unavailable"})
            return
        log.info("admin: {count} session(s) of {sub} ended", count=len(doomed), sub=sub)
        self._json(request, 200, {"deleted": len(doomed)})
