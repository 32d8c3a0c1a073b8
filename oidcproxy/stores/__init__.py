"""
Session stores (L{oidcproxy.session.ISessionStore}):

- L{oidcproxy.stores.memory.MemoryStore}: sessions in this process's memory,
  for tests and embedding;
- L{oidcproxy.stores.cookie.CookieStore}: the whole session, encrypted, in the
  browser's cookie.
"""
