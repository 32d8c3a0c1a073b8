"""
oidcproxy: an OpenID Connect authenticating reverse proxy built on Twisted.

Nothing heavy is imported here: the twistd plugin and C{--check} load fast,
and importing the package installs no reactor.
"""

__version__ = "0.1.0.dev0"


def identity(request):
    """
    The L{oidcproxy.web.guard.Identity} (sub, claims, access token, ...) that an
    C{OIDCGuard} established for C{request}, or None (public route, or a
    request the guard did not see). For applications embedded behind the guard.
    """
    return getattr(request, "oidcproxy_identity", None)
