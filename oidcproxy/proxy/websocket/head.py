"""
The bits of HTTP/1.1 the WebSocket upgrade path speaks itself, since it
cannot use the Agent: the request head sent upstream, the upstream's answer
head (parsed strictly, a proxy must not guess), and the framing of an
answer body other than a 101 (chunked, sized, or to the end of the
connection).
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

from twisted.web.http_headers import Headers

__all__ = ["MAX_HEAD", "ChunkedBody", "SizedBody", "parse_response_head", "request_head"]

MAX_HEAD = 64 * 1024
"""The largest answer head read from an upstream (502 above)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def parse_response_head(head: bytes) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
    """
    The status, reason and headers of an answer head (without its final
    empty line).

    @raise ValueError: a malformed status line or header line (obsolete line
        folding included: a proxy must not guess what it meant).
    """
    lines = head.split(b"\r\n")
    status = _STATUS_LINE.fullmatch(lines[0])
    if status is None:
        raise ValueError("malformed status line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise ValueError("malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):
            raise ValueError("control character in a header value")
        headers.append((name, value))
    return int(status.group(1)), status.group(2) or b"", headers


def request_head(method: bytes, target: bytes, host: bytes, headers: Headers,
                 upgrade: bytes) -> bytes:
    """The upgrade request as sent upstream: C{headers} plus the upgrade itself."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend(b"Host: " + v for v in headers.getRawHeaders(b"host", [host])[:1])
    for name, values in headers.getAllRawHeaders():
        if name.lower() != b"host":
            lines.extend(name + b": " + v for v in values)
    lines.append(b"Connection: Upgrade")
    lines.append(b"Upgrade: " + upgrade)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class ChunkedBody:
    """A chunked body's decoder (RFC 9112 7.1); trailers are read and dropped."""

    _MAX_LINE = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0
        self._state = "size"

    def feed(self, data: bytes) -> Tuple[List[bytes], bool]:
        """
        The body bytes in C{data}, and whether the body is complete.

        @raise ValueError: a malformed chunk.
        """
        buffer = self._buffer + data
        out: List[bytes] = []
        while True:
            if self._state == "data":
                piece = buffer[:self._left]
                if piece:
                    out.append(piece)
                    buffer = buffer[len(piece):]
                    self._left -= len(piece)
                if self._left:
                    break
                self._state = "crlf"
            elif self._state == "crlf":
                if len(buffer) < 2:
                    break
                if buffer[:2] != b"\r\n":
                    raise ValueError("malformed chunk end")
                buffer = buffer[2:]
                self._state = "size"
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > self._MAX_LINE:
                        raise ValueError("chunk line too long")
                    break
                line, buffer = buffer[:end], buffer[end + 2:]
                if self._state == "trailer":
                    if not line:
                        self._buffer = b""
                        return out, True
                    continue
                size = line.split(b";", 1)[0].strip()
                if not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                    raise ValueError("malformed chunk size")
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailer"
        self._buffer = buffer
        return out, False


class SizedBody:
    """A body of C{Content-Length} bytes, or (None) one that ends with the connection."""

    def __init__(self, length: Optional[int]) -> None:
        self._left = length

    def feed(self, data: bytes) -> Tuple[List[bytes], bool]:
        if self._left is None:
            return [data], False
        piece = data[:self._left]
        self._left -= len(piece)
        return [piece], self._left == 0

    @property
    def complete(self) -> bool:
        return self._left == 0

    @property
    def ends_with_connection(self) -> bool:
        return self._left is None
