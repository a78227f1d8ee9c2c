"""mmcli serve: keep models loaded; the CLI sends its work here by itself (see mmcli.server)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mmcli.errors import EXIT_FATAL, EXIT_OK, MmcliError, UsageError

if TYPE_CHECKING:
    from mmcli.server.engine import Engine
    from mmcli.server.unix import UnixServer

SERVER = "Server"
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, option: str) -> float:
    """ "5m", "300", "90s", "1h", "5ms" -> seconds."""
    match = DURATION.match(text)
    if not match:
        raise UsageError(f"{option} {text!r} is not a duration: write 300, 90s, 5m or 1h")
    unit = match.group(2).lower() if match.group(2) else None
    return float(match.group(1)) * UNITS[unit]


SocketPath = Annotated[
    Path | None,
    typer.Option("--socket", help="The Unix socket [default: $MMCLI_SOCKET, else under $XDG_RUNTIME_DIR]."),
]
Http = Annotated[
    str | None,
    typer.Option(
        "--http", help="Also serve the HTTP API on HOST:PORT (needs mmcli\\[serve]).", show_default=False
    ),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MMCLI_TOKEN",
        help="Bearer token the HTTP API requires (needed off loopback) [env: MMCLI_TOKEN].",
        show_default=False,
        show_envvar=False,
    ),
]
KeepAlive = Annotated[
    str, typer.Option("--keep-alive", help="Unload a model this long after its last request (0: never).")
]
MaxModels = Annotated[
    int,
    typer.Option("--max-models", min=1, help="Models loaded at once; the least recently used goes first."),
]
BatchWait = Annotated[
    str, typer.Option("--batch-wait", help="Longest a request waits for others to share its forward pass.")
]
Preload = Annotated[
    list[str] | None,
    typer.Option("--preload", help="Load this model at start (repeatable).", show_default=False),
]
MaxBody = Annotated[int, typer.Option("--max-body-mb", min=1, help="Largest HTTP request body, in MiB.")]
Status = Annotated[bool, typer.Option("--status", help="Show the running server (exit 1 when none answers).")]
JsonOut = Annotated[bool, typer.Option("--json", help="With --status: print it as JSON.")]
Stop = Annotated[bool, typer.Option("--stop", help="Stop the running server.")]


def serve(
    socket_path: SocketPath = None,
    http: Http = None,
    token: Token = None,
    keep_alive: KeepAlive = "5m",
    max_models: MaxModels = 2,
    batch_wait: BatchWait = "5ms",
    preload: Preload = None,
    max_body: MaxBody = 64,
    status: Status = False,
    json_out: JsonOut = False,
    stop: Stop = False,
) -> int:
    """Keep models loaded for the CLI (which uses the server by itself) and for HTTP clients.

    Runs in the foreground (systemd, a container, or &). Examples:
      mmcli serve &                      then: mmcli classify photo.jpg --labels cat,dog
      mmcli serve --http 127.0.0.1:8765  also an HTTP API (OpenAI-compatible /v1/embeddings, /v1/chat/completions)
      mmcli serve --status | --stop
    """
    from mmcli.run.remote import paths

    path = socket_path.expanduser() if socket_path else paths.socket_path()
    if status and stop:
        raise UsageError("--status and --stop cannot be used together")
    if status:
        return show_status(path, json_out)
    if stop:
        return stop_server(path)
    alive = parse_duration(keep_alive, "--keep-alive")
    wait = parse_duration(batch_wait, "--batch-wait")
    if wait > 1.0:
        raise UsageError(f"--batch-wait {batch_wait} is over 1 s: requests would wait that long for company")
    listen = parse_http(http, token) if http else None
    return run_server(path, listen, token, alive, max_models, wait, list(preload or []), max_body << 20)


def parse_http(value: str, token: str | None) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--http {value!r}: write HOST:PORT, e.g. 127.0.0.1:8765")
    from mmcli.run.remote.paths import is_loopback

    if not token and not is_loopback(host):
        raise UsageError(
            f"--http {value}: serving beyond this machine needs a token",
            "pass --token TOKEN (or set MMCLI_TOKEN); clients send it as 'Authorization: Bearer TOKEN'",
        )
    return host, int(port)


def log(line: str) -> None:
    try:
        sys.stderr.write(f"mmcli serve: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def run_server(
    path: Path,
    listen: tuple[str, int] | None,
    token: str | None,
    keep_alive: float,
    max_models: int,
    batch_wait: float,
    preload: list[str],
    max_body: int,
) -> int:
    from mmcli.server.engine import Engine

    engine = Engine(keep_alive=keep_alive, max_models=max_models, batch_wait=batch_wait, log=log)
    server, web = start_serving(engine, path, listen, token, preload, max_body)
    stopping: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stopping and name == "SIGINT":
            raise KeyboardInterrupt
        stopping.append(name)
        server.stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    where = f" and {web.url}" if web is not None else ""
    log(
        f"listening on {path}{where} (pid {os.getpid()}; keep-alive {keep_alive:g} s, up to {max_models} models)"
    )
    try:
        server.serve_forever()
        log(f"{stopping[0] if stopping else 'stop'}: finishing the requests in flight")
        server.close()  # no new connections
        if web is not None:
            web.stop()
        server.drain()
    except KeyboardInterrupt:
        log("stopped at once (Ctrl-C twice)")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.close()
        engine.close()
    log("stopped")
    return EXIT_OK


def start_serving(
    engine: Engine,
    path: Path,
    listen: tuple[str, int] | None,
    token: str | None,
    preload: list[str],
    max_body: int,
) -> tuple[UnixServer, Any]:
    """Bind the socket (and the HTTP face, when ``listen``), start the decoders, load the --preload models;
    the Unix server and the HTTP one (or None). A failure closes what was opened."""
    from mmcli.server.engine import ModelKey
    from mmcli.server.unix import UnixServer

    http_url = f"http://{listen[0]}:{listen[1]}" if listen else None
    server = UnixServer(engine, path, log, http=http_url)
    web: Any = None
    try:
        server.bind()
        if listen is not None:
            import importlib

            http_face: Any = importlib.import_module("mmcli.server.http")  # the optional extra mmcli[serve]
            web = http_face.start(engine, listen[0], listen[1], token, max_body, log=log)
            server.http = web.url  # the port bound (--http 127.0.0.1:0 picks one)
        engine.warm_decoders()
        for name in preload:
            engine.describe(ModelKey(name))
    except BaseException:
        server.close()
        engine.close()
        raise
    return server, web


def _connect(path: Path) -> Any:
    from mmcli.run.remote import paths
    from mmcli.run.remote.client import Remote

    reason = paths.untrusted(path)
    if reason:
        raise MmcliError(f"will not talk to {path}: {reason}")
    try:
        return Remote.open(path)
    except OSError:
        return None


def show_status(path: Path, as_json: bool) -> int:
    remote = _connect(path)
    if remote is None:
        sys.stderr.write(f"mmcli: no mmcli server answers on {path}\n")
        return EXIT_FATAL
    try:
        state = remote.status()
    finally:
        remote.close()
    if as_json:
        sys.stdout.write(json.dumps(state, indent=2) + "\n")
        return EXIT_OK
    lines = [
        f"mmcli serve: pid {state['pid']}, up {state['uptime_s']:.0f} s, socket {state.get('socket')}"
        + (f", http {state['http']}" if state.get("http") else ""),
        f"keep-alive {state['keep_alive_s'] or 'forever'} s, up to {state['max_models']} models, "
        f"{state['forward_passes']} forward passes",
    ]
    if not state["models"]:
        lines.append("no model loaded")
    for m in state["models"]:
        lines.append(
            f"  {m['label']}  {m['device']} {m['dtype']}  {m['memory_bytes'] / 2**20:.0f} MiB  "
            f"idle {m['idle_s']:.0f} s  {m['requests']} requests"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def stop_server(path: Path) -> int:
    remote = _connect(path)
    if remote is None:
        sys.stderr.write(f"mmcli: no mmcli server answers on {path}\n")
        return EXIT_FATAL
    pid = remote.pid
    try:
        remote.stop()
    finally:
        remote.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    sys.stderr.write(f"mmcli: stopped the mmcli server (pid {pid})\n")
    return EXIT_OK


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False  # exited; its parent has not collected it yet
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
