"""The HTTP face of ``mmcli serve``: a plain ASGI application served by uvicorn (the ``serve`` extra).

Routes are in ``openapi.ROUTES`` and described at ``/openapi.json``. The task endpoints give the records the
CLI prints; ``/v1/embeddings`` and ``/v1/chat/completions`` speak OpenAI's shapes. The event loop only moves
bytes: parsing a request's images, downloads and the engine all run in worker threads.

Errors are ``{"error": {"message": one line, "type", "hint"?}}``: UsageError and CapabilityError 400,
UnknownModelError 404, ModelLoadError 422 (the request is fine, the model cannot load: fix the server's
cache or the model), any other MmcliError 500, a bug 500 with a one-line message. A failed input is not a
failed request: it is an error record, with 200, as the CLI writes it. No request can stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from mmcli import errors
from mmcli.errors import MmcliError, UsageError
from mmcli.run.remote.paths import is_loopback
from mmcli.server import openai, service
from mmcli.server.bodies import HttpError, parse_json, parse_multipart, parse_urlencoded, read_body
from mmcli.server.engine import Engine, Limits, ModelKey
from mmcli.server.openapi import ROUTES, document
from mmcli.server.params import COMMANDS, parse_call

DEFAULT_MAX_BODY = 64 << 20
DEFAULT_MAX_IMAGES = 256  # per request: each may be a download of up to max_body bytes
logger = logging.getLogger("mmcli.serve")


def _require_extra() -> None:
    try:
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MmcliError(f"the HTTP API needs {exc.name}: pip install 'mmcli[serve]'") from None


_require_extra()


STATUS = [  # the first class that matches decides (subclasses before their parents)
    (errors.UnknownModelError, 404, "model_not_found"),
    (errors.CapabilityError, 400, "invalid_request_error"),
    (errors.UsageError, 400, "invalid_request_error"),
    (errors.ModelLoadError, 422, "model_load_error"),
    (errors.MmcliError, 500, "server_error"),
]


def error_body(status: int, message: str, kind: str, hint: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": " ".join(message.split()), "type": kind}
    if hint:
        error["hint"] = " ".join(hint.split())
    return {"error": error}


@dataclass
class Settings:
    """What every request shares: the load options and limits of the server, and its guards."""

    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    max_images: int = DEFAULT_MAX_IMAGES
    defaults: ModelKey = field(default_factory=lambda: ModelKey(name=""))
    limits: Limits = field(default_factory=Limits)
    default_model: str | None = None  # else each task's default (configs/models.toml, the user config)
    urls: bool = True  # fetch http(s) image URLs (the server's network, on a client's behalf)
    threads: int = 32  # requests worked on at once; more wait their turn


class App:
    """The ASGI application. Each request: route, token, body (capped), parse, work in a thread, JSON."""

    def __init__(self, engine: Engine, settings: Settings, log: Callable[[str], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.log = log or (lambda line: logger.error("%s", line))
        # Requests wait in the engine for company (batching): each needs a thread of its own while it does.
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="mmcli-http")

    async def to_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers: list[tuple[str, str]] = []
        try:
            status, body = await self.handle(scope, receive)
        except HttpError as exc:
            status, body, headers = exc.status, error_body(exc.status, exc.message, exc.kind), exc.headers
            if exc.status in (401, 404, 405, 413):  # refused before its body was read: never read it
                headers.append(("connection", "close"))
        except MmcliError as exc:
            status, kind = next((s, k) for cls, s, k in STATUS if isinstance(exc, cls))
            body = error_body(status, exc.message, kind, exc.hint)
        except Exception as exc:  # a bug: this request fails, the server stays
            trace = traceback.format_exc().rstrip()
            self.log(
                f"{scope.get('method')} {scope.get('path')} failed: {type(exc).__name__}: {exc}\n{trace}"
            )
            message = f"the server failed: {errors.first_sentence(str(exc)) or type(exc).__name__}"
            status, body = 500, error_body(500, message, "server_error")
        await respond(send, status, body, headers)

    async def handle(self, scope: dict[str, Any], receive: Any) -> tuple[int, Any]:
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        if path != "/health":
            self.check_token(scope)
        route = ROUTES.get(path)
        if route is None:
            raise HttpError(404, f"no such path: {path}; see /openapi.json", "not_found")
        want, handler, _ = route
        if method != want:
            raise HttpError(
                405, f"{path} takes {want}, not {method}", "method_not_allowed", [("allow", want)]
            )
        if method == "GET":
            if handler == "models":  # the engine's lock may be held a while: never on the event loop
                return 200, await self.to_thread(self.models)
            return 200, {"status": "ok"} if handler == "health" else document()
        values, form = await self.read(scope, receive)
        return 200, await self.to_thread(self.post, handler, values, form)

    def check_token(self, scope: dict[str, Any]) -> None:
        token = self.settings.token
        if token is None:
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not hmac.compare_digest(given, b"Bearer " + token.encode()):
            what = "a wrong token" if given else "no token"
            raise HttpError(
                401,
                f"{what}: send Authorization: Bearer TOKEN",
                "authentication_error",
                [("www-authenticate", "Bearer")],
            )

    def models(self) -> dict[str, Any]:
        """OpenAI's model list (the loaded models, with the engine's figures) and the server's state."""
        status = self.engine.status()
        created = int(self.engine.started)
        models = [
            {"id": m["name"], "object": "model", "created": created, "owned_by": "mmcli", **m}
            for m in status["models"]
        ]
        return {"object": "list", "data": models, **{k: v for k, v in status.items() if k != "models"}}

    async def read(self, scope: dict[str, Any], receive: Any) -> tuple[dict[str, Any], bool]:
        """The body as parameters: a JSON object, or a form (``True``: values are lists of strings)."""
        ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"").decode("latin-1")
        body = await read_body(scope, receive, self.settings.max_body)
        kind = ctype.split(";")[0].strip().lower()
        if kind in ("", "application/json") or kind.endswith("+json"):
            return parse_json(body), False
        if kind == "multipart/form-data":
            return await self.to_thread(parse_multipart, ctype, body), True
        if kind == "application/x-www-form-urlencoded":
            if body.lstrip().startswith(b"{"):
                return parse_json(body), False  # curl -d '{...}' without -H 'Content-Type: application/json'
            return parse_urlencoded(body), True
        raise HttpError(
            415,
            f"a body of {kind} is not understood: send JSON or multipart/form-data",
            "unsupported_media_type",
        )

    # -- the work, in a thread --------------------------------------------------------------------------------
    def post(self, handler: str, values: dict[str, Any], form: bool) -> Any:
        if handler in COMMANDS:
            return self.run(handler, values, form)
        if handler == "embeddings":
            call_values, order = openai.embeddings_values(values)
            result = self.run("embed", call_values, False)
            return openai.embeddings_response(result, order, values.get("encoding_format") or "float")
        result = self.run("vqa", openai.chat_values(values), False)
        return openai.chat_response(result)

    def run(self, command: str, values: dict[str, Any], form: bool) -> dict[str, Any]:
        s = self.settings
        if form:  # file parts and fields named image(s) are the images
            values = dict(values)
            values["images"] = values.pop("image", []) + values.pop("images", [])
        call = parse_call(command, values, self.resolve, s.default_model, form)
        count = len(call.images) + len(call.against)
        if count > s.max_images:
            raise UsageError(f"{count} images in one request: the limit is {s.max_images}")
        if not s.urls and any(_is_url(ref) for ref in [*call.images, *call.against]):
            raise UsageError("this server fetches no URLs: send the image files themselves")
        items = service.image_inputs(call.images, max_bytes=s.max_body)
        against = service.image_inputs(call.against, "against", max_bytes=s.max_body)
        return service.execute(
            self.engine, call, service.model_key(s.defaults, call), s.limits, items, against
        )

    def resolve(self, name: str, revision: str | None) -> Any:
        defaults = self.settings.defaults
        return self.engine.spec(replace(defaults, name=name, revision=revision or defaults.revision))


def _is_url(ref: Any) -> bool:
    from mmcli.sources.fetch import is_url

    url = ref.get("url") if isinstance(ref, dict) else ref
    return isinstance(url, str) and is_url(url)


async def respond(send: Any, status: int, body: Any, headers: list[tuple[str, str]]) -> None:
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    try:
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": data})
    except OSError:  # the client went away: nobody to tell
        pass


def make_app(
    engine: Engine,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    log: Callable[[str], None] | None = None,
    **settings: Any,
) -> App:
    """The ASGI app over ``engine``; ``settings`` are ``Settings``' other fields."""
    return App(engine, Settings(token=token or None, max_body=max_body, **settings), log)


# -- serving ----------------------------------------------------------------------------------------------------
class HttpServer:
    """uvicorn on a socket bound here (so a taken port is an MmcliError now, not uvicorn's sys.exit), with
    its signal handling off: whoever runs ``serve()`` in a thread stops it with ``stop()``."""

    def __init__(
        self,
        engine: Engine,
        host: str = "127.0.0.1",
        port: int = 8000,
        token: str | None = None,
        *,
        access_log: bool = False,
        **settings: Any,
    ) -> None:
        import uvicorn

        if not token and not is_loopback(host):
            raise UsageError(
                f"binding {host} needs --token or MMCLI_TOKEN", "or bind 127.0.0.1 (the default)"
            )
        self.app = make_app(engine, token, **settings)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.sock = socket.create_server((host.strip("[]"), port), family=family)
        except OSError as exc:
            raise MmcliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            interface="asgi3",
            lifespan="off",
            log_config=None,
            access_log=access_log,
            http="h11",
            ws="none",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=10,
        )

        class Server(uvicorn.Server):
            def capture_signals(self) -> Any:  # the serve command owns the signals
                import contextlib

                return contextlib.nullcontext()

        self.server = Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve(self) -> None:
        """Serve until ``stop()`` (blocks: run it in a thread of its own)."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.app.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def stop(self, now: bool = False, wait: float | None = 30.0) -> None:
        """Stop accepting; finish the requests in flight (``now``: drop them). With ``start``'s thread,
        wait up to ``wait`` seconds for it to end."""
        self.server.should_exit = True
        if now:
            self.server.force_exit = True
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(wait)


def start(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    **options: Any,
) -> HttpServer:
    """Serve in a thread of its own; return once it accepts connections (``stop()`` ends it)."""
    server = HttpServer(engine, host, port, token, max_body=max_body, **options)
    server.thread = threading.Thread(target=server.serve, name="mmcli-serve-http", daemon=True)
    server.thread.start()
    while not server.started:
        if not server.thread.is_alive():
            raise MmcliError(f"the HTTP server on {server.url} did not start")
        server.thread.join(0.01)
    return server


def serve_http(
    engine: Engine, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **options: Any
) -> None:
    """Serve the HTTP API in this thread until stopped (see ``HttpServer`` to stop it from another)."""
    HttpServer(engine, host, port, token, **options).serve()
