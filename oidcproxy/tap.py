"""
The twistd plugin's options and service: C{twistd -n oidcproxy --config F}.

Parsing options has no side effects; L{makeService} reads the configuration
and composes the service. C{--check} validates the configuration and exits.
"""

from __future__ import annotations

import sys
from typing import Any, List

from twisted.python import usage

from . import __version__


class Options(usage.Options):
    synopsis = "--config FILE [--listen ENDPOINT ...] [--check]"
    longdesc = (
        "Run the oidcproxy reverse proxy. Listeners are Twisted endpoint strings, "
        "e.g. tcp:8080:interface=127.0.0.1, ssl:443:privateKey=key.pem:certKey=cert.pem, "
        "systemd:domain=INET:index=0, unix:/run/oidcproxy.sock."
    )
    optParameters = [
        ["config", "c", None, "The TOML configuration file (required)."],
        ["port-file", None, None,
         "Write the bound address of each listener to this file once listening."],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print 'config OK' or every problem, "
                        "and exit 0 or 1 without listening."],
        ["version", None, "Print the version and exit."],
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
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


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
    try:
        return ProxyService(config, reactor, listen, port_file=options["port-file"])
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(options["config"], [f"cannot set up the proxy: {e}"]) from None


def check(options: Options, out: Any = None) -> int:
    """Validate the configuration: print the verdict, return the exit status."""
    from twisted.internet.testing import MemoryReactorClock

    from .config import ConfigError

    out = out or sys.stdout
    try:
        _build(options, MemoryReactorClock())
    except ConfigError as e:
        for line in e.lines():
            print(line, file=out)
        return 1
    print("config OK", file=out)
    return 0


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from .config import ConfigError

    if options["check"]:
        raise SystemExit(check(options))
    try:
        return _build(options, reactor)
    except ConfigError as e:
        for line in e.lines():
            print(line, file=sys.stderr)
        raise SystemExit(1) from None
