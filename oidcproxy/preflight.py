"""
Checks made once at start-up, before the reactor runs: each returns None or
one line naming what is wrong, for the operator.

They block (with the configured timeouts): they run before the proxy serves
anything, when there is nothing to keep responsive, so that a proxy that
cannot work exits with a clear reason instead of answering 503 forever.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, List, Optional, Sequence, Tuple, Union

from .config import RedisConfig
from .sessions.stores.redis import parse_redis_url

Reply = Union[str, bytes, int, None, List[Any], "RedisReplyError"]


class RedisReplyError(Exception):
    """Redis answered with an error (C{-ERR ...})."""


class _Connection:
    """A minimal blocking RESP client: enough for AUTH, PING and SENTINEL."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._file = sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def command(self, *args: str) -> Reply:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg.encode("utf-8")
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(parts))
        reply = self._reply()
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def _line(self) -> bytes:
        line = self._file.readline(65536)
        if not line.endswith(b"\r\n"):
            raise OSError("the connection closed or the answer is not Redis's protocol")
        return line[:-2]

    def _reply(self) -> Reply:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise OSError("the answer is not Redis's protocol")


def _connect(host: str, port: int, tls: bool, ca_bundle: Optional[str],
             connect_timeout: float, command_timeout: float) -> _Connection:
    sock = socket.create_connection((host, port), timeout=connect_timeout)
    try:
        if tls:
            context = ssl.create_default_context(cafile=ca_bundle)
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.settimeout(command_timeout)
    except BaseException:
        sock.close()
        raise
    return _Connection(sock)


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_redis(redis: RedisConfig) -> Optional[str]:
    """
    Connect to the configured Redis (through Sentinel when configured),
    authenticate and send a C{PING}.

    @return: None when Redis answered C{PONG}; otherwise the reason, naming
        the address.
    """
    url = parse_redis_url(redis.url)
    tls, host, port = url.tls, url.host, url.port
    username = redis.username if redis.username is not None else url.username
    password = redis.password.reveal() if redis.password is not None else url.password
    timeouts = (redis.connect_timeout, redis.command_timeout)
    if redis.sentinel:
        found = _master_from_sentinels(redis.sentinel, redis.master_name or "", tls,
                                       redis.ca_bundle, *timeouts)
        if isinstance(found, str):
            return found
        host, port = found
    where = _where(host, port)
    try:
        conn = _connect(host, port, tls, redis.ca_bundle, *timeouts)
    except ssl.SSLCertVerificationError as e:
        return f"cannot reach Redis at {where}: its TLS certificate is not trusted ({e.verify_message})"
    except socket.timeout:
        return f"cannot reach Redis at {where}: no connection within {redis.connect_timeout:g} s"
    except OSError as e:
        return f"cannot reach Redis at {where}: {e.strerror or e}"
    try:
        if password is not None:
            auth = ("AUTH", username, password) if username else ("AUTH", password)
            try:
                conn.command(*auth)
            except RedisReplyError as e:
                return f"Redis at {where} refused the credentials: {_first_word(e)}"
        try:
            reply = conn.command("PING")
        except RedisReplyError as e:
            return f"Redis at {where} refused PING: {_first_word(e)}" + (
                " (it needs a password: set redis.password)" if "NOAUTH" in str(e) else "")
        if reply != "PONG":
            return f"Redis at {where} answered PING with {reply!r}"
    except socket.timeout:
        return f"Redis at {where} did not answer within {redis.command_timeout:g} s"
    except (OSError, ValueError) as e:
        return f"Redis at {where} broke the connection: {e}"
    finally:
        conn.close()
    return None


def _first_word(error: Exception) -> str:
    """The error code and message of a Redis error, without any echo of the input."""
    return str(error).split("\n", 1)[0][:200]


def _master_from_sentinels(sentinels: Sequence[Tuple[str, int]], name: str, tls: bool,
                           ca_bundle: Optional[str], connect_timeout: float,
                           command_timeout: float) -> Union[str, Tuple[str, int]]:
    """The master's address from the first Sentinel that knows it, or the reason none did."""
    reasons = []
    for s_host, s_port in sentinels:
        where = _where(s_host, s_port)
        try:
            conn = _connect(s_host, s_port, tls, ca_bundle, connect_timeout, command_timeout)
        except OSError as e:
            reasons.append(f"{where}: {getattr(e, 'strerror', None) or e}")
            continue
        try:
            reply = conn.command("SENTINEL", "get-master-addr-by-name", name)
        except (OSError, ValueError, RedisReplyError) as e:
            reasons.append(f"{where}: {e}")
            continue
        finally:
            conn.close()
        if isinstance(reply, list) and len(reply) == 2:
            try:
                return reply[0].decode("utf-8"), int(reply[1])
            except (AttributeError, ValueError, UnicodeDecodeError):
                pass
        reasons.append(f"{where}: does not know a master named {name!r}")
    return "no Redis Sentinel named the master: " + "; ".join(reasons)
