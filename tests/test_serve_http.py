"""The HTTP face of ``mmcli serve``: a real Engine under uvicorn on a free loopback port, one per module,
spoken to over real sockets. Records must equal what the CLI prints for the same images and options."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from mmcli.errors import MmcliError, UsageError
from mmcli.server import http
from mmcli.server.engine import Engine
from tests.conftest import rounded

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "test-token"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
RED = "samples/shapes-red-circle.png"
BLUE = "samples/shapes-blue-square.jpg"
ROOT = SAMPLES.parent


@pytest.fixture(scope="module")
def server() -> Iterator[http.HttpServer]:
    engine = Engine(keep_alive=None, max_models=3)
    web = http.start(engine, "127.0.0.1", 0, TOKEN, max_body=1 << 20)
    yield web
    web.stop()
    engine.close()


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    """The samples folder over plain HTTP, for image URLs."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(SAMPLES))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()


@pytest.fixture(autouse=True)
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the CLI names inputs as given: samples/...


def api(
    server: http.HttpServer,
    path: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    content_type: str = "application/json",
    method: str | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def upload(path: str) -> dict[str, str]:
    return {"name": path, "base64": base64.b64encode((ROOT / path).read_bytes()).decode()}


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = "mmcli-test-boundary"
    chunks = []
    for name, value in fields:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, filename, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        chunks.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def cli_records(cli: Callable[..., Any], *args: str) -> list[dict[str, Any]]:
    result = cli(*args, "--no-server", "-f", "jsonl", "-q")
    assert result.code in (0, 3), result.stderr
    records: list[dict[str, Any]] = result.jsonl()
    return records


# -- the tasks: the CLI's records ------------------------------------------------------------------------------
def test_classify_json_matches_the_cli(server: http.HttpServer, cli: Callable[..., Any]) -> None:
    body = {"model": "shapes-clip", "images": [upload(RED), upload(BLUE)], "labels": "red circle,blue square"}
    status, got = api(server, "/v1/classify", {**body, "top_k": 2})
    assert status == 200, got
    assert (got["model"], got["device"], got["dtype"]) == (str(ROOT / "models/shapes-clip"), "cpu", "fp32")
    expected = cli_records(
        cli, "classify", RED, BLUE, "--model", "shapes-clip", "-l", "red circle,blue square", "-k", "2"
    )
    assert rounded(got["records"]) == rounded(expected)
    assert [r["label"] for r in got["records"]] == ["red circle", "blue square"]


def test_caption_multipart_matches_the_cli(server: http.HttpServer, cli: Callable[..., Any]) -> None:
    fields = [("model", "shapes-llava"), ("max_new_tokens", "12")]
    body, ctype = multipart(fields, [("image", p, (ROOT / p).read_bytes()) for p in (RED, BLUE)])
    status, got = api(server, "/v1/caption", body, content_type=ctype)
    assert status == 200, got
    expected = cli_records(cli, "caption", RED, BLUE, "--model", "shapes-llava", "--max-new-tokens", "12")
    assert got["records"] == expected
    assert got["records"][0]["caption"] == "a red circle"


def test_vqa_and_generative_classify_match_the_cli(server: http.HttpServer, cli: Callable[..., Any]) -> None:
    questions = ["What shape is it?", "What color is the shape?"]
    status, got = api(
        server, "/v1/vqa", {"model": "shapes-blip2", "images": [upload(RED)], "questions": questions}
    )
    assert status == 200, got
    expected = cli_records(cli, "vqa", RED, "--model", "shapes-blip2", "-Q", questions[0], "-Q", questions[1])
    assert got["records"] == expected
    assert [r["answer"] for r in got["records"]] == ["circle", "red"]
    # labels as repeated form fields, the CLI's repeated --labels
    fields = [("model", "shapes-blip2"), ("labels", "red circle"), ("labels", "blue square,green triangle")]
    body, ctype = multipart(fields, [("image", RED, (ROOT / RED).read_bytes())])
    status, got = api(server, "/v1/classify", body, content_type=ctype)
    assert status == 200, got
    expected = cli_records(
        cli,
        "classify",
        RED,
        "--model",
        "shapes-blip2",
        "-l",
        "red circle",
        "-l",
        "blue square,green triangle",
    )
    assert rounded(got["records"]) == rounded(expected)
    assert got["records"][0]["label"] == "red circle" and "question" in got["records"][0]


def test_embed_and_compare_match_the_cli(server: http.HttpServer, cli: Callable[..., Any]) -> None:
    status, got = api(
        server, "/v1/embed", {"model": "shapes-clip", "images": [upload(RED)], "texts": ["a red circle"]}
    )
    assert status == 200, got
    expected = cli_records(cli, "embed", RED, "--model", "shapes-clip", "--text", "a red circle")
    assert rounded(got["records"]) == rounded(expected)
    images = [upload(RED), upload(BLUE)]
    status, got = api(
        server, "/v1/compare", {"model": "shapes-clip", "images": images, "texts": ["red circle"]}
    )
    assert status == 200, got
    expected = cli_records(cli, "compare", RED, BLUE, "--model", "shapes-clip", "--text", "red circle")
    assert rounded(got["records"]) == rounded(expected)
    assert got["records"][0]["target"] == RED
    body = {
        "model": "shapes-clip",
        "images": [upload(RED)],
        "against": [upload(BLUE), upload("samples/red-circle.png")],
    }
    status, got = api(server, "/v1/compare", {**body, "top_k": 1})
    expected = cli_records(
        cli, "compare", RED, "--model", "shapes-clip", "-a", BLUE, "-a", "samples/red-circle.png", "-k", "1"
    )
    assert status == 200 and rounded(got["records"]) == rounded(expected)


# -- images: every way in, and bad ones -------------------------------------------------------------------------
def test_data_urls_urls_and_bad_images(server: http.HttpServer, files: str) -> None:
    data_url = "data:image/png;base64," + upload(RED)["base64"]
    junk = {"name": "junk.png", "base64": base64.b64encode(b"not an image at all").decode()}
    images = [data_url, f"{files}/shapes-blue-square.jpg", f"{files}/missing.png", junk]
    status, got = api(
        server,
        "/v1/classify",
        {"model": "shapes-clip", "images": images, "labels": ["red circle", "blue square"]},
    )
    assert status == 200, got
    records = got["records"]
    assert [r.get("input") for r in records] == ["images[0]", images[1], images[2], "junk.png"]
    assert [r.get("label") for r in records[:2]] == ["red circle", "blue square"]
    assert "404" in records[2]["error"]
    assert "not an image" in records[3]["error"]
    # a request may lower the pixel limit, never raise it
    status, got = api(
        server,
        "/v1/classify",
        {"images": [upload(RED)], "labels": "a,b", "model": "shapes-clip", "max_pixels": 100},
    )
    assert status == 200 and "pixel" in got["records"][0]["error"]
    status, got = api(
        server,
        "/v1/classify",
        {"images": [upload(RED)], "labels": "a,b", "model": "shapes-clip", "max_pixels": 10**12},
    )
    assert status == 400 and "max_pixels" in got["error"]["message"]


# -- OpenAI-compatible -------------------------------------------------------------------------------------------
def test_openai_embeddings_text_and_image(server: http.HttpServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + upload(RED)["base64"]}}
    status, got = api(server, "/v1/embeddings", {"model": "shapes-clip", "input": ["a red circle", image]})
    assert status == 200, got
    assert got["object"] == "list" and got["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    assert [(d["object"], d["index"]) for d in got["data"]] == [("embedding", 0), ("embedding", 1)]
    _, ours = api(
        server, "/v1/embed", {"model": "shapes-clip", "images": [upload(RED)], "texts": ["a red circle"]}
    )
    assert got["data"][0]["embedding"] == ours["records"][0]["embedding"]
    assert rounded(got["data"][1]["embedding"]) == rounded(ours["records"][1]["embedding"])
    status, packed = api(
        server,
        "/v1/embeddings",
        {"model": "shapes-clip", "input": "a red circle", "encoding_format": "base64"},
    )
    vector = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and np.allclose(vector, got["data"][0]["embedding"])
    status, err = api(server, "/v1/embeddings", {"model": "shapes-clip", "input": [[1, 2, 3]]})
    assert status == 400 and "token arrays" in err["error"]["message"]


def test_openai_chat_completions(server: http.HttpServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + upload(RED)["base64"]}}
    message = {"role": "user", "content": [{"type": "text", "text": "What shape is it?"}, image]}
    status, got = api(
        server, "/v1/chat/completions", {"model": "shapes-llava", "messages": [message], "max_tokens": 8}
    )
    assert status == 200, got
    assert got["object"] == "chat.completion" and got["id"].startswith("chatcmpl-")
    assert got["choices"][0]["message"] == {"role": "assistant", "content": "circle"}
    assert got["choices"][0]["finish_reason"] == "stop"
    _, vqa = api(
        server,
        "/v1/vqa",
        {
            "model": "shapes-llava",
            "images": [upload(RED)],
            "question": "What shape is it?",
            "max_new_tokens": 8,
        },
    )
    assert vqa["records"][0]["answer"] == got["choices"][0]["message"]["content"]
    text_only = {"role": "user", "content": "What shape is it?"}
    status, err = api(server, "/v1/chat/completions", {"model": "shapes-llava", "messages": [text_only]})
    assert status == 400 and "no image" in err["error"]["message"]
    status, err = api(
        server, "/v1/chat/completions", {"model": "shapes-llava", "messages": [message], "stream": True}
    )
    assert status == 400 and "streaming is not supported" in err["error"]["message"]


# -- refusals: a 4xx with one line, and the server stays up ------------------------------------------------------
BAD = [
    ("/v1/classify", b"{not json", 400, "not valid JSON"),
    ("/v1/classify", b"[1, 2]", 400, "JSON object"),
    (
        "/v1/classify",
        {"model": "no-such-model", "images": ["data:image/png;base64,AA=="], "labels": "a"},
        404,
        "unknown model",
    ),
    (
        "/v1/classify",
        {"model": "shapes-clip", "images": ["data:,x"], "labels": "a", "colour": 1},
        400,
        "unknown parameter 'colour'",
    ),
    (
        "/v1/classify",
        {"model": "shapes-clip", "images": ["data:,x"], "labels": "a", "top_k": "3"},
        400,
        "top_k must be a whole number",
    ),
    (
        "/v1/classify",
        {"model": "shapes-clip", "images": ["data:,x"], "labels": "a", "threshold": 2},
        400,
        "threshold 2.0 is out of range",
    ),
    ("/v1/classify", {"model": "shapes-clip", "images": ["data:,x"], "labels": "a,a"}, 400, "given twice"),
    (
        "/v1/classify",
        {"model": "shapes-clip", "images": ["data:,x"], "labels": "a", "template": "no slot"},
        400,
        "template 'no slot'",
    ),
    (
        "/v1/classify",
        {"model": "shapes-clip", "images": ["/etc/passwd"], "labels": "a"},
        400,
        "reads no local paths",
    ),
    (
        "/v1/classify",
        {"model": "shapes-clip", "images": [{"base64": "%%%"}], "labels": "a"},
        400,
        "not valid base64",
    ),
    ("/v1/caption", {"model": "shapes-clip", "images": ["data:,x"]}, 400, "cannot caption"),
    (
        "/v1/caption",
        {"model": "shapes-llava", "images": ["data:,x"], "sample": True, "temperature": 0},
        400,
        "temperature must be above 0 with sample",
    ),
    ("/v1/vqa", {"model": "shapes-blip2", "images": ["data:,x"]}, 400, "questions is required"),
    ("/v1/compare", {"model": "shapes-clip", "images": ["data:,x"]}, 400, "give either texts"),
    ("/v1/nowhere", {}, 404, "no such path"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD, ids=[b[3] for b in BAD])
def test_bad_requests_are_refused_in_one_line(
    server: http.HttpServer, path: str, body: Any, status: int, message: str
) -> None:
    got_status, got = api(server, path, body)
    assert got_status == status, got
    assert message in got["error"]["message"] and "\n" not in got["error"]["message"]
    assert api(server, "/health", token=None) == (200, {"status": "ok"})


def test_methods_media_types_and_tokens(server: http.HttpServer) -> None:
    status, got = api(server, "/v1/classify", method="GET")
    assert status == 405 and "takes POST" in got["error"]["message"]
    assert api(server, "/v1/classify", b"labels=a", content_type="text/csv")[0] == 415
    for token in (None, "wrong"):
        status, got = api(server, "/v1/models", token=token)
        assert status == 401 and got["error"]["type"] == "authentication_error"
        assert api(server, "/v1/classify", {"labels": "a"}, token=token)[0] == 401
    assert api(server, "/health", token=None)[0] == 200
    status, models = api(server, "/v1/models")
    assert status == 200 and models["object"] == "list"
    assert {"shapes-clip", "shapes-llava", "shapes-blip2"} <= {m["id"] for m in models["data"]}


def test_bodies_over_the_limit_get_413(server: http.HttpServer) -> None:
    head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall((head + f"Content-Length: {5 << 20}\r\n\r\n").encode())  # said up front: refused unread
        assert s.recv(200).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        for _ in range(16):  # 16 x 64 KiB: 1 MiB, the limit, with no length said
            s.sendall(b"10000\r\n" + b" " * 0x10000 + b"\r\n")
        s.sendall(b"1\r\n \r\n")  # one byte over (and nothing left unread, so no reset)
        reply = b"".join(iter(lambda: s.recv(4096), b""))  # the server closes after its answer
    assert reply.startswith(b"HTTP/1.1 413") and b"limit of 1,048,576 bytes" in reply
    assert api(server, "/health", token=None)[0] == 200


def test_requests_at_once_all_succeed(server: http.HttpServer) -> None:
    body = {"model": "shapes-clip", "images": [upload(RED)], "labels": "red circle,blue square"}
    results: list[tuple[int, Any]] = []
    threads = [
        threading.Thread(target=lambda: results.append(api(server, "/v1/classify", body))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in results] == [200] * 4
    assert len({json.dumps(rounded(got["records"])) for _, got in results}) == 1


def test_openapi_describes_every_route(server: http.HttpServer) -> None:
    from mmcli.server.openapi import ROUTES

    status, doc = api(server, "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == set(ROUTES)
    for path, (method, _, _) in ROUTES.items():
        assert list(doc["paths"][path]) == [method.lower()]


# -- binding -------------------------------------------------------------------------------------------------------
def test_binding_beyond_loopback_needs_a_token(server: http.HttpServer) -> None:
    engine: Any = object()  # never reached: the refusal comes first
    with pytest.raises(UsageError, match=r"binding 0\.0\.0\.0 needs --token or MMCLI_TOKEN"):
        http.HttpServer(engine, "0.0.0.0", 0, None)
    assert http.is_loopback("127.0.0.1") and http.is_loopback("::1") and http.is_loopback("localhost")
    assert not http.is_loopback("0.0.0.0") and not http.is_loopback("example.com")
    with pytest.raises(MmcliError, match=r"cannot listen on 127\.0\.0\.1"):
        http.HttpServer(engine, "127.0.0.1", server.port, None)  # taken


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    monkeypatch.delitem(sys.modules, "mmcli.server.http")
    with pytest.raises(MmcliError, match=r"pip install 'mmcli\[serve\]'"):
        importlib.import_module("mmcli.server.http")


def test_mmcli_serve_http_in_a_real_process(tmp_path: Path) -> None:
    """``mmcli serve --http``: the socket and HTTP faces in one process, stopped by SIGTERM."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tmp_path.chmod(0o700)
    command = [sys.executable, "-m", "mmcli", "serve", "--socket", str(tmp_path / "s.sock")]
    env = {**os.environ, "MMCLI_TOKEN": "process-token"}
    proc = subprocess.Popen([*command, "--http", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    assert json.loads(response.read()) == {"status": "ok"}
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.2)
        body = json.dumps(
            {"model": "shapes-clip", "images": [upload(RED)], "labels": "red circle,blue square"}
        )
        request = urllib.request.Request(url + "/v1/classify", data=body.encode(), method="POST")
        request.add_header("Authorization", "Bearer process-token")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["records"][0]["label"] == "red circle"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
