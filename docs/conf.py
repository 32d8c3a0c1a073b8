"""Sphinx configuration of oidcproxy's documentation (built by tests/run.sh with -W)."""

import os
import sys

# The reference pages are generated from the package (oidcproxy.config's schema and the
# plugin's Options class) by the extension in _ext/.
sys.path.insert(0, os.path.abspath("_ext"))
sys.path.insert(0, os.path.abspath(".."))

project = "oidcproxy"
author = "the oidcproxy developers"
copyright = "2026, the oidcproxy developers"

extensions = [
    "oidcproxy_reference",
]

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "oidcproxy"
nitpicky = False
