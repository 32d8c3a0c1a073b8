"""
The running proxy as a Twisted service: listeners on endpoint strings, the
site, and the upstream pools, built from a validated L{Config}.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

import attr
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource

from .config import Config, ConfigError, RouteConfig, load_config
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


RESTART_KEYS = (
    "listen", "public_url", "endpoints_prefix", "workers", "keepalive_timeout", "access_log",
    "oidc", "session", "state_cookie", "redis", "admin", "metrics",
)
"""The top-level keys and sections a reload does not apply (they need a restart)."""


def restart_changes(old: Config, new: Config) -> List[str]:
    """
    The keys in L{RESTART_KEYS} that differ between C{old} and C{new}, as
    C{section.key} (or the section's name when it was added or removed).
    """
    changed: List[str] = []
    for key in RESTART_KEYS:
        a, b = getattr(old, key), getattr(new, key)
        if a == b:
            continue
        if a is not None and b is not None and attr.has(type(a)):
            changed.extend(f"{key}.{f.name}" for f in attr.fields(type(a))
                           if getattr(a, f.name) != getattr(b, f.name))
        else:
            changed.append(key)
    return changed


class ProxyService(MultiService):
    """
    The whole proxy: a listener per endpoint and the site behind them. On stop
    it closes the idle upstream connections.

    @param port_file: when set, the bound addresses are written there, one per
        line, once every listener is up (for tests and scripts that listen on
        port 0).
    @param config_path: the file C{config} was read from, read again by
        L{reload} (on SIGHUP); None: C{config.source}.
    @param client_factory: the upstream clients (for tests; see L{build_site}).
    """

    def __init__(self, config: Config, reactor: Any, listen: Sequence[str],
                 port_file: Optional[str] = None, config_path: Optional[str] = None,
                 client_factory: Optional[Callable[[RouteConfig], UpstreamClient]] = None,
                 ) -> None:
        super().__init__()
        self.config = config
        self.config_path = config_path if config_path is not None else config.source
        self.metrics = Metrics()
        self._reactor = reactor
        self._client_factory = client_factory
        self._previous_sighup: Any = None
        self._sighup_installed = False
        self.site = build_site(config, reactor, client_factory=client_factory,
                               metrics=self.metrics)
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
        self._install_sighup()

    def _install_sighup(self) -> None:
        """Reload on SIGHUP: only under a real reactor, in the main thread."""
        from twisted.internet.base import ReactorBase

        if not isinstance(self._reactor, ReactorBase) or \
                threading.current_thread() is not threading.main_thread():
            return

        def on_sighup(signum: int, frame: Any) -> None:
            self._reactor.callFromThread(self.reload)

        self._previous_sighup = signal.signal(signal.SIGHUP, on_sighup)
        self._sighup_installed = True

    def reload(self) -> bool:
        """
        Read the configuration file again and apply what can change without
        dropping a connection: the routes, the C{[upstream]} defaults, the
        identity headers, C{trusted_proxies} and C{[bearer]}. The other keys
        keep their running values, with one warning naming those that changed.
        An invalid file changes nothing: its problems are logged.

        @return: whether the new configuration was applied.
        """
        log.info("reloading the configuration from {path}", path=self.config_path)
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            for line in e.lines():
                log.error("{line}", line=line)
            log.error("configuration not reloaded: the running one is kept")
            return False
        old = self.config
        merged = attr.evolve(new, **{key: getattr(old, key) for key in RESTART_KEYS})
        try:
            routes = RouteTable(merged.routes)
            proxy = UpstreamProxy(routes, self._reactor, merged.trusted_proxies,
                                  self._client_factory, metrics=self.metrics)
        except (ValueError, TypeError, OSError) as e:
            log.error("config: cannot set up the proxy: {error} (in {path})", error=e,
                      path=self.config_path)
            log.error("configuration not reloaded: the running one is kept")
            return False
        site = self.site
        old_proxy: UpstreamProxy = site.proxy  # type: ignore[attr-defined]
        site.guard.reconfigure(merged, routes, proxy)  # type: ignore[attr-defined]
        site.body_limit = body_limit_for(routes, merged.upstream.max_body_size)
        site.proxy = proxy  # type: ignore[attr-defined]
        self.config = merged
        # Its in-flight requests finish on it; then its pools are closed.
        old_proxy.retire()
        skipped = restart_changes(old, new)
        if skipped:
            log.warn("restart to apply: {keys}", keys=", ".join(skipped))
        log.info("configuration reloaded")
        return True

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
        if self._sighup_installed:
            previous = self._previous_sighup
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)
            self._sighup_installed = False
        self.site.guard.stop()  # type: ignore[attr-defined]
        d = maybeDeferred(super().stopService)
        proxy: UpstreamProxy = self.site.proxy  # type: ignore[attr-defined]
        d.addCallback(lambda _: proxy.close())
        return d
