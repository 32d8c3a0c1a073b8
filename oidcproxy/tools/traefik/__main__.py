"""C{python -m oidcproxy.tools.traefik}: the same as C{oidcproxy-import-traefik}."""

from .cli import main

raise SystemExit(main())
