"""
WebSockets behind the login: the HTTP/1.1 C{Upgrade} path of the proxy.

L{twisted.web.client.Agent} cannot hand over a connection after a
C{101 Switching Protocols}, so an upgrade request that the guard has let
through (authenticated and authorized like any other) takes this path
instead of the Agent's:

  1. a connection of its own to the route's upstream (TCP, or TLS verified
     with the route's C{ca_bundle} and client certificate, like its https
     requests);
  2. the request head, with the headers the normal path would send (hop-by-hop
     ones removed, identity and C{X-Forwarded-*} set) plus C{Connection:
     Upgrade} and the client's C{Upgrade};
  3. the upstream's answer head, read with a size bound: a C{101} is relayed
     and the two connections are spliced; any other answer is relayed as a
     normal response; a malformed or oversized head, or a connection refused
     or reset before it, is a 502, and no head within the route's C{timeout}
     a 504.

The modules, in that order: L{upgrade <oidcproxy.proxy.websocket.upgrade>}
(the handshake, steps 1 to 3, and a non-101 answer; the connection of step
1 is made by L{oidcproxy.proxy.connect.UpstreamEndpoints}), L{head
<oidcproxy.proxy.websocket.head>} (the HTTP/1.1 heads and body framing it
parses itself), L{splice <oidcproxy.proxy.websocket.splice>} (the two
connections after the 101: bytes copied both ways, never parsed as frames,
with back-pressure both ways) and L{registry
<oidcproxy.proxy.websocket.registry>}: every open socket is in the process's
L{SocketRegistry}, which caps their number (C{max_websockets}, 503 above) and
closes those of a session at logout, and of a user or IdP session at
back-channel logout.
"""

from ..connect import EndpointFactory, UpstreamEndpoints
from ..headers import is_websocket_upgrade
from .head import MAX_HEAD, parse_response_head
from .registry import SocketRegistry
from .upgrade import WebSocketProxy

__all__ = ["MAX_HEAD", "EndpointFactory", "SocketRegistry", "UpstreamEndpoints", "WebSocketProxy",
           "is_websocket_upgrade", "parse_response_head"]
