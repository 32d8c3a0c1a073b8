"""The proxy engine: routes, the streaming upstream, the WebSocket splice."""
