"""A pool of isolated decoder processes (mmcli.sources.decode_worker): untrusted bytes never meet Pillow in mmcli's
own process.

Each process has a memory cap (address space, ``--decode-memory``) and each image a time limit
(``--decode-timeout``). A process that crashes (SIGSEGV, abort), runs out of memory or overruns is replaced,
and that input alone gets an error record that names the cause; the run goes on. Images come back as RGB
pixels of at most ``imaging.MAX_DECODED_PIXELS``, so the memory in flight is bounded: at most one decoded
image per loader thread, besides each process's cap.

Thread-safe: each loader thread takes an idle process for one job and gives it back. The processes start
in a session of their own (a Ctrl-C in the terminal reaches mmcli, which finishes its batch, not them) and
exit when mmcli closes their stdin, or dies.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mmcli.errors import InputError, MmcliError
from mmcli.sources import decode_worker as wire
from mmcli.sources.limits import DEFAULT_DECODE_MEMORY, DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS, size_text

START_TIMEOUT = 30.0  # seconds for a new process to import Pillow and say it is ready


@dataclass(frozen=True)
class Decoded:
    image: Image.Image
    warning: str | None = None


class _Process:
    """One decoder process and its pipes."""

    def __init__(self, memory: int):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mmcli.sources.decode_worker", str(memory)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                bufsize=0,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            raise MmcliError(f"cannot start an image decoder process: {exc.strerror or exc}") from exc
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.to_fd = self.proc.stdin.fileno()
        self.from_fd = self.proc.stdout.fileno()
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        try:
            header, _ = wire.receive(self.from_fd, time.monotonic() + START_TIMEOUT)
        except (wire.Closed, wire.Overrun, ValueError) as exc:
            self.kill()
            raise MmcliError(f"the image decoder process did not start ({self.cause() or exc})") from None
        if not header.get("ready"):
            self.kill()
            raise MmcliError(f"the image decoder process did not start: {header.get('error')}")
        self.ready = True

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: nothing it started survives
            except OSError:
                self.proc.kill()
        self.proc.wait()
        self.close()

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def cause(self) -> str | None:
        """Why the process ended, once it has (None while it runs)."""
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        if code < 0:
            name = signal.Signals(-code).name
            if name == "SIGXCPU":
                return "cpu"
            return name
        return f"exit status {code}"


class Decoders:
    """Up to ``size`` decoder processes; ``decode`` and ``probe`` are safe to call from many threads."""

    def __init__(
        self, size: int = 1, memory: int = DEFAULT_DECODE_MEMORY, timeout: float = DEFAULT_DECODE_TIMEOUT
    ):
        self.size = max(1, size)
        self.memory = memory
        self.timeout = timeout
        self._idle: queue.LifoQueue[_Process] = queue.LifoQueue()
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False
        self.replaced = 0  # processes killed or lost and replaced, for the summary and the tests

    # -- public ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start every process now (they import Pillow while the model loads); no waiting."""
        with self._lock:
            while self._count < self.size:
                self._idle.put(_Process(self.memory))
                self._count += 1

    def decode(
        self, path: str | None = None, data: bytes | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> Decoded:
        """A local file (by path: the process reads it) or a file's bytes, decoded to bounded RGB."""
        header, pixels = self._run("decode", path, data, max_pixels)
        size = (int(header["width"]), int(header["height"]))
        image = Image.frombuffer("RGB", size, pixels, "raw", "RGB", 0, 1)
        return Decoded(image, header.get("warning"))

    def probe(
        self, path: str | None = None, data: bytes | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[int, int]:
        """The size in the header, with the limits checked; no pixels decoded."""
        header, _ = self._run("probe", path, data, max_pixels)
        return int(header["width"]), int(header["height"])

    def close(self) -> None:
        with self._lock:
            self._closed = True
        while True:
            try:
                process = self._idle.get_nowait()
            except queue.Empty:
                return
            process.close()  # EOF on its stdin: it exits by itself
            try:
                process.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()

    def __enter__(self) -> Decoders:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- one job --------------------------------------------------------------------------------------
    def _run(
        self, op: str, path: str | None, data: bytes | None, max_pixels: int
    ) -> tuple[dict[str, Any], bytes]:
        process = self._acquire()
        try:
            header, payload = self._exchange(process, op, path, data, max_pixels)
        except BaseException:
            self._lose(process)
            raise
        if header.get("memory"):
            self._lose(process)
            raise InputError(f"the decoder needed more than {size_text(self.memory)} of memory")
        self._release(process)
        if not header.get("ok"):
            raise InputError(str(header.get("error") or "cannot decode"))
        return header, payload

    def _exchange(
        self, process: _Process, op: str, path: str | None, data: bytes | None, max_pixels: int
    ) -> tuple[dict[str, Any], bytes]:
        process.wait_ready()
        request = {"op": op, "max_pixels": max_pixels, "cpu_s": self.timeout, "path": path is not None}
        payload = os.fsencode(path) if path is not None else (data or b"")
        deadline = time.monotonic() + self.timeout
        try:
            wire.send(process.to_fd, request, payload)
            return wire.receive(process.from_fd, deadline)
        except wire.Overrun:
            raise InputError(f"decoding took longer than {self.timeout:g} s") from None
        except (wire.Closed, OSError, ValueError):
            cause = process.cause()
            if cause == "cpu":
                raise InputError(f"decoding took longer than {self.timeout:g} s") from None
            if cause in ("SIGKILL", None):
                raise InputError("the decoder was killed (out of memory?)") from None
            if cause.startswith("SIG"):
                raise InputError(f"the decoder crashed: {cause}") from None
            raise InputError(f"the decoder stopped: {cause}") from None

    # -- the pool ---------------------------------------------------------------------------------------
    def _acquire(self) -> _Process:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise MmcliError("the image decoders are closed")
            if self._count < self.size:
                self._count += 1
                try:
                    return _Process(self.memory)
                except BaseException:
                    self._count -= 1
                    raise
        return self._idle.get()

    def _release(self, process: _Process) -> None:
        with self._lock:
            closed = self._closed
        if closed:
            process.close()
            return
        self._idle.put(process)

    def _lose(self, process: _Process) -> None:
        """Kill a process that failed or overran and put a fresh one in its place (a thread may be waiting
        in ``_acquire`` for it)."""
        process.kill()
        with self._lock:
            self.replaced += 1
            if self._closed:
                self._count -= 1
                return
        try:
            self._idle.put(_Process(self.memory))
        except BaseException:
            with self._lock:
                self._count -= 1
            raise


_shared: dict[tuple[int, float], Decoders] = {}
_shared_lock = threading.Lock()


def shared(memory: int = DEFAULT_DECODE_MEMORY, timeout: float = DEFAULT_DECODE_TIMEOUT) -> Decoders:
    """One decoder process for this whole process and these limits (``inputs.load_image``, the Ray
    engine's decode stage); closed at exit."""
    with _shared_lock:
        pool = _shared.get((memory, timeout))
        if pool is None:
            import atexit

            pool = _shared[memory, timeout] = Decoders(1, memory, timeout)
            atexit.register(pool.close)
        return pool
