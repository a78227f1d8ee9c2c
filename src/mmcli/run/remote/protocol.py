"""The Unix-socket protocol between the CLI (or ``mmcli.Client``) and ``mmcli serve``.

A message is a 4-byte big-endian length, a JSON header of that length, then the raw payloads the header's
``"blobs"`` lists (their lengths, in order): image bytes travel as they are, never base64 and never pickle.
Requests carry an ``"id"``; the server answers each with the same id (answers may come out of order, so a
client can keep two requests in flight). An answer is ``{"id", "ok": true, ...}`` or ``{"id", "ok": false,
"error": {"type", "message", "hint"}}``, the MmcliError the work raised, so the client can raise the same one.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from typing import Any, BinaryIO

from mmcli import errors

HEADER_MAX = 64 << 20  # a header is names and options: 64 MiB is far beyond any real one
BLOBS_MAX = 4 << 30  # one request's image bytes
_LENGTH = struct.Struct("!I")


class ProtocolError(Exception):
    """The peer sent something that is not a message of this protocol."""


def send(sock: socket.socket, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}).encode("utf-8")
    sock.sendall(_LENGTH.pack(len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def recv(stream: BinaryIO) -> tuple[dict[str, Any], list[bytes]] | None:
    """The next message from a socket's buffered reader; None at a clean end of stream."""
    first = stream.read(_LENGTH.size)
    if not first:
        return None
    if len(first) < _LENGTH.size:
        raise ProtocolError("the connection closed in the middle of a message")
    (size,) = _LENGTH.unpack(first)
    if size > HEADER_MAX:
        raise ProtocolError(f"a header of {size} bytes is over the limit")
    try:
        header = json.loads(_exactly(stream, size))
    except ValueError as exc:
        raise ProtocolError(f"a header that is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("a header that is not a JSON object")
    sizes = header.pop("blobs", [])
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise ProtocolError("a header whose blobs are not a list of sizes")
    if sum(sizes) > BLOBS_MAX:
        raise ProtocolError(f"{sum(sizes)} bytes of images in one request is over the limit")
    return header, [_exactly(stream, n) for n in sizes]


def _exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise ProtocolError("the connection closed in the middle of a message")
    return data


def error_fields(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, errors.MmcliError):
        return {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    return {
        "type": "MmcliError",
        "message": f"the server failed: {errors.first_sentence(str(exc)) or type(exc).__name__}",
        "hint": None,
    }


def raise_error(fields: dict[str, Any]) -> None:
    """Raise the MmcliError an answer reports, as its own class (so the exit status is the same)."""
    cls = getattr(errors, str(fields.get("type")), errors.MmcliError)
    if not (isinstance(cls, type) and issubclass(cls, errors.MmcliError)):
        cls = errors.MmcliError
    raise cls(str(fields.get("message")), fields.get("hint"))
