"""
Session stores (L{oidcproxy.sessions.session.ISessionStore}):

- L{oidcproxy.sessions.stores.memory.MemoryStore}: sessions in this process's memory,
  for tests and embedding;
- L{oidcproxy.sessions.stores.cookie.CookieStore}: the whole session, encrypted, in the
  browser's cookie.
"""
