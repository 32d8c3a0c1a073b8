"""
The connection pool a L{RedisStore} talks through: its URL, its settings,
and its connections (TLS or not, straight to a server or to the master
that Redis Sentinel names).

The pool is txredisapi's, changed as L{oidcproxy.sessions.stores.redis._txredis}
says; txredisapi installs the global reactor when it is imported, so only
L{build_redis} imports it, when it is called. The reactor it is given
carries every connection and every timer of the pool.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

import attr
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from ....core.tls import trust_root
from .store import positive_seconds

__all__ = ["RedisURL", "build_redis", "parse_redis_url"]


@attr.s(frozen=True, auto_attribs=True)
class RedisURL:
    """What a C{redis://} or C{rediss://} URL says. The password is left out of C{repr}."""

    tls: bool
    host: str
    port: int
    username: Optional[str] = None
    password: Optional[str] = attr.ib(default=None, repr=False)
    db: Optional[int] = None


def parse_redis_url(url: str) -> RedisURL:
    """
    Read C{redis://[user:password@]host[:port][/db]} (C{rediss://} for TLS);
    the port defaults to 6379, user and password are percent-decoded.

    @raise ValueError: another scheme, no host, a bad port, a path that is not
        a database number, a query or a fragment.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"{url!r}: a Redis URL starts with redis:// or rediss://")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r}: no host")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number from 1 to 65535") from None
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"{url!r}: the path names a database by number (/0, /1, ...)")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: query and fragment are not understood")
    return RedisURL(scheme == "rediss", host, port, username, password, int(path) if path else None)


@attr.s(frozen=True, auto_attribs=True)
class _PoolSettings:
    """The checked settings of one pool."""

    url: RedisURL
    password: Optional[str] = attr.ib(repr=False)
    username: Optional[str]
    db: Optional[int]
    pool_size: int
    connect_timeout: float
    command_timeout: float
    ca_bundle: Optional[str]
    sentinels: Optional[List[Tuple[str, int]]]
    master_name: Optional[str]

    def connection(self) -> Any:
        """The txredisapi factory arguments of a connection to the server (or master)."""
        return dict(
            dbid=self.db, poolsize=self.pool_size, isLazy=True, charset="utf-8",
            password=self.password, username=self.username, replyTimeout=None,
            convertNumbers=False,
        )


def _checked(
    url: str,
    password: Optional[str],
    username: Optional[str],
    db: Optional[int],
    pool_size: int,
    connect_timeout: float,
    command_timeout: float,
    ca_bundle: Optional[str],
    sentinel: Optional[Sequence[Tuple[str, int]]],
    master_name: Optional[str],
) -> _PoolSettings:
    """The settings of L{build_redis}, the URL's filled in. @raise ValueError: a bad one."""
    parsed = parse_redis_url(url)
    password = password if password is not None else parsed.password
    username = username if username is not None else parsed.username
    db = db if db is not None else parsed.db
    if isinstance(db, bool) or not isinstance(db, (int, type(None))) or (db is not None and db < 0):
        raise ValueError(f"db must be a database number, not {db!r}")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be at least 1, not {pool_size!r}")
    connect_timeout = positive_seconds("connect_timeout", connect_timeout)
    command_timeout = positive_seconds("command_timeout", command_timeout)
    if ca_bundle is not None and not parsed.tls:
        raise ValueError("ca_bundle is for rediss:// URLs; this one is not TLS")
    sentinels = None
    if sentinel is not None:
        sentinels = [(str(h), int(p)) for h, p in sentinel]
        if not sentinels or not master_name:
            raise ValueError("sentinel needs at least one (host, port) and a master_name")
    elif master_name is not None:
        raise ValueError("master_name is only used with sentinel")
    return _PoolSettings(parsed, password, username, db, pool_size, connect_timeout,
                         command_timeout, ca_bundle, sentinels, master_name)


def _endpoints(reactor: Any, settings: _PoolSettings) -> Callable[[str, int], IStreamClientEndpoint]:
    """
    How to reach a server: over TCP within C{connect_timeout}, and with
    rediss:// over TLS, verified under the host name it is reached by.
    """
    trusted = trust_root(settings.ca_bundle) if settings.ca_bundle is not None else None

    def endpoint(host: str, port: int) -> IStreamClientEndpoint:
        plain = HostnameEndpoint(reactor, host, port, timeout=settings.connect_timeout)
        if not settings.url.tls:
            return plain
        return wrapClientTLS(optionsForClientTLS(host, trustRoot=trusted), plain)

    return endpoint


def build_redis(
    reactor: Any,
    url: str,
    *,
    password: Optional[str] = None,
    username: Optional[str] = None,
    db: Optional[int] = None,
    pool_size: int = 10,
    connect_timeout: float = 2.0,
    command_timeout: float = 2.0,
    ca_bundle: Optional[str] = None,
    sentinel: Optional[Sequence[Tuple[str, int]]] = None,
    master_name: Optional[str] = None,
) -> Any:
    """
    A lazy txredisapi connection pool for L{RedisStore}: it is returned at
    once and connects (and reconnects, with backoff, forever) in the
    background, so the proxy starts while Redis is down.

    @param reactor: connects, resolves names, and runs every timer of the
        pool (connect and reply deadlines, reconnection backoff, Sentinel
        discovery).
    @param url: C{redis://[user:password@]host[:port][/db]}; C{rediss://} for
        TLS, which verifies the server's certificate and its name (the URL's
        host) against C{ca_bundle}, or the platform's trust store. With
        C{sentinel}, only the scheme, credentials and database are used.
    @param password: overrides the URL's; C{username} selects an ACL user.
    @param db: the database number; overrides the URL's.
    @param connect_timeout: seconds a TCP connection attempt may take.
    @param command_timeout: seconds a reply may take; a connection with a
        reply overdue (a hung server, a dead network path) is aborted and
        replaced.
    @param ca_bundle: PEM file of the CAs trusted for rediss://.
    @param sentinel: C{(host, port)} of Redis Sentinels; the pool then
        connects to the master they name C{master_name} (checking its ROLE),
        and follows failovers. The Sentinels are asked without a password;
        with rediss:// they are reached over TLS too, each verified under its
        own host, and the master under the address Sentinel announces (its
        certificate must name it).
    @return: the pool (a txredisapi connection handler); C{disconnect()}
        closes it.
    @raise ValueError: a bad URL or setting.
    """
    settings = _checked(url, password, username, db, pool_size, connect_timeout, command_timeout,
                        ca_bundle, sentinel, master_name)
    endpoint = _endpoints(reactor, settings)
    if settings.sentinels is None:
        return _direct_pool(reactor, settings, endpoint)
    return _sentinel_pool(reactor, settings, endpoint)


def _direct_pool(reactor: Any, settings: _PoolSettings,
                 endpoint: Callable[[str, int], IStreamClientEndpoint]) -> Any:
    """A pool of connections to the server of the URL."""
    from . import _txredis

    host, port = settings.url.host, settings.url.port
    factory = _txredis.Factory(f"{host}:{port}", handler=_txredis.Handler, **settings.connection())
    _txredis.prepare(factory, reactor, settings.command_timeout)
    factory.startConnecting(endpoint(host, port))
    return factory.handler


def _sentinel_pool(reactor: Any, settings: _PoolSettings,
                   endpoint: Callable[[str, int], IStreamClientEndpoint]) -> Any:
    """
    A pool of connections to the master the Sentinels name, asked afresh
    before every connection attempt; if none answers in time, the attempt
    fails and is retried with backoff.
    """
    import txredisapi

    from . import _txredis

    assert settings.sentinels is not None
    manager = txredisapi.Sentinel([])
    manager.discovery_timeout = settings.connect_timeout + settings.command_timeout
    for s_host, s_port in settings.sentinels:
        s_factory = _txredis.Factory(f"{s_host}:{s_port}", handler=_txredis.Handler, dbid=None,
                                     poolsize=1, isLazy=True, charset="utf-8",
                                     convertNumbers=False)
        _txredis.prepare(s_factory, reactor, settings.command_timeout)
        s_factory.startConnecting(endpoint(s_host, s_port))
        manager.sentinels.append(s_factory.handler)
    factory = _txredis.SentinelFactory(
        sentinel_manager=manager, service_name=settings.master_name, is_master=True, uuid=None,
        handler=_txredis.Handler, **settings.connection(),
    )
    _txredis.prepare(factory, reactor, settings.command_timeout, manager.disconnect)
    factory.startConnecting(_txredis.SentinelEndpoint(factory, endpoint, reactor))
    return factory.handler
