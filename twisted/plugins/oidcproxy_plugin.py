"""
The twistd plugin: C{twistd -n oidcproxy --config /etc/oidcproxy/oidcproxy.toml}.

This file is imported by every twistd invocation that scans plugins, so it
names the service and nothing else: the real work lives in L{oidcproxy.tap}.
"""

from twisted.application.service import ServiceMaker

oidcproxy = ServiceMaker(
    "oidcproxy",
    "oidcproxy.tap",
    "OpenID Connect authenticating reverse proxy",
    "oidcproxy",
)
