"""Single flight: several callers waiting on one piece of work."""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def fire_waiters(waiters: Iterable[Deferred], result: Any) -> None:
    """
    Hand C{result} (a value or a L{Failure}) to every waiter that has not
    fired yet (a waiter its caller cancelled has).
    """
    for waiter in waiters:
        if waiter.called:
            continue
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)
