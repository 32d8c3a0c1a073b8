"""The guard: dispatch, endpoints, identity headers, CSRF, the HTTP server side."""
