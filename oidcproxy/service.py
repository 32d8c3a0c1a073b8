"""
The running proxy as a Twisted service: listeners on endpoint strings, the
site, and the upstream pools, built from a validated L{Config}.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import tempfile
import threading
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

import attr
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import IResource

from .config import Config, ConfigError, RouteConfig, load_config
from .core.metrics import Metrics
from .core.settle import all_settled
from .lint import secret_warnings
from .proxy.routes import BadRequestTarget, RouteTable
from .proxy.upstream import UpstreamClient, UpstreamProxy
from .proxy.websocket import SocketRegistry
from .sessions.cookies import CHUNK_SIZE
from .web.pages.templates import load_templates
from .web.server import BodyLimit, ProxySite

log = Logger()


def body_limit_for(routes: RouteTable, default: int) -> BodyLimit:
    """
    The early body-size check's limit for a request and its route: the
    route's limit, or — when the route cannot be known yet — the largest of
    any route, so the early check never refuses what the route would accept.
    The match is handed on too (with its table), so that the guard need not
    match the same request again.
    """
    largest = max([r.settings.max_body_size for r in routes.routes] + [default])

    def limit(host: Optional[bytes], target: Optional[bytes]) -> Tuple[int, Optional[RouteConfig], Any]:
        if target is None:
            return largest, None, None
        try:
            match = routes.match(host, target)
        except BadRequestTarget:
            return largest, None, None
        if match is None:
            return largest, None, None
        return match.route.settings.max_body_size, match.route, (routes, host, target, match)

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
    from .assemble import OIDCGuard

    if metrics is None:
        metrics = Metrics()
    routes = RouteTable(config.routes)
    sockets = SocketRegistry(config.max_websockets, config.session.lifetime, metrics)
    proxy = UpstreamProxy(routes, reactor, config.trusted_proxies, client_factory,
                          metrics=metrics, sockets=sockets)
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
        limits=config.client_limits,
        http2=config.http2,
        http2_max_streams=config.http2_max_concurrent_streams,
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


class AdoptedListenerService(ListenerService):
    """
    Serve on a listening socket inherited from a parent process (file
    descriptor C{fd}) that was opened for the endpoint string C{description}.
    An C{ssl:} endpoint's TLS settings are read from the string, so a worker
    speaks TLS on the socket exactly as the parent's endpoint would have.
    """

    def __init__(self, reactor: Any, fd: int, description: str, factory: Any,
                 family: Optional[int] = None) -> None:
        super().__init__(reactor, description, factory)
        self.fd = fd
        self.family = family

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        import socket

        factory = self._factory
        try:
            family = self.family
            if family is None:
                with socket.socket(fileno=os.dup(self.fd)) as sock:
                    family = sock.family
            # Every process sharing the socket shares its O_NONBLOCK flag (one
            # open file description): it must stay non-blocking, or a reactor
            # blocks in accept() while another process took the connection.
            # (PyPy's socket() on an existing descriptor makes it blocking.)
            os.set_blocking(self.fd, False)
            if self.description.startswith("ssl:"):
                from twisted.protocols.tls import TLSMemoryBIOFactory

                factory = TLSMemoryBIOFactory(_tls_options(self.description), False, factory)
            port = self._reactor.adoptStreamPort(self.fd, family, factory)
        except (OSError, ValueError, TypeError) as e:
            raise ListenError(f"cannot serve on the socket of {self.description!r}: {e}") from None
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self._listened(port)


def _tls_options(description: str) -> Any:
    """
    The TLS context factory that the C{ssl:} endpoint string C{description}
    would listen with: the endpoint parser is run against a recorder standing
    in for the reactor, so every option Twisted's C{ssl:} strings have
    (certKey, privateKey, extraCertChain, dhParameters, ...) means here what
    it means there.
    """

    class Recorder:
        options: Any = None

        def listenSSL(self, port: int, factory: Any, contextFactory: Any, *args: Any,
                      **kwargs: Any) -> Any:
            Recorder.options = contextFactory
            return None

    serverFromString(Recorder(), description).listen(None)
    if Recorder.options is None:
        raise ValueError("not an ssl: endpoint")
    return Recorder.options


def write_port_file(path: str, ports: Sequence[IListeningPort]) -> None:
    """
    Write the bound address of each port to C{path}, one per line, at once
    (a temporary file renamed over it): a reader sees no file or all of it.
    """
    lines = "".join(_address(port) + "\n" for port in ports)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".oidcproxy-port-")
    with os.fdopen(fd, "w") as f:
        f.write(lines)
    os.replace(tmp, path)


def _address(port: IListeningPort) -> str:
    host: Any = port.getHost()
    if hasattr(host, "port"):
        h = host.host
        return f"[{h}]:{host.port}" if ":" in h else f"{h}:{host.port}"
    return str(getattr(host, "name", host))


def fatal(message: str) -> NoReturn:
    """
    End the start-up with one line on standard error naming the cause, and
    exit status 1. Under twistd, C{sys.stderr} is already redirected into
    the log; the line goes to the process's real standard error instead, so
    it is printed once, without a log prefix, where a shell or systemd shows it.
    """
    from twisted.logger import LoggingFile

    stream = sys.__stderr__ if isinstance(sys.stderr, LoggingFile) else sys.stderr
    if stream is None:  # pragma: no cover - no standard error at all
        stream = sys.stderr
    print(f"oidcproxy: {message}", file=stream)
    stream.flush()
    raise SystemExit(1)


FD_RESERVE = 256
"""Open files besides the connections: listeners, logs, Redis, the IdP, idle upstream connections."""


def descriptors_needed(config: Config) -> int:
    """
    The open files one process may need at its limits: a client connection
    and its upstream connection each, a WebSocket and its upstream
    connection each, and L{FD_RESERVE}.
    """
    return 2 * (config.client_limits.max_connections + config.max_websockets) + FD_RESERVE


def descriptor_warning(config: Config, limit: int) -> Optional[str]:
    """
    A warning when a process allowed C{limit} open files cannot hold what
    C{config} lets in (L{descriptors_needed}); None when it can.
    """
    needed = descriptors_needed(config)
    if limit == resource.RLIM_INFINITY or limit >= needed:
        return None
    return (f"max_client_connections = {config.client_limits.max_connections} and "
            f"max_websockets = {config.max_websockets} may need {needed} open files, but this "
            f"process may open only {limit} (RLIMIT_NOFILE; under systemd: LimitNOFILE=): "
            "raise the limit or lower max_client_connections")


def raise_descriptor_limit(config: Config) -> Optional[str]:
    """
    Raise this process's soft limit of open files towards what C{config}
    may need (no further than the hard limit): systemd starts services with
    a soft limit of 1,024 and a much higher hard one. The warning of
    L{descriptor_warning} when the limit stays too low.
    """
    needed = descriptors_needed(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        else:
            log.info("open files limit raised from {soft} to {target}", soft=soft, target=target)
    return descriptor_warning(config, target)


def startup_checks(config: Config) -> None:
    """
    Before anything listens, in a process the proxy owns (the reactor is
    not running yet): secrets that look easy to guess are logged as
    warnings; the open files limit is raised to fit the connection caps (a
    warning when it cannot be); a configured Redis must answer, or the start
    fails with one line naming the cause and exit status 1.
    """
    for weak in secret_warnings(config):
        log.warn("config: {warning}", warning=weak)
    warning = raise_descriptor_limit(config)
    if warning is not None:
        log.warn("{warning}", warning=warning)
    uses_redis = config.redis is not None and (config.session.store == "redis" or config.logs_in)
    if uses_redis:
        from .preflight import check_redis

        assert config.redis is not None
        problem = check_redis(config.redis)
        if problem is not None:
            fatal(problem)


class SignalHandler:
    """
    Call C{callback} in the reactor's thread on each of the signals
    C{signums}. Its owner installs it only in a process of its own, and it
    installs itself only in the main thread (not when embedded in a
    thread); L{uninstall} puts the previous handlers back.
    """

    def __init__(self, reactor: Any, callback: Callable[[], Any],
                 signums: Sequence[int] = (signal.SIGHUP,)) -> None:
        self._reactor = reactor
        self._callback = callback
        self._signums = tuple(signums)
        self._previous: List[Any] = []
        self.installed = False

    def install(self) -> None:
        if self.installed or threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, frame: Any) -> None:
            self._reactor.callFromThread(self._callback)

        self._previous = [signal.signal(signum, on_signal) for signum in self._signums]
        self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            for signum, previous in zip(self._signums, self._previous):
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            self.installed = False


class SighupHandler(SignalHandler):
    """Call C{callback} in the reactor's thread on SIGHUP (see L{SignalHandler})."""

    def __init__(self, reactor: Any, callback: Callable[[], Any]) -> None:
        super().__init__(reactor, callback, (signal.SIGHUP,))


RESTART_KEYS = (
    "listen", "public_url", "endpoints_prefix", "workers", "keepalive_timeout", "access_log",
    "http2", "http2_max_concurrent_streams", "oidc", "providers", "session", "state_cookie", "redis",
    "admin", "metrics",
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
    @param own_process: whether the service runs the process it is in (under
        twistd, or as a worker): then it makes the start-up checks before
        listening (L{startup_checks}; a worker's parent has made them) and
        handles SIGHUP (reload) and a second SIGTERM or SIGINT (end the
        drain). False, the default, for a service that is a part of a
        program: it leaves the process's limits and signals alone.
    """

    def __init__(self, config: Config, reactor: Any, listen: Sequence[str],
                 port_file: Optional[str] = None, config_path: Optional[str] = None,
                 client_factory: Optional[Callable[[RouteConfig], UpstreamClient]] = None,
                 adopted: Sequence[Tuple[int, str, str, int]] = (),
                 worker_id: Optional[int] = None,
                 own_process: bool = False,
                 ) -> None:
        super().__init__()
        self.own_process = own_process
        self.config = config
        self.config_path = config_path if config_path is not None else config.source
        self.metrics = Metrics()
        self.worker_id = worker_id
        self._reactor = reactor
        self._client_factory = client_factory
        self._sighup = SighupHandler(reactor, self.reload)
        self._stop_signals = SignalHandler(reactor, self._abort_drain,
                                           (signal.SIGTERM, signal.SIGINT))
        self.site = build_site(config, reactor, client_factory=client_factory,
                               metrics=self.metrics)
        self.site.guard.worker_id = worker_id  # type: ignore[attr-defined]
        self.listeners: List[ListenerService] = [
            ListenerService(reactor, desc, self.site) for desc in listen]
        admin_site = None
        if config.admin is not None:
            from twisted.web.server import Site

            from .admin import AdminResource

            store = self.site.guard.store  # type: ignore[attr-defined]
            admin_site = Site(AdminResource(store, config.admin.token.reveal()), reactor=reactor)
            if not adopted:
                self.listeners.append(ListenerService(reactor, config.admin.listen, admin_site))
        # A worker (L{oidcproxy.workers}) serves on its parent's sockets; the
        # parent serves the metrics of all its workers.
        for fd, description, kind, family in adopted:
            factory = admin_site if kind == "admin" else self.site
            self.listeners.append(AdoptedListenerService(reactor, fd, description, factory,
                                                         family))
        if config.metrics is not None and worker_id is None:
            from .core.metrics import metrics_site

            self.listeners.append(ListenerService(reactor, config.metrics.listen,
                                                  metrics_site(self.metrics, reactor)))
        for listener in self.listeners:
            listener.setServiceParent(self)
        self._port_file = port_file
        self._privileged_started = False

    def startService(self) -> None:
        if not self._privileged_started:
            # The twist runner only calls startService (twistd calls
            # privilegedStartService first): listen now, or nothing would.
            self.privilegedStartService()
        super().startService()
        # Discovery and JWKS load in the background: the proxy serves public
        # routes at once and answers 503 to logins until the IdP is reachable.
        self.site.guard.start()  # type: ignore[attr-defined]
        self._install_sighup()

    def _install_sighup(self) -> None:
        if self.own_process:
            self._sighup.install()

    def reload(self) -> bool:
        """
        Read the configuration file again and apply what can change without
        dropping a connection: the routes, the C{[upstream]} defaults, the
        identity headers, C{trusted_proxies} and C{[bearer]}. The other keys
        keep their running values, with one warning naming those that changed.
        An invalid file changes nothing: its problems are logged.

        systemd hears C{RELOADING=1} first and C{READY=1} when it is done, so
        C{systemctl reload} (with C{Type=notify-reload}) waits for it.

        @return: whether the new configuration was applied.
        """
        from .systemd import notify, reloading

        notify(reloading())
        try:
            return self._reload()
        finally:
            notify("READY=1")

    def _reload(self) -> bool:
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
            merged.check_route_providers()  # the running ones: a new provider needs a restart
            # A replacement template that cannot be used keeps the running pages.
            load_templates(merged.pages.templates_dir)
            routes = RouteTable(merged.routes)
            # The open WebSockets stay open, in the same registry.
            sockets = self.site.proxy.sockets  # type: ignore[attr-defined]
            sockets.limit = merged.max_websockets
            proxy = UpstreamProxy(routes, self._reactor, merged.trusted_proxies,
                                  self._client_factory, metrics=self.metrics, sockets=sockets)
        except (ValueError, TypeError, OSError) as e:
            log.error("config: cannot set up the proxy: {error} (in {path})", error=e, path=self.config_path)
            log.error("configuration not reloaded: the running one is kept")
            return False
        site = self.site
        old_proxy: UpstreamProxy = site.proxy  # type: ignore[attr-defined]
        site.guard.reconfigure(merged, routes, proxy)  # type: ignore[attr-defined]
        site.body_limit = body_limit_for(routes, merged.upstream.max_body_size)
        site.limits = merged.client_limits
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
        self._privileged_started = True
        if self.own_process and self.worker_id is None:
            startup_checks(self.config)
        try:
            super().privilegedStartService()
        except ListenError as e:
            # One clear line for the operator, not a traceback.
            fatal(str(e))
        all_settled([(ls.description, ls.listening) for ls in self.listeners], log,
                    "listening").addCallback(lambda _: self._listening())

    def _listening(self) -> None:
        """Every listener is up: write the port file, then tell systemd."""
        if self._port_file:
            self._write_port_file()
        from .systemd import notify

        addresses = ", ".join(_address(ls.port) for ls in self.listeners if ls.port)
        notify(f"READY=1\nSTATUS=listening on {addresses}")

    def _write_port_file(self) -> None:
        assert self._port_file is not None
        write_port_file(self._port_file, [ls.port for ls in self.listeners if ls.port])

    def _abort_drain(self) -> None:
        log.info("stop signal received again: ending the drain now")
        self.site.abort_drain()

    def stopService(self) -> Any:
        """
        Stop accepting, let the requests in flight finish (up to
        C{drain_timeout}), then close the upstream pools and the IdP and
        Redis clients.
        """
        from .systemd import notify

        notify("STOPPING=1")
        self._sighup.uninstall()
        # Twisted's own handler would only try to stop the stopping reactor
        # again (ReactorNotRunning): another SIGTERM or SIGINT cuts the drain
        # short instead.
        if self.own_process:
            self._stop_signals.install()
        d = maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.site.drain(self.config.drain_timeout))

        def close(_: object) -> Any:
            self._stop_signals.uninstall()
            self.site.guard.stop()  # type: ignore[attr-defined]
            proxy: UpstreamProxy = self.site.proxy  # type: ignore[attr-defined]
            guard: Any = self.site.guard  # type: ignore[attr-defined]
            return all_settled([("the upstream proxy", maybeDeferred(proxy.close)),
                                ("the guard", maybeDeferred(guard.close))], log, "closing")

        d.addCallback(close)
        return d
