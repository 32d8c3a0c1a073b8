"""
The process's open WebSockets, by session, IdP session, user and provider:
the cap on their number, and the way logout and back-channel logout close them.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from ...core.metrics import NullMetrics

__all__ = ["SocketRegistry"]


class SocketRegistry:
    """
    The upgraded connections of one proxy process (those still in their
    handshake too), by session id, IdP session id (C{sid}), user (C{sub})
    and provider: a C{sid} or C{sub} is one provider's only.

    @ivar limit: how many may be open at once (C{max_websockets}).
    @ivar default_max_lifetime: the C{websocket_max_lifetime} of routes that
        set none (C{session.lifetime}); 0: no limit.
    """

    def __init__(self, limit: int = 1000, default_max_lifetime: float = 8 * 3600.0,
                 metrics: Optional[NullMetrics] = None) -> None:
        self.limit = limit
        self.default_max_lifetime = default_max_lifetime
        self.metrics = metrics if metrics is not None else NullMetrics()
        self._sockets: Dict[Any, Tuple[Optional[str], Optional[str], Optional[str], str]] = {}

    def __len__(self) -> int:
        return len(self._sockets)

    def add(self, socket: Any, session_id: Optional[str], sid: Optional[str],
            sub: Optional[str], provider: str = "") -> bool:
        """
        Take C{socket} in, opened by a user of C{provider} (a named
        provider's name; C{""}: C{[oidc]}'s); False (and nothing kept) when
        the registry is full.
        """
        if len(self._sockets) >= self.limit:
            return False
        self._sockets[socket] = (session_id, sid, sub, provider)
        return True

    def discard(self, socket: Any) -> None:
        self._sockets.pop(socket, None)

    def close(self, session_id: Optional[str] = None, sid: Optional[str] = None,
              sub: Optional[str] = None, why: str = "logout",
              provider: Optional[str] = None) -> int:
        """
        Close the sockets opened with session C{session_id}, or in IdP
        session C{sid}, or by user C{sub} (whichever are given); with
        C{provider}, a C{sid} or C{sub} is that provider's (another IdP's
        user may have the same).

        @return: how many.
        """
        doomed = [
            socket for socket, (i, d, u, p) in self._sockets.items()
            if (session_id is not None and i == session_id)
            or ((provider is None or p == provider)
                and ((sid is not None and d == sid) or (sub is not None and u == sub)))
        ]
        for socket in doomed:
            socket.close(why)
        return len(doomed)

    def close_all(self, why: str = "shutdown") -> int:
        doomed = list(self._sockets)
        for socket in doomed:
            socket.close(why)
        return len(doomed)
