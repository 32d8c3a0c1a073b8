"""
The twistd plugin's options and service: C{twistd -n oidcproxy --config F}.

Parsing options has no side effects; L{makeService} reads the configuration
and composes the service. C{--check} validates the configuration and exits.
"""

from __future__ import annotations

import os
import sys
from typing import Any, List, Optional

from twisted.python import usage

from . import __version__


class Options(usage.Options):
    synopsis = "--config FILE [--listen ENDPOINT ...] [--check] | --demo [--listen ENDPOINT]"
    longdesc = (
        "Run the oidcproxy reverse proxy. Listeners are Twisted endpoint strings, "
        "e.g. tcp:8080:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem, "
        "systemd:domain=INET:index=0, unix:/run/oidcproxy.sock."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (required)."],
        ["port-file", None, None,
         "Write the bound address of each listener to this file once listening."],
        ["claims", None, None,
         "With --check: a JSON file of claims ({...}, or {\"id_token\": {...}, "
         "\"access_token\": {...}}); print which routes would allow them and why, "
         "and whether their sign-in meets each route's acr_values and max_auth_age now."],
        ["path", None, None,
         "With --check --claims: only the route of this path; exit status 2 when denied."],
        ["workers", "w", None,
         "Serve with this many processes (overrides the config's `workers`)."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print 'config OK' (and any "
                        "'warning:' lines) or every problem, and exit 0 or 1 without "
                        "listening."],
        ["version", None, "Print the version and exit."],
        ["demo", None, "Try it out: the proxy, a development identity provider (NOT for "
                       "production) and an echo application, on loopback only; no --config."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this endpoint string instead of the config's `listen` (repeatable)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_version(self) -> None:
        print(f"oidcproxy {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["workers"] is not None:
            from .config import MAX_WORKERS

            try:
                self["workers"] = int(self["workers"])
            except ValueError:
                raise usage.UsageError("--workers takes a number") from None
            if not 1 <= self["workers"] <= MAX_WORKERS:
                raise usage.UsageError(f"--workers must be from 1 to {MAX_WORKERS}")
        if self["demo"]:
            self._check_demo()
        elif not self["config"]:
            raise missing_config()
        if (self["claims"] or self["path"]) and not self["check"]:
            raise usage.UsageError("--claims and --path go with --check")
        if self["path"] and not self["claims"]:
            raise usage.UsageError("--path goes with --claims")

    def _check_demo(self) -> None:
        """--demo builds its own configuration: refuse what would contradict it."""
        given = [f"--{name}" for name in ("config", "check", "claims", "path", "workers")
                 if self.get(name)]
        if given:
            raise usage.UsageError(f"--demo runs without {', '.join(given)}: it builds its "
                                   "own configuration")
        if len(self["listen"]) > 1:
            raise usage.UsageError("--demo listens on one endpoint: give --listen once")


def missing_config() -> SystemExit:
    """
    The refusal to start without C{--config}: two plain lines on standard
    error and exit status 1 (twistd's for a usage error), not a
    L{usage.UsageError}, which twistd would print after the whole C{--help}
    text and behind its own command line (C{venv/bin/twistd --pidfile=:}).
    """
    runner = os.path.basename(sys.argv[0]) if sys.argv else ""
    runner = runner if runner in ("twist", "twistd") else "twistd"
    return SystemExit(
        "oidcproxy: --config FILE is required (the TOML configuration file; "
        "etc/oidcproxy.toml in the source is an example, and --demo runs without one)\n"
        f"see: {runner} oidcproxy --help"
    )


def _build_demo(options: Options, reactor: Any) -> Any:
    """
    The demo's service (L{oidcproxy.tools.demo}), or one line on stderr and exit
    status 1 when its endpoint is not on loopback or cannot be bound.
    """
    from .tools.demo import make_demo_service

    listen = options["listen"][0] if options["listen"] else None
    try:
        return make_demo_service(reactor, listen, port_file=options["port-file"],
                                 own_process=True)
    except (ValueError, OSError) as e:
        print(f"oidcproxy: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def _build(options: Options, reactor: Any) -> Any:
    """
    Load the configuration and compose the service (nothing listens or
    connects yet).

    @raise ConfigError: the file is invalid, or a part cannot be set up from
        it (an unreadable private key or CA bundle, say).
    """
    from .config import ConfigError, load_config
    from .service import ProxyService

    config = load_config(options["config"])
    listen: List[str] = options["listen"] or list(config.listen)
    if options["workers"] is not None:
        import attr

        config = attr.evolve(config, workers=options["workers"])
    if config.workers > 1:
        from .workers import WorkerPool

        return WorkerPool(config, reactor, listen, config_path=options["config"],
                          port_file=options["port-file"], own_process=True)
    try:
        return ProxyService(config, reactor, listen, port_file=options["port-file"],
                            config_path=options["config"], own_process=True)
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(options["config"], [f"cannot set up the proxy: {e}"]) from None


def check(options: Options, out: Any = None, err: Any = None, *, reactor: Any) -> int:
    """
    Validate the configuration: print the verdict on C{out} (standard
    output), then on C{err} (standard error) a C{warning:} line for each
    setting that works but is probably unwise (see L{oidcproxy.lint}) and
    for an open-files limit too low for the connection caps; warnings do
    not change the exit status, which is returned.

    @param reactor: the reactor the service would run on. The service is
        built on it, as a start would, so that what cannot be set up (an
        unreadable key or CA bundle) is reported; but nothing is started,
        and the check is over before the reactor runs.
    """
    import resource

    from .config import ConfigError
    from .lint import config_warnings
    from .service import descriptor_warning

    out = out or sys.stdout
    try:
        service = _build(options, reactor)
    except ConfigError as e:
        for line in e.lines():
            print(line, file=out)
        return 1
    print("config OK", file=out)
    err = err or sys.stderr
    warnings = config_warnings(service.config)
    # The proxy raises its soft open-files limit up to the hard one when it starts.
    files = descriptor_warning(service.config, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    for warning in [*warnings, *([files] if files is not None else [])]:
        print(f"warning: {warning}", file=err)
    if options["claims"]:
        return _check_claims(service.config, options["claims"], options["path"], out,
                             reactor.seconds())
    return 0


def _check_claims(config: Any, claims_file: str, path: Optional[str], out: Any,
                  now: float) -> int:
    """
    Print, per route (or for the route of C{path}), whether these claims
    would be let through at C{now}, with the trace of the rule, and for a
    route with C{acr_values} or C{max_auth_age} whether their sign-in meets
    them. Status 2 when C{path} is given and its route's rule would deny
    them (a sign-in that does not meet the route is stepped up, not denied).
    """
    import json

    from .proxy.routes import BadRequestTarget, RouteTable
    from .sessions.history import acr_claim_of
    from .sessions.session import DEFAULT_PROVIDER

    try:
        with open(claims_file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        print(f"claims: cannot read {claims_file}: {e}", file=out)
        return 1
    if not isinstance(data, dict):
        print(f"claims: {claims_file} must hold a JSON object", file=out)
        return 1
    if set(data) <= {"id_token", "access_token"} and isinstance(data.get("id_token"), dict):
        id_claims, access_claims = data["id_token"], data.get("access_token")
    else:
        id_claims, access_claims = data, None
    routes = list(config.routes)
    if path is not None:
        try:
            match = RouteTable(routes).match(None, path.encode("utf-8"))
        except (BadRequestTarget, UnicodeEncodeError) as e:
            print(f"{path}: not a valid path: {e}", file=out)
            return 1
        if match is None:
            print(f"{path}: no route matches", file=out)
            return 1
        routes = [match.route]
    denied = False
    for route in routes:
        where = f"{route.name} ({route.host or '*'}{route.path}, auth = {route.auth})"
        if route.auth == "none":
            print(f"{where}: public, no claims needed", file=out)
        elif route.policy is None:
            print(f"{where}: allowed (any authenticated user)", file=out)
        else:
            decision = route.policy.evaluate(id_claims, access_claims, now=now)
            verdict = "allowed" if decision.allowed else (
                "denied (audit mode: logged, let through)" if route.policy_mode == "audit"
                else "denied")
            denied = denied or not decision.allowed
            print(f"{where}: {verdict}: {decision.reason}", file=out)
            for line in route.policy.explain(id_claims, access_claims, now=now):
                print("    " + line, file=out)
        if route.requirement is not None:
            acr_claim = acr_claim_of(config, route.provider or DEFAULT_PROVIDER)
            print("    step-up: " + step_up_decision(route, id_claims, now, acr_claim),
                  file=out)
    return 2 if path is not None and denied else 0


def step_up_decision(route: Any, claims: Any, now: float, acr_claim: str = "acr") -> str:
    """
    Whether the sign-in of C{claims} meets the route's C{requirement} at
    C{now}, in words: the sign-in that meets it, or why not and what a
    request gets then (a browser signs in again, an API client the RFC 9470
    challenge). C{acr_claim}: the route's provider's (C{"acrs"}: every value
    of the C{acrs} claim counts, as the guard reads it).
    """
    from .core.assurance import INSUFFICIENT, meeting, unmet
    from .sessions.history import claims_sign_ins

    requirement = route.requirement
    sign_ins = claims_sign_ins(claims, acr_claim)
    met = meeting(requirement, sign_ins, now)
    if met is not None:
        acr, auth_time = met
        by = f"acr {acr!r}" if acr else "a sign-in without acr"
        when = "at an unknown time" if auth_time is None else \
            f"signed in {max(0.0, now - auth_time):.0f}s ago"
        return f"met by {by} {when}"
    asks = []
    if requirement.acr_values:
        asks.append("acr_values=" + " ".join(requirement.acr_values))
    if requirement.max_age is not None:
        asks.append(f"max_age={int(requirement.max_age)}")
    then = [f"an API client gets 401 {INSUFFICIENT}"]
    if route.auth != "bearer":
        then.insert(0, f"a browser signs in again with {' '.join(asks)}")
    return f"{unmet(requirement, sign_ins, now)}: {'; '.join(then)}"


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from .config import ConfigError

    if options["demo"]:
        return _build_demo(options, reactor)
    if options["check"]:
        raise SystemExit(check(options, reactor=reactor))
    try:
        return _build(options, reactor)
    except ConfigError as e:
        for line in e.lines():
            print(line, file=sys.stderr)
        raise SystemExit(1) from None
