"""Download ``http://`` and ``https://`` inputs with the standard library: a timeout, a size cap, one retry.

Every failure raises ``InputError`` with a message fit for the user ("HTTP 404 Not Found", "download timed
out after 30 s", ...); the caller names the URL. ``urllib`` is imported inside the functions, so importing
this module costs nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmcli.errors import InputError
from mmcli.version import __version__

if TYPE_CHECKING:
    from http.client import HTTPConnection, HTTPResponse

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


class _Deadline:
    """The end of one fetch, shared by its connections, redirects and retry.

    Connections connect within the time left and are watched: the time left is checked between reads, and
    a timer shuts the watched sockets down when the time is up, whatever urllib waits for then (headers, a
    redirect's body, a slow trickle of bytes).
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self.sockets: list[socket.socket] = []
        self.timer = threading.Timer(seconds, self.expire)
        self.timer.daemon = True

    def left(self) -> float:
        """Seconds left; TimeoutError when there are none."""
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise TimeoutError("timed out")
        return left

    def watch(self, sock: socket.socket) -> None:
        self.sockets.append(sock)
        if self.expired:
            self.expire()

    def expire(self) -> None:
        self.expired = True
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):  # the plain socket's, under any TLS: a blocked read returns
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def fetch(url: str, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> Download:
    """GET ``url`` (redirects followed), retrying once after a short pause on a transient failure.

    Transient: timeouts, connection errors, HTTP 5xx and 429. Never retried: other 4xx, the size cap.
    ``timeout`` bounds the whole fetch: connecting, every redirect, every read and the retry, which is
    made only while time is left (so a download that timed out is not tried again).
    """
    deadline = _Deadline(timeout)
    deadline.timer.start()
    try:
        return _fetch_with_retry(url, max_bytes, deadline)
    finally:
        deadline.timer.cancel()


def _fetch_with_retry(url: str, max_bytes: int, deadline: _Deadline) -> Download:
    try:
        return _fetch_once(url, max_bytes, deadline)
    except _Transient as exc:
        if deadline.end - time.monotonic() <= RETRY_BACKOFF or deadline.expired:
            raise InputError(exc.message) from None
        time.sleep(RETRY_BACKOFF)
    try:
        return _fetch_once(url, max_bytes, deadline)
    except _Transient as exc:
        raise InputError(exc.message) from None


def _fetch_once(url: str, max_bytes: int, deadline: _Deadline) -> Download:
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        request = urllib.request.Request(
            urllib.parse.quote(url, safe=URL_SAFE),
            headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.8"},
        )
        with _opener(deadline).open(request, timeout=deadline.left()) as response:
            data = _read_capped(response, max_bytes, deadline)
            content_type = response.headers.get_content_type() if response.headers else ""
    except InputError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _http_error(exc.code, exc.reason) from None
    except Exception as exc:
        raise _network_error(exc, deadline) from None
    if not data:
        raise InputError("the server sent an empty body")
    return Download(data, content_type)


def _read_capped(response: HTTPResponse, max_bytes: int, deadline: _Deadline) -> bytes:
    too_big = f"download is over the {_size(max_bytes)} limit"
    length = response.headers.get("Content-Length", "").strip()
    if length.isdigit() and int(length) > max_bytes:
        raise InputError(too_big)
    chunks: list[bytes] = []
    total = 0
    while True:
        deadline.left()  # checked between reads: bytes that keep trickling in do not extend the time
        chunk = response.read(min(CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise InputError(too_big)
    if deadline.expired:  # the timer shut the socket: a body that ends at the close may be cut short
        raise TimeoutError("timed out")
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


def _network_error(exc: BaseException, deadline: _Deadline) -> Exception:
    """Map what urllib and http.client raise to a transient failure or a final InputError."""
    import http.client
    import ssl
    import urllib.error

    reason: BaseException | str = exc
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
    if deadline.expired or isinstance(reason, (TimeoutError, socket.timeout)):
        return _Transient(f"download timed out after {deadline.seconds:g} s")
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


def _opener(deadline: _Deadline) -> Any:
    """An opener whose connections the deadline bounds, and that follows redirects to http(s) only
    (urllib would also follow one to ftp://)."""
    import urllib.request

    http_class, https_class = _connection_classes(deadline)

    class RedirectHandler(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            if not is_url(newurl):
                raise InputError(f"redirected to a URL that is not http(s): {newurl}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: Any) -> Any:
            return self.do_open(http_class, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: Any) -> Any:
            return self.do_open(https_class, req)

    return urllib.request.build_opener(RedirectHandler(), HTTPHandler(), HTTPSHandler())


def _connection_classes(deadline: _Deadline) -> tuple[type[HTTPConnection], type[HTTPConnection]]:
    """http.client connections that connect within the time left and put their socket under watch."""
    import http.client

    class HTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.timeout = deadline.left()
            super().connect()
            deadline.watch(self.sock)

    class HTTPSConnection(HTTPConnection, http.client.HTTPSConnection):
        pass  # HTTPConnection.connect's super() is HTTPSConnection.connect: TLS included

    return HTTPConnection, HTTPSConnection
