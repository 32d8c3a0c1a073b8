"""
Composition: the parts of a guard built once from a L{Config} (the IdP
client, the session store and revocation list, the refresher, the login
flow, the token validators, another issuer's keys) and handed to it.

L{OIDCGuard} here is the guard as an embedder makes it: from a config, a
resource and the reactor, with any part given instead of built.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Optional

from twisted.web.resource import IResource

from .config import Config, OIDCConfig
from .core.metrics import Metrics, NullMetrics
from .oidc.login import LoginFlow
from .oidc.provider import ClientAuth, Provider, make_http_client
from .oidc.refresh import Refresher
from .proxy.routes import RouteTable
from .sessions.crypto import Sealer
from .sessions.session import DEFAULT_PROVIDER, ISessionStore
from .sessions.stores.cookie import CookieStore
from .web import guard
from .web.bearer_auth import external_key_source
from .web.cookies import state_cookie_spec
from .web.idtokens import IdTokens
from .web.parts import GuardParts, ProviderParts

__all__ = ["OIDCGuard", "build_parts", "build_provider", "build_redis_store", "build_store"]


def build_provider(config: Config, reactor: Any, metrics: NullMetrics,
                   http: Any = None, oidc: Optional[OIDCConfig] = None) -> Provider:
    """
    The IdP client of C{oidc} (default: C{[oidc]}).

    @param http: its treq C{HTTPClient} (default: L{make_http_client} with
        the table's TLS settings).
    """
    oidc = oidc if oidc is not None else config.oidc
    assert oidc is not None
    return Provider(
        oidc.issuer,
        ClientAuth(
            client_id=oidc.client_id,
            method=oidc.token_endpoint_auth_method,
            client_secret=oidc.client_secret.reveal() if oidc.client_secret else None,
            private_key_pem=(oidc.private_key.reveal().encode("utf-8")
                             if oidc.private_key else None),
            private_key_id=oidc.private_key_id,
            private_key_alg=oidc.private_key_alg,
        ),
        http if http is not None else make_http_client(
            reactor, oidc.ca_bundle, oidc.timeout, client_cert=oidc.client_cert,
            client_key=oidc.client_key, insecure_skip_verify=oidc.insecure_skip_verify),
        reactor,
        discovery=oidc.discovery,
        endpoints=dict(oidc.endpoints),
        discovery_params=dict(oidc.discovery_params),
        timeout=oidc.timeout,
        max_response_size=oidc.max_response_size,
        jwks_ttl=oidc.jwks_cache_ttl,
        jwks_min_refresh=oidc.jwks_min_refresh_interval,
        metrics=metrics,
        max_retries=oidc.max_retries,
        max_concurrent_requests=oidc.max_concurrent_requests,
        max_queued_requests=oidc.max_queued_requests,
    )


def build_store(config: Config, sealer: Sealer, reactor: Any,
                metrics: Optional[NullMetrics] = None) -> ISessionStore:
    """The configured session store."""
    s = config.session
    if s.store == "redis" and config.redis is not None:
        return build_redis_store(config, sealer, reactor, metrics)
    return CookieStore(sealer, reactor, store_tokens=s.store_tokens)


def build_redis_store(config: Config, sealer: Sealer, reactor: Any,
                      metrics: Optional[NullMetrics] = None) -> Any:
    """A Redis store from C{[redis]}, on C{reactor}."""
    # txredisapi installs the global reactor when imported: only here.
    from .sessions.stores.redis import RedisStore, build_redis

    r = config.redis
    assert r is not None
    pool = build_redis(
        reactor, r.url,
        password=r.password.reveal() if r.password else None,
        username=r.username,
        pool_size=r.pool_size,
        connect_timeout=r.connect_timeout,
        command_timeout=r.command_timeout,
        ca_bundle=r.ca_bundle,
        sentinel=r.sentinel or None,
        master_name=r.master_name,
    )
    return RedisStore(pool, sealer, reactor, key_prefix=r.key_prefix,
                      command_timeout=r.command_timeout, metrics=metrics)


def build_parts(
    config: Config,
    reactor: Any,
    *,
    provider: Optional[Provider] = None,
    store: Optional[ISessionStore] = None,
    revocations: Any = None,
    metrics: Optional[NullMetrics] = None,
    idp_http: Any = None,
    bearer_keys_http: Any = None,
    providers_http: Optional[Mapping[str, Any]] = None,
) -> GuardParts:
    """
    The parts of a guard for C{config}, on C{reactor}; each part given is
    taken instead of built.

    @param store: the session store (default: the encrypted cookie store, or
        Redis with C{session.store = "redis"}); one given is not closed by
        the guard.
    @param revocations: for a store that cannot delete sessions (the cookie
        store), a revocation list (default: in Redis when C{[redis]} is
        configured).
    @param metrics: where everything counts (default: a L{Metrics} of its own).
    @param idp_http: the treq C{HTTPClient} of the provider built here.
    @param bearer_keys_http: the treq C{HTTPClient} that fetches another
        issuer's keys (C{bearer.issuer}).
    @param providers_http: the treq C{HTTPClient} of each named provider
        built here, by name.
    """
    metrics = metrics if metrics is not None else Metrics()
    parts = GuardParts(metrics=metrics, store=store, owns_stores=store is None)
    oidc = config.oidc
    if oidc is None and not config.providers:
        return parts
    s = config.session
    sealer = Sealer([x.reveal().encode("utf-8") for x in s.secrets])
    if parts.store is None:
        parts.store = build_store(config, sealer, reactor, metrics)
        if revocations is None and s.store == "cookie" and config.redis is not None:
            revocations = build_redis_store(config, sealer, reactor, metrics)
    parts.revocations = revocations
    if oidc is not None:
        if provider is None:
            provider = build_provider(config, reactor, metrics, idp_http)
        default = build_provider_parts(config, DEFAULT_PROVIDER, oidc, provider, parts.store,
                                       sealer, reactor, metrics)
        parts.provider, parts.id_tokens = default.provider, default.id_tokens
        parts.refresher, parts.login = default.refresher, default.login
    for name, table in config.providers:
        http = (providers_http or {}).get(name)
        parts.named[name] = build_provider_parts(
            config, name, table, build_provider(config, reactor, metrics, http, table),
            parts.store, sealer, reactor, metrics)
    parts.provider_names = frozenset(([DEFAULT_PROVIDER] if oidc is not None else []) +
                                     list(parts.named))
    parts.external_keys_for = partial(external_key_source, clock=reactor, http=bearer_keys_http)
    parts.external_keys = parts.external_keys_for(config)
    return parts


def build_provider_parts(config: Config, name: str, oidc: OIDCConfig, provider: Provider,
                         store: Any, sealer: Sealer, reactor: Any,
                         metrics: NullMetrics) -> ProviderParts:
    """The parts the provider C{name} (its table C{oidc}, its client C{provider}) logs in with."""
    s = config.session
    id_tokens = IdTokens(oidc, provider, reactor, metrics, config)
    refresher = Refresher(
        provider, id_tokens.validate_refreshed, store, reactor,
        mode=s.refresh, leeway=s.refresh_leeway, interval=s.refresh_interval,
        lease=2 * oidc.timeout + 5.0, metrics=metrics,
    )
    public = config.public_url
    redirect_uri = public + (oidc.callback_path or config.callback_path) if public else ""
    state = config.state_cookie
    login = LoginFlow(
        sealer=sealer,
        cookie=state_cookie_spec(config),
        max_age=state.max_age,
        max_attempts=state.max_count,
        client_id=oidc.client_id,
        redirect_uri=redirect_uri,
        scopes=oidc.scopes,
        pkce=oidc.pkce,
        auth_params=dict(oidc.auth_params),
        clock=reactor,
        provider=name,
        acr_claim=oidc.acr_claim,
    )
    return ProviderParts(name, oidc, redirect_uri, provider, login, id_tokens, refresher)


class OIDCGuard(guard.OIDCGuard):
    """
    The guard of L{oidcproxy.web.guard.OIDCGuard}, with its parts built from
    C{config} (see L{build_parts}: any part given is used instead).

    @param config: the validated configuration.
    @param wrapped: any C{IResource}: the upstream proxy, or an application.
    @param reactor: for time, timers and the connections to the IdP and Redis.
    @param routes: the route table (default: made from C{config}).
    @param max_cookie_bytes: the largest session cookie (all chunks) handed out.
    """

    def __init__(
        self,
        config: Config,
        wrapped: IResource,
        reactor: Any,
        *,
        provider: Optional[Provider] = None,
        store: Optional[ISessionStore] = None,
        routes: Optional[RouteTable] = None,
        max_cookie_bytes: int = 12 * 1024,
        revocations: Any = None,
        metrics: Optional[NullMetrics] = None,
        idp_http: Any = None,
        bearer_keys_http: Any = None,
        providers_http: Optional[Mapping[str, Any]] = None,
    ) -> None:
        parts = build_parts(config, reactor, provider=provider, store=store,
                            revocations=revocations, metrics=metrics, idp_http=idp_http,
                            bearer_keys_http=bearer_keys_http, providers_http=providers_http)
        super().__init__(config, wrapped, reactor, parts=parts, routes=routes,
                         max_cookie_bytes=max_cookie_bytes)
