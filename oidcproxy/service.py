"""
The running proxy as a Twisted service: listeners on endpoint strings, the
site, and the upstream pools, built from a validated L{Config}.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource

from .config import Config, RouteConfig
from .cookies import CHUNK_SIZE
from .metrics import Metrics
from .routes import BadRequestTarget, RouteTable
from .server import BodyLimit, ProxySite
from .upstream import UpstreamClient, UpstreamProxy

log = Logger()


def body_limit_for(routes: RouteTable, default: int) -> BodyLimit:
    """
    The early body-size check's limit for a request and its route: the
    route's limit, or — when the route cannot be known yet — the largest of
    any route, so the early check never refuses what the route would accept.
    """
    largest = max([r.settings.max_body_size for r in routes.routes] + [default])

    def limit(host: Optional[bytes], target: Optional[bytes]) -> Tuple[int, Optional[RouteConfig]]:
        if target is None:
            return largest, None
        try:
            match = routes.match(host, target)
        except BadRequestTarget:
            return largest, None
        if match is None:
            return largest, None
        return match.route.settings.max_body_size, match.route

    return limit


def max_header_size(config: Config) -> int:
    """
    Room for the request headers: Twisted's 16 KiB, plus the largest session
    cookie (every chunk) and the state cookies of parallel logins.
    """
    return 16384 + config.session.max_cookie_chunks * (CHUNK_SIZE + 256) + \
        config.state_cookie.max_count * 512


def build_site(
    config: Config,
    reactor: Any,
    client_factory: Optional[Callable[[RouteConfig], UpstreamClient]] = None,
    metrics: Optional[Metrics] = None,
) -> ProxySite:
    """
    The proxy as a L{ProxySite}: route table, the guard, the upstream proxy
    behind it, the access log; all counting in C{metrics} (default: a
    L{Metrics} of their own).
    """
    from .guard import OIDCGuard

    if metrics is None:
        metrics = Metrics()
    routes = RouteTable(config.routes)
    proxy = UpstreamProxy(routes, reactor, config.trusted_proxies, client_factory,
                          metrics=metrics)
    guard = OIDCGuard(config, proxy, reactor, routes=routes,
                      max_cookie_bytes=config.session.max_cookie_chunks * CHUNK_SIZE,
                      metrics=metrics)
    resource: IResource = guard
    site = ProxySite(
        resource,
        clock=reactor,
        body_limit=body_limit_for(routes, config.upstream.max_body_size),
        keepalive_timeout=config.keepalive_timeout,
        access_log=config.access_log,
        reactor=reactor,
        max_header_size=max_header_size(config),
        metrics=metrics,
    )
    site.proxy = proxy  # type: ignore[attr-defined]
    site.guard = guard  # type: ignore[attr-defined]
    return site


class ListenError(Exception):
    """A listener could not be opened."""


class ListenerService(Service):
    """
    Listen on one endpoint string. Opening happens in
    C{privilegedStartService} (before twistd drops privileges), and a failure
    stops the start-up with a line naming the endpoint and the cause.
    """

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self._reactor = reactor
        self.description = description
        self._factory = factory
        self.port: Optional[IListeningPort] = None
        self.listening: Deferred = Deferred()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            endpoint = serverFromString(self._reactor, self.description)
        except (ValueError, LookupError, TypeError, OSError) as e:
            raise ListenError(f"invalid endpoint string {self.description!r}: {e}") from None
        d = endpoint.listen(self._factory)
        failures: List[Any] = []
        d.addCallbacks(self._listened, failures.append)
        if failures:
            reason = failures[0].value
            raise ListenError(f"cannot listen on {self.description!r}: {reason}")

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        log.info("listening on {endpoint} ({address})", endpoint=self.description,
                 address=_address(port))
        self.listening.callback(port)

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening)
        return None


def _address(port: IListeningPort) -> str:
    host: Any = port.getHost()
    if hasattr(host, "port"):
        h = host.host
        return f"[{h}]:{host.port}" if ":" in h else f"{h}:{host.port}"
    return str(getattr(host, "name", host))


class ProxyService(MultiService):
    """
    The whole proxy: a listener per endpoint and the site behind them. On stop
    it closes the idle upstream connections.

    @param port_file: when set, the bound addresses are written there, one per
        line, once every listener is up (for tests and scripts that listen on
        port 0).
    """

    def __init__(self, config: Config, reactor: Any, listen: Sequence[str],
                 port_file: Optional[str] = None) -> None:
        super().__init__()
        self.config = config
        self.metrics = Metrics()
        self.site = build_site(config, reactor, metrics=self.metrics)
        self.listeners = [ListenerService(reactor, desc, self.site) for desc in listen]
        if config.admin is not None:
            from twisted.web.server import Site

            from .admin import AdminResource

            store = self.site.guard.store  # type: ignore[attr-defined]
            admin_site = Site(AdminResource(store, config.admin.token.reveal()), reactor=reactor)
            self.listeners.append(ListenerService(reactor, config.admin.listen, admin_site))
        if config.metrics is not None:
            from .metrics import metrics_site

            self.listeners.append(ListenerService(reactor, config.metrics.listen,
                                                  metrics_site(self.metrics, reactor)))
        for listener in self.listeners:
            listener.setServiceParent(self)
        self._port_file = port_file

    def startService(self) -> None:
        super().startService()
        # Discovery and JWKS load in the background: the proxy serves public
        # routes at once and answers 503 to logins until the IdP is reachable.
        self.site.guard.start()  # type: ignore[attr-defined]

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            # One clear line for the operator, not a traceback.
            print(f"oidcproxy: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        DeferredList([ls.listening for ls in self.listeners]).addCallback(
            lambda _: self._listening()
        )

    def _listening(self) -> None:
        """Every listener is up: write the port file, then tell systemd."""
        if self._port_file:
            self._write_port_file()
        from .systemd import notify

        addresses = ", ".join(_address(ls.port) for ls in self.listeners if ls.port)
        notify(f"READY=1\nSTATUS=listening on {addresses}")

    def _write_port_file(self) -> None:
        assert self._port_file is not None
        lines = "".join(_address(ls.port) + "\n" for ls in self.listeners if ls.port)
        directory = os.path.dirname(os.path.abspath(self._port_file))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".oidcproxy-port-")
        with os.fdopen(fd, "w") as f:
            f.write(lines)
        os.replace(tmp, self._port_file)

    def stopService(self) -> Any:
        from .systemd import notify

        notify("STOPPING=1")
        self.site.guard.stop()  # type: ignore[attr-defined]
        d = maybeDeferred(super().stopService)
        proxy: UpstreamProxy = self.site.proxy  # type: ignore[attr-defined]
        d.addCallback(lambda _: proxy.close())
        return d
