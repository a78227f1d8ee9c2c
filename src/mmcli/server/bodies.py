"""Request bodies for the HTTP face: read as they come under a size cap, then parsed as JSON, a
multipart/form-data form (python-multipart) or an urlencoded one. Every failure is an ``HttpError``: the
status and a one-line reason for the client.
"""

from __future__ import annotations

import json
from typing import Any


class HttpError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: Any = ()):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, list(headers)


async def read_body(scope: dict[str, Any], receive: Any, limit: int) -> bytes:
    """The whole body, read as it comes; past ``limit`` bytes the request is refused (413) at once."""
    too_big = HttpError(413, f"the body is over this server's limit of {limit:,} bytes", "request_too_large")
    length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
    if length.strip().isdigit() and int(length) > limit:
        raise too_big
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(400, "the client went away", "disconnected")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise too_big
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise HttpError(400, "the body must be a JSON object")
    return value


def parse_urlencoded(body: bytes) -> dict[str, Any]:
    import urllib.parse

    values: dict[str, Any] = {}
    try:
        pairs = urllib.parse.parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body)
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"the form is malformed: {exc}") from None
    for name, value in pairs:
        values.setdefault(name, []).append(value)
    return values


def parse_multipart(ctype: str, body: bytes) -> dict[str, Any]:
    """Fields as lists of strings; files (parts with a filename) as (filename, bytes) under their name."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(ctype)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HttpError(400, "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    header: list[bytes] = [b"", b""]

    def begin() -> None:
        parts.append({"headers": {}, "data": []})

    def field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def header_end() -> None:
        parts[-1]["headers"][header[0].decode("latin-1").strip().lower()] = (
            header[1].decode("latin-1").strip()
        )
        header[:] = [b"", b""]

    def data(chunk: bytes, start: int, end: int) -> None:
        parts[-1]["data"].append(chunk[start:end])

    callbacks: Any = {
        "on_part_begin": begin,
        "on_header_field": field,
        "on_header_value": value,
        "on_header_end": header_end,
        "on_part_data": data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise HttpError(400, f"the multipart body is malformed: {exc}") from None
    values: dict[str, Any] = {}
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", ""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if not name:
            raise HttpError(400, "a multipart part without a name")
        content = b"".join(part["data"])
        if b"filename" in disposition:
            item: Any = (disposition[b"filename"].decode("utf-8", "replace"), content)
        else:
            try:
                item = content.decode("utf-8")
            except UnicodeDecodeError:
                raise HttpError(400, f"the form field {name!r} is not UTF-8 text") from None
        values.setdefault(name, []).append(item)
    return values
