"""
Waiting on several Deferreds at once with no error left unhandled: each
failure is logged (a L{DeferredList} without C{consumeErrors} leaves them
to the garbage collector's "Unhandled error in Deferred").
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

__all__ = ["all_settled"]


def all_settled(named: Sequence[Tuple[str, Deferred]], log: Logger, what: str) -> Deferred:
    """
    Fire (with None) once every Deferred of C{named} has fired, whatever
    its result. Each failure is logged on C{log} with its traceback, as
    C{"{what} failed: {name}"}.

    @param named: (name, Deferred) pairs; the name says which one failed.
    """
    def report(results: List[Tuple[bool, Any]]) -> None:
        for (name, _), (ok, result) in zip(named, results):
            if not ok:
                log.failure("{what} failed: {name}", result, what=what, name=name)

    return DeferredList([d for _, d in named], consumeErrors=True).addCallback(report)
