"""The client's side of ``mmcli serve``: find this user's running server (``connect``), greet it, send it
requests and match their answers (``Remote``). A Job's run through it is ``run.remote.offload``. Nothing here
imports torch or transformers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mmcli.errors import MmcliError
from mmcli.run.remote import paths, protocol, wire
from mmcli.run.remote.work import ImageInput, ItemResult, Limits, ModelKey, RunResult
from mmcli.version import __version__

if TYPE_CHECKING:
    from mmcli.run.task import Task

HELLO_TIMEOUT = 2.0


class ServerGone(MmcliError):
    """The server closed the connection in the middle of a request (it was stopped or it died)."""


class Remote:
    """One connection to a server. Thread-safe: requests from several threads are matched by id."""

    def __init__(self, sock: socket.socket, hello: dict[str, Any]) -> None:
        self.sock = sock
        self.stream = sock.makefile("rb")
        self.pid: int = int(hello.get("pid") or 0)
        self.version = str(hello.get("version"))
        self.socket_path = str(hello.get("socket"))
        self.device = "-"
        self.dtype = "-"
        self.cache_hits = 0
        self.cache_misses = 0
        self._next = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], timeout: float | None = HELLO_TIMEOUT) -> Remote:
        """Connect and greet; OSError when nothing answers there (in ``timeout`` seconds)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            with contextlib.suppress(BrokenPipeError):  # a refusal is sent at once: read it below
                protocol.send(sock, {"id": 0, "op": "hello"})
            stream = sock.makefile("rb")
            answer = protocol.recv(stream)
        except (OSError, protocol.ProtocolError) as exc:
            sock.close()
            raise OSError(f"{exc}") from exc
        if answer is None:
            sock.close()
            raise OSError("the server closed the connection")
        header = answer[0]
        if not header.get("ok"):
            sock.close()
            protocol.raise_error(header.get("error") or {})
        sock.settimeout(None)
        remote = cls(sock, header)
        remote.stream = stream
        return remote

    # -- requests -------------------------------------------------------------------------------------
    def send(self, header: dict[str, Any], blobs: list[bytes] | None = None) -> int:
        with self._send_lock:
            self._next += 1
            ident = self._next
            try:
                protocol.send(self.sock, {**header, "id": ident}, blobs or [])
            except OSError as exc:
                raise self._gone() from exc
        return ident

    def receive(self, ident: int) -> dict[str, Any]:
        """The answer to request ``ident``; the MmcliError it reports is raised here."""
        while True:
            with self._recv_lock:
                if ident in self._answers:
                    answer = self._answers.pop(ident)
                    break
                try:
                    message = protocol.recv(self.stream)
                except (OSError, protocol.ProtocolError) as exc:
                    raise self._gone() from exc
                if message is None:
                    raise self._gone()
                header = message[0]
                if header.get("id") == ident:
                    answer = header
                    break
                self._answers[int(header.get("id") or 0)] = header
        if not answer.get("ok"):
            protocol.raise_error(answer.get("error") or {})
        return answer

    def call(self, header: dict[str, Any], blobs: list[bytes] | None = None) -> dict[str, Any]:
        return self.receive(self.send(header, blobs))

    def _gone(self) -> ServerGone:
        return ServerGone(
            f"the mmcli server (pid {self.pid}) went away in the middle of the run",
            "the records written so far are kept: re-run to resume (--no-server runs without it)",
        )

    # -- what a client asks -------------------------------------------------------------------------------
    def describe(self, key: ModelKey) -> dict[str, str]:
        """Load the model there (if it is not loaded yet); its label, device and dtype."""
        model: dict[str, str] = self.call({"op": "describe", "key": asdict(key)})["model"]
        self.device, self.dtype = model["device"], model["dtype"]
        return model

    def leading(self, key: ModelKey, task: Task) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.call(
            {"op": "leading", "key": asdict(key), "task": wire.encode(task)}
        )["records"]
        return records

    def send_run(self, key: ModelKey, task: dict[str, Any], items: list[ImageInput], limits: Limits) -> int:
        blobs: list[bytes] = []
        entries = []
        for item in items:
            entry: dict[str, Any] = {"name": item.name}
            if item.error is not None:
                entry["error"] = item.error
            elif item.data is not None:
                entry["blob"] = len(blobs)
                blobs.append(item.data)
            else:
                entry["path"] = item.path
            if item.content_type:
                entry["content_type"] = item.content_type
            entries.append(entry)
        header = {"op": "run", "key": asdict(key), "task": task, "items": entries, "limits": asdict(limits)}
        return self.send(header, blobs)

    def receive_run(self, ident: int) -> RunResult:
        result = self.receive(ident)["result"]
        self.device, self.dtype = result["device"], result["dtype"]
        self.cache_hits += int(result.get("cache_hits") or 0)
        self.cache_misses += int(result.get("cache_misses") or 0)
        items = [ItemResult(**item) for item in result["items"]]
        return RunResult(items, result["label"], result["device"], result["dtype"])

    def run(self, key: ModelKey, task: Task, items: list[ImageInput], limits: Limits) -> RunResult:
        return self.receive_run(self.send_run(key, wire.encode(task), items, limits))

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call({"op": "status"})["status"]
        return status

    def stop(self) -> None:
        self.call({"op": "stop"})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(warn: Callable[[str], None] | None = None) -> Remote | None:
    """The running server of this user, or None (none answers, or one that is not to be trusted)."""
    path = paths.socket_path()
    reason = paths.untrusted(path)
    if reason:
        if warn:
            warn(f"warning: not using the mmcli server at {path}: {reason}")
        return None
    if not os.path.lexists(path):
        return None
    try:
        remote = Remote.open(path)
    except OSError as exc:
        if warn and not isinstance(exc.__cause__, ConnectionRefusedError | FileNotFoundError):
            warn(f"warning: the mmcli server at {path} does not answer ({exc}); running in this process")
        return None
    except MmcliError as exc:
        if warn:
            warn(f"warning: the mmcli server at {path} refused this process: {exc.message}")
        return None
    if remote.version != __version__:
        if warn:
            warn(
                f"warning: the mmcli server at {path} runs mmcli {remote.version}, this is {__version__}: "
                "running in this process (restart it: mmcli serve --stop)"
            )
        remote.close()
        return None
    return remote
