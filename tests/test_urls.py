"""http(s) inputs: downloads from a real HTTP server on 127.0.0.1, directly and through the CLI."""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcli import __version__
from mmcli.errors import InputError
from mmcli.sources import fetch
from mmcli.sources.inputs import Item, count_inputs, decode_image, expand, is_url, load_image, read_bytes


@dataclass
class Site:
    base: str
    png: bytes
    png_path: Path
    hits: Counter[str] = field(default_factory=Counter)
    agents: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


def make_handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def send(self, code: int, body: bytes = b"", kind: str = "text/plain", length: bool = True) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            site.hits[self.path] += 1
            site.agents.append(self.headers.get("User-Agent", ""))
            route, _, _ = self.path.partition("?")
            count = site.hits[self.path]
            if route == "/red.png":
                self.send(200, site.png, "image/png")
            elif route == "/missing.png":
                self.send(404, b"nope")
            elif route == "/forbidden.png":
                self.send(403, b"no")
            elif route == "/flaky.png":  # 500 (or 429) the first time, then the image
                code = 429 if "429" in self.path else 500
                self.send(code, b"busy") if count == 1 else self.send(200, site.png, "image/png")
            elif route == "/broken.png":
                self.send(500, b"always broken")
            elif route == "/slow.png":
                time.sleep(1.0)
                self.send(200, site.png, "image/png")
            elif route == "/big-declared":
                self.send(200, b"\0" * 5000, "image/png")
            elif route == "/big-undeclared":  # no Content-Length: HTTP/1.0, body ends at close
                self.send(200, b"\0" * 5000, "image/png", length=False)
            elif route == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/red.png?from=redirect")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif route == "/redirect-ftp":
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/red.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif route == "/page.png":
                self.send(200, b"<html><body>Not found, sorry</body></html>", "text/html")
            elif route == "/empty.png":
                self.send(200, b"", "image/png")
            else:
                self.send(404)

    return Handler


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    path = tmp_path_factory.mktemp("site") / "red.png"
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)
    site = Site("", path.read_bytes(), path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(site))
    server.daemon_threads = True
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def quick_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "RETRY_BACKOFF", 0.01)
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def error_of(url: str, **kwargs: float) -> str:
    with pytest.raises(InputError) as info:
        load_image(url, **kwargs) if not kwargs else read_bytes(url, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


# -- is_url and expand ----------------------------------------------------------------------------------
def test_is_url() -> None:
    assert is_url("http://example.com/a.png") and is_url("HTTPS://example.com/a.png")
    for name in ["a.png", "/http://x", "ftp://example.com/a.png", "file:///a.png", "http:/x", ""]:
        assert not is_url(name), name


def test_urls_are_items_without_stat(tmp_path: Path) -> None:
    urls = ["https://example.com/a.png", "http://127.0.0.1:9/b.jpg?x=[1]*"]
    stdin = io.BytesIO("\n".join(urls).encode() + b"\n")
    assert list(expand(urls)) == [Item(u) for u in urls]
    assert list(expand(["-"], stdin)) == [Item(u) for u in urls]
    assert count_inputs(urls) == 2


# -- downloads ----------------------------------------------------------------------------------------------
def test_png_decodes_to_the_same_pixels_as_the_file(site: Site) -> None:
    url = site.url("/red.png")
    assert read_bytes(url) == site.png
    got = load_image(url)
    assert got.mode == "RGB" and got.size == (32, 24)
    assert np.array_equal(np.asarray(got), np.asarray(load_image(str(site.png_path))))
    assert np.array_equal(np.asarray(decode_image(site.png)), np.asarray(got))
    assert site.agents[-1] == f"mmcli/{__version__}"


def test_404_is_not_retried(site: Site) -> None:
    assert error_of(site.url("/missing.png")) == "HTTP 404 Not Found"
    assert error_of(site.url("/forbidden.png")) == "HTTP 403 Forbidden"
    assert site.hits["/missing.png"] == 1 and site.hits["/forbidden.png"] == 1


@pytest.mark.parametrize("query", ["?500", "?429"])
def test_transient_error_then_success_retried_once(site: Site, query: str) -> None:
    path = "/flaky.png" + query
    assert load_image(site.url(path)).size == (32, 24)
    assert site.hits[path] == 2


def test_server_error_every_time_gives_up_after_two_attempts(site: Site) -> None:
    assert error_of(site.url("/broken.png")) == "HTTP 500 Internal Server Error"
    assert site.hits["/broken.png"] == 2


def test_slow_server_times_out(site: Site) -> None:
    start = time.monotonic()
    assert error_of(site.url("/slow.png?t"), timeout=0.2) == "download timed out after 0.2 s"
    assert time.monotonic() - start < 1
    assert site.hits["/slow.png?t"] == 1  # the timeout bounds the whole fetch: no time is left for a retry


@pytest.mark.parametrize("path", ["/big-declared", "/big-undeclared"])
def test_size_cap_with_and_without_content_length(site: Site, path: str) -> None:
    assert error_of(site.url(path), max_bytes=1000) == "download is over the 1,000 bytes limit"
    assert site.hits[path] == 1  # not retried
    assert len(read_bytes(site.url(path), max_bytes=5000)) == 5000


def test_default_size_message() -> None:
    assert fetch._size(fetch.DEFAULT_MAX_BYTES) == "100 MB"


def test_redirect_followed(site: Site) -> None:
    assert read_bytes(site.url("/redirect")) == site.png
    assert site.hits["/red.png?from=redirect"] == 1
    assert "not http(s)" in error_of(site.url("/redirect-ftp"))


def test_html_page_is_not_an_image(site: Site) -> None:
    message = error_of(site.url("/page.png"))
    assert message.startswith("not an image") and "text/html" in message


def test_empty_body(site: Site) -> None:
    assert error_of(site.url("/empty.png")) == "the server sent an empty body"


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert error_of(f"http://127.0.0.1:{port}/a.png") == "cannot connect: Connection refused"


def test_invalid_urls() -> None:
    assert error_of("http://").startswith("invalid URL")
    assert error_of("http://127.0.0.1:notaport/a.png") == "invalid URL: nonnumeric port: 'notaport'"


def test_spaces_and_unicode_in_urls_are_escaped(site: Site) -> None:
    assert error_of(site.url("/no such/ïmage.png")) == "HTTP 404 Not Found"
    assert "/no%20such/%C3%AFmage.png" in site.hits


# -- local files through read_bytes ------------------------------------------------------------------------
def test_read_bytes_local_files(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"abc")
    assert read_bytes(str(tmp_path / "a.png")) == b"abc"
    (tmp_path / "empty.png").write_bytes(b"")
    for name, message in [
        ("empty.png", "empty file"),
        ("missing.png", "no such file or directory"),
        (".", "is a directory"),
    ]:
        with pytest.raises(InputError, match=message):
            read_bytes(str(tmp_path / name))
    with pytest.raises(InputError, match="empty file"):
        decode_image(b"")
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="not a regular file"):
        read_bytes(str(tmp_path / "pipe.png"))  # refused without blocking on the FIFO


def test_read_bytes_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmcli.sources import inputs

    (tmp_path / "secret.png").write_bytes(b"abc")

    def refuse(path: str, *args: object) -> object:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(inputs, "open", refuse, raising=False)
    with pytest.raises(InputError, match=r"permission denied \(unreadable\)"):
        read_bytes(str(tmp_path / "secret.png"))


# -- through the CLI ------------------------------------------------------------------------------------------
def test_cli_embed_url(cli, tiny_clip: Path, site: Site) -> None:
    url = site.url("/red.png")
    from_url = cli("embed", url, "--model", tiny_clip)
    assert from_url.code == 0, from_url.stderr
    from_file = cli("embed", site.png_path, "--model", tiny_clip)
    [record] = from_url.jsonl()
    assert record["input"] == url
    assert np.allclose(record["embedding"], from_file.jsonl()[0]["embedding"], atol=1e-6)


def test_cli_bad_url_is_an_error_record_and_the_rest_is_done(cli, tiny_clip: Path, site: Site) -> None:
    good, bad = site.url("/red.png"), site.url("/missing.png")
    result = cli("embed", good, bad, site.png_path, "--model", tiny_clip)
    assert result.code == 3
    records = {r["input"]: r for r in result.jsonl()}
    assert set(records) == {good, bad, str(site.png_path)}
    assert records[bad]["error"] == "HTTP 404 Not Found"
    assert "embedding" in records[good] and "embedding" in records[str(site.png_path)]


def test_cli_url_from_stdin(cli, tiny_clip: Path, site: Site) -> None:
    url = site.url("/red.png")
    result = cli("embed", "-", "--model", tiny_clip, stdin=f"{url}\n".encode())
    assert result.code == 0, result.stderr
    assert [r["input"] for r in result.jsonl()] == [url]
