"""Download ``http://`` and ``https://`` inputs with the standard library: a timeout, a size cap, one retry.

Every failure raises ``InputError`` with a message fit for the user ("HTTP 404 Not Found", "download timed
out after 30 s", ...); the caller names the URL. ``urllib`` is imported inside the functions, so importing
this module costs nothing.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmcli import __version__
from mmcli.errors import InputError

if TYPE_CHECKING:
    from http.client import HTTPResponse

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BYTES = 100_000_000
RETRY_BACKOFF = 0.5  # seconds before the one retry
USER_AGENT = f"mmcli/{__version__}"
CHUNK = 1 << 16
# Characters left as they are when a URL is made safe to send (spaces, non-ASCII... are %-escaped).
URL_SAFE = "%:/?#[]@!$&'()*+,;=~"


def is_url(name: str) -> bool:
    """True for ``http://...`` and ``https://...`` (any case); everything else is a local path."""
    head = name[:8].lower()
    return head.startswith("http://") or head.startswith("https://")


@dataclass(frozen=True)
class Download:
    data: bytes
    content_type: str


class _Transient(Exception):
    """A failure worth one more try; ``message`` is what the user sees if the retry fails too."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def fetch(url: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> Download:
    """GET ``url`` (redirects followed), retrying once after a short pause on a transient failure.

    Transient: timeouts, connection errors, HTTP 5xx and 429. Never retried: other 4xx, the size cap.
    ``timeout`` bounds the connection and every read (seconds without data), not the whole download.
    """
    try:
        return _fetch_once(url, max_bytes, timeout)
    except _Transient:
        time.sleep(RETRY_BACKOFF)
    try:
        return _fetch_once(url, max_bytes, timeout)
    except _Transient as exc:
        raise InputError(exc.message) from None


def read_url(url: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    return fetch(url, max_bytes, timeout).data


def _fetch_once(url: str, max_bytes: int, timeout: float) -> Download:
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        request = urllib.request.Request(
            urllib.parse.quote(url, safe=URL_SAFE),
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.8"},
        )
        with _opener().open(request, timeout=timeout) as response:
            data = _read_capped(response, max_bytes)
            content_type = response.headers.get_content_type() if response.headers else ""
    except InputError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _http_error(exc.code, exc.reason) from None
    except Exception as exc:
        raise _network_error(exc, timeout) from None
    if not data:
        raise InputError("the server sent an empty body")
    return Download(data, content_type)


def _read_capped(response: HTTPResponse, max_bytes: int) -> bytes:
    too_big = f"download is over the {_size(max_bytes)} limit"
    length = response.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) > max_bytes:
        raise InputError(too_big)
    chunks: list[bytes] = []
    total = 0
    while chunk := response.read(min(CHUNK, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise InputError(too_big)
    return b"".join(chunks)


def _size(n: int) -> str:
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g} MB"
    return f"{n:,} bytes"


def _http_error(code: int, reason: Any) -> Exception:
    from http import HTTPStatus

    text = str(reason or "").strip()
    if not text:
        try:
            text = HTTPStatus(code).phrase
        except ValueError:
            text = ""
    message = f"HTTP {code} {text}".rstrip()
    if 300 <= code < 400:
        return InputError(f"{message} (too many redirects?)")
    if code >= 500 or code == 429:
        return _Transient(message)
    return InputError(message)


def _network_error(exc: BaseException, timeout: float) -> Exception:
    """Map what urllib and http.client raise to a transient failure or a final InputError."""
    import http.client
    import ssl
    import urllib.error

    reason: BaseException | str = exc
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return _Transient(f"download timed out after {timeout:g} s")
    if isinstance(reason, ssl.SSLError):
        detail = getattr(reason, "verify_message", None) or reason.reason or str(reason)
        return InputError(f"TLS error: {detail}")
    if isinstance(reason, socket.gaierror):
        message = f"cannot connect: {reason.strerror or reason}"
        return _Transient(message) if reason.errno == socket.EAI_AGAIN else InputError(message)
    if isinstance(reason, http.client.IncompleteRead):
        return _Transient(f"download ended early ({len(reason.partial):,} bytes received)")
    if isinstance(reason, (http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError)):
        return _Transient(f"connection lost: {_strerror(reason)}")
    if isinstance(reason, OSError):  # refused, unreachable, reset while connecting...
        return _Transient(f"cannot connect: {_strerror(reason)}")
    if isinstance(reason, http.client.InvalidURL):
        return InputError(f"invalid URL: {_strerror(reason)}")
    if isinstance(reason, http.client.HTTPException):
        return _Transient(f"bad response from the server: {_strerror(reason)}")
    if isinstance(exc, (ValueError, UnicodeError)) or isinstance(reason, str):
        return InputError(f"invalid URL: {_strerror(reason)}")
    return InputError(f"download failed: {_strerror(reason)}")


def _strerror(exc: BaseException | str) -> str:
    if isinstance(exc, str):
        return exc
    text = getattr(exc, "strerror", None) or str(exc)
    return text or type(exc).__name__


def _opener() -> Any:
    """An opener that follows redirects to http(s) only (urllib would also follow one to ftp://)."""
    import urllib.request

    class RedirectHandler(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            if not is_url(newurl):
                raise InputError(f"redirected to a URL that is not http(s): {newurl}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return urllib.request.build_opener(RedirectHandler())
