"""
systemd readiness notification (C{sd_notify}) without libsystemd.

Under C{Type=notify} systemd passes the path of a datagram socket in
C{$NOTIFY_SOCKET}; the service sends newline-separated C{KEY=VALUE}
assignments there: C{READY=1} once it serves, C{STOPPING=1} when it begins
to shut down, C{STATUS=...} as a free-form line for C{systemctl status}.
A name starting with C{@} is a socket in the abstract namespace (Linux).

Socket activation needs nothing here: Twisted's C{systemd:} endpoint
(C{systemd:domain=INET:index=0}) adopts the sockets systemd passes.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping, Optional

from twisted.logger import Logger

log = Logger()

SEND_TIMEOUT = 2.0
"""
Seconds a send may block when the receiver's queue is full. systemd reads
its notification socket at once; this only bounds a stuck receiver.
"""


def notify(message: str, environ: Optional[Mapping[str, str]] = None) -> bool:
    """
    Send C{message} (e.g. C{"READY=1\\nSTATUS=listening on ..."}) to the
    socket named by C{$NOTIFY_SOCKET}, like C{sd_notify(0, message)}.

    Never raises: without C{$NOTIFY_SOCKET} nothing is sent; a socket that
    cannot be reached is logged (one line) and reported by the result.

    @param environ: where to look for C{NOTIFY_SOCKET}; by default
        C{os.environ} as it is at the time of the call.

    @return: whether the message was sent.
    """
    if environ is None:
        environ = os.environ
    name = environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    try:
        address = _address(name)
        data = message.encode("utf-8")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.connect(address)
            sock.send(data)
    except (OSError, ValueError) as e:
        log.warn("systemd notification {notification!r} to {socket!r} failed: {error}",
                 notification=message.split("\n", 1)[0][:80], socket=name, error=e)
        return False
    return True


def reloading() -> str:
    """
    The notification that a reload begins: C{RELOADING=1} with the time of
    C{CLOCK_MONOTONIC} in microseconds, as C{Type=notify-reload} requires.
    """
    return f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def _address(name: str) -> bytes:
    """
    The C{AF_UNIX} address of C{$NOTIFY_SOCKET}: an absolute path, or
    C{@name} for the abstract namespace (a leading NUL byte).

    @raise ValueError: any other form (systemd's C{vsock:} is not supported).
    """
    if name.startswith("@"):
        return b"\0" + os.fsencode(name[1:])
    if name.startswith("/"):
        return os.fsencode(name)
    raise ValueError("not an absolute path or an abstract socket name ('@...')")
