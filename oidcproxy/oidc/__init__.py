"""The IdP client: discovery and keys, token validation, login flow, refresh, bearer tokens."""
