"""The Unix-socket face of ``mmcli serve``: what the CLI and ``mmcli.Client`` talk to.

One server per socket: a lock file beside it (``mmcli.sock.lock``, holding the pid) is held for the
server's life, so a second ``mmcli serve`` names the first and refuses. Only the user's own processes are
served: the socket is 0600 in a 0700 directory, and each connection's peer uid (SO_PEERCRED) is checked.
Each connection has a reader thread; each request runs in a thread of its own, so a client may keep a few
in flight, and the answers carry the request's id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any

from mmcli.errors import MmcliError, UsageError
from mmcli.run.remote import paths, protocol, wire
from mmcli.run.remote.work import ImageInput, Limits, ModelKey
from mmcli.server.engine import Engine
from mmcli.version import __version__

IN_FLIGHT = 4  # requests one connection may have running at once


class UnixServer:
    def __init__(self, engine: Engine, path: Path, log: Any, http: str | None = None) -> None:
        self.engine = engine
        self.path = path
        self.log = log
        self.http = http
        self.stopping = threading.Event()
        self._sock: socket.socket | None = None
        self._lock_fd: int | None = None
        self._inode: int | None = None
        self._active = 0
        self._active_cond = threading.Condition()

    # -- start and stop -------------------------------------------------------------------------------
    def bind(self) -> None:
        paths.prepare_dir(self.path)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise UsageError(
                f"another mmcli serve (pid {pid}) is serving on {self.path}",
                "mmcli serve --status shows it; mmcli serve --stop stops it",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket left by a server that was killed: nobody holds the lock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(self.path))
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock

    def serve_forever(self) -> None:
        assert self._sock is not None
        while not self.stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self.stopping.is_set():
                    break
                raise
            conn.settimeout(None)
            threading.Thread(
                target=self._connection, args=(conn,), name="mmcli-serve-conn", daemon=True
            ).start()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the requests in flight to be answered (SIGTERM); True when none is left."""
        with self._active_cond:
            return self._active_cond.wait_for(lambda: self._active == 0, timeout)

    def close(self) -> None:
        self.stopping.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- one connection -------------------------------------------------------------------------------
    def _connection(self, conn: socket.socket) -> None:
        client = object()
        send_lock = threading.Lock()
        slots = threading.Semaphore(IN_FLIGHT)
        try:
            refused = peer_refused(conn)
            if refused:
                self.log(f"refused a connection: {refused}")
                with contextlib.suppress(OSError):
                    protocol.send(
                        conn, {"id": None, "ok": False, "error": {"type": "UsageError", "message": refused}}
                    )
                return
            stream = conn.makefile("rb")
            while True:
                try:
                    message = protocol.recv(stream)
                except (protocol.ProtocolError, OSError) as exc:
                    self.log(f"dropped a connection: {exc}")
                    return
                if message is None:
                    return
                slots.acquire()
                with self._active_cond:
                    self._active += 1
                threading.Thread(
                    target=self._request,
                    args=(conn, send_lock, slots, client, *message),
                    name="mmcli-serve-request",
                    daemon=True,
                ).start()
        finally:
            self.engine.forget(client)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)

    def _request(
        self,
        conn: socket.socket,
        send_lock: threading.Lock,
        slots: threading.Semaphore,
        client: object,
        header: dict[str, Any],
        blobs: list[bytes],
    ) -> None:
        reply: dict[str, Any] = {"id": header.get("id")}
        try:
            reply |= {"ok": True} | self._answer(header, blobs, client)
        except MmcliError as exc:
            reply |= {"ok": False, "error": protocol.error_fields(exc)}
        except Exception as exc:
            self.log(f"a request failed: {type(exc).__name__}: {exc}")
            reply |= {"ok": False, "error": protocol.error_fields(exc)}
        try:
            with send_lock:
                protocol.send(conn, reply)
        except OSError:
            pass  # the client went away (Ctrl-C): its work is dropped
        finally:
            slots.release()
            with self._active_cond:
                self._active -= 1
                self._active_cond.notify_all()

    def _answer(self, header: dict[str, Any], blobs: list[bytes], client: object) -> dict[str, Any]:
        op = header.get("op")
        if op == "hello":
            return {"pid": os.getpid(), "version": __version__, "socket": os.fspath(self.path)}
        if op == "status":
            return {"status": self.engine.status() | {"socket": os.fspath(self.path), "http": self.http}}
        if op == "stop":
            self.log("asked to stop")
            self.stopping.set()
            return {"pid": os.getpid()}
        if self.stopping.is_set():
            raise MmcliError(
                "the mmcli server is stopping", "re-run: the rest runs without it, or in a new one"
            )
        if op == "describe":
            return {"model": self.engine.describe(model_key(header.get("key")))}
        if op == "leading":
            key, task = model_key(header.get("key")), wire.decode(header.get("task"))
            return {"records": self.engine.leading(key, task)}
        if op == "run":
            key, task = model_key(header.get("key")), wire.decode(header.get("task"))
            items = image_inputs(header.get("items"), blobs)
            result = self.engine.run(key, task, items, limits(header.get("limits")), client)
            return {
                "result": {
                    "label": result.label,
                    "device": result.device,
                    "dtype": result.dtype,
                    "cache_hits": result.cache_hits,
                    "cache_misses": result.cache_misses,
                    "items": [vars(item) for item in result.items],
                }
            }
        raise UsageError(f"unknown request {op!r}")


def peer_refused(conn: socket.socket) -> str | None:
    """Why a connection is not served: its process belongs to another user (Linux: SO_PEERCRED)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None  # elsewhere the socket's mode (0600) and its directory's (0700) keep others out
    size = struct.calcsize("3i")
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option, size))
    if uid != os.getuid():
        return f"process {pid} belongs to uid {uid}; this server serves uid {os.getuid()} only"
    return None


def _dataclass_from(cls: type, value: Any, what: str) -> Any:
    if not isinstance(value, dict):
        raise UsageError(f"the request's {what} is not a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise UsageError(f"the request's {what} has unknown fields: {', '.join(unknown)}")
    try:
        return cls(**value)
    except TypeError as exc:
        raise UsageError(f"the request's {what}: {exc}") from None


def model_key(value: Any) -> ModelKey:
    key = _dataclass_from(ModelKey, value, "model")
    if not isinstance(key.name, str) or not key.name:
        raise UsageError("the request names no model")
    return key


def limits(value: Any) -> Limits:
    return _dataclass_from(Limits, value or {}, "limits")


def image_inputs(value: Any, blobs: list[bytes]) -> list[ImageInput]:
    if not isinstance(value, list):
        raise UsageError("the request's items are not a list")
    items = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UsageError("an item of the request has no name")
        blob = entry.get("blob")
        if blob is not None and not (isinstance(blob, int) and 0 <= blob < len(blobs)):
            raise UsageError(f"item {entry['name']!r} names no payload")
        items.append(
            ImageInput(
                name=entry["name"],
                data=blobs[blob] if blob is not None else None,
                path=entry.get("path") if isinstance(entry.get("path"), str) else None,
                error=entry.get("error") if isinstance(entry.get("error"), str) else None,
                content_type=entry.get("content_type")
                if isinstance(entry.get("content_type"), str)
                else None,
            )
        )
    return items
