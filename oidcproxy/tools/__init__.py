"""Tools off the request path: the development IdP of --demo, the Traefik importer."""
