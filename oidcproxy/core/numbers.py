"""Numbers as JSON (a token's claims, a stored session) gives them."""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["finite_number"]


def finite_number(value: Any) -> Optional[float]:
    """
    C{value} as a finite float if it is a JSON number (an int or a float,
    not a bool); None for anything else, an integer too large for a float,
    infinity and NaN.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
