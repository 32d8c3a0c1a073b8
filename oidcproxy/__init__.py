"""
oidcproxy: an OpenID Connect authenticating reverse proxy built on Twisted.

Nothing heavy is imported here: the twistd plugin and C{--check} load fast,
and importing the package installs no reactor.
"""

__version__ = "0.1.0.dev0"
