"""The control socket's wire format, shared by the daemon and `appliancectl`.

Each message is a 4-byte big-endian length, then that many bytes of JSON (orjson). A request is
{"v": PROTOCOL_VERSION, "cmd": NAME, "args": [...]}; a reply is {"v": ..., "ok": bool, ...} with
"error" when not ok. The client checks "v" first, as supervisorctl checks the server's version.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 4 << 20
MAX_REQUEST_BYTES = 64 << 10  # a request is a command and a few words
_LENGTH = struct.Struct("!I")


class ProtocolError(ValueError):
    """A peer that does not speak this protocol (or closed mid-message)."""


def encode(message: dict[str, Any]) -> bytes:
    body = orjson.dumps(message)
    return _LENGTH.pack(len(body)) + body


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(encode(message))


def take_message(buffer: bytearray, limit: int = MAX_REQUEST_BYTES) -> dict[str, Any] | None:
    """Remove the first whole message from `buffer` (bytes received so far, non-blocking side)
    and return it; None while it is incomplete. ProtocolError when it cannot be one."""
    if len(buffer) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buffer)
    if length > limit:
        raise ProtocolError(f"message of {length} bytes is over the {limit} limit")
    if len(buffer) < _LENGTH.size + length:
        return None
    body = bytes(buffer[_LENGTH.size : _LENGTH.size + length])
    del buffer[: _LENGTH.size + length]
    return _parse(body)


def recv_message(sock: socket.socket) -> dict[str, Any] | None:
    """The next message, or None when the peer closed cleanly between messages."""
    head = _recv_exactly(sock, _LENGTH.size, allow_eof=True)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {length} bytes is over the {MAX_MESSAGE_BYTES} limit")
    body = _recv_exactly(sock, length, allow_eof=False)
    assert body is not None
    return _parse(body)


def _parse(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(f"not JSON: {error}") from error
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message


def _recv_exactly(sock: socket.socket, size: int, allow_eof: bool) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            if allow_eof and not data:
                return None
            raise ProtocolError("the peer closed the connection mid-message")
        data += chunk
    return bytes(data)
