"""
Log observers for twistd's C{--logger} option.

    twistd -n --logger=oidcproxy.logs.json oidcproxy --config FILE

writes every log event, the access log included, as one JSON object per line
on standard output (for the journal, or any log shipper), with its structured
fields (C{client}, C{method}, C{path}, C{status}, C{route}, C{user}, ...)
kept as JSON members.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import jsonFileLogObserver


def json() -> Any:
    """A log observer writing JSON lines to standard output."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
