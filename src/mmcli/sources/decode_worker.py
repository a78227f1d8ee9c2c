"""An isolated decoder process: ``python -m mmcli.sources.decode_worker MEMORY_BYTES``, started by mmcli.sources.decoder.

It decodes untrusted image bytes under an address-space cap (``resource.setrlimit``), so a decoder that
loops, allocates without bound or crashes in C takes down this process only; the parent kills it when it
overruns its time limit and starts another. It imports Pillow, numpy and mmcli.sources.imaging, nothing else.

The protocol on its stdin and stdout (both pipes to the parent), one message each way per job::

    4-byte big-endian length, a JSON header; 8-byte big-endian length, a payload (may be empty)

Requests: {"op": "decode" | "probe", "max_pixels": N, "cpu_s": S, "path": true | false} with the file's
path (OS bytes) or its content as payload. Replies: {"ok": true, "width", "height", "warning"} with the RGB
pixels (decode) or none (probe); {"ok": false, "error": "..."}; {"ok": false, "memory": true} after a
MemoryError (the process then exits). The first message is the process's own: {"ready": true} or
{"ready": false, "error": "..."}. Nothing the C libraries print can reach the parent's terminal: fd 2
goes to a scratch file whose first line becomes the job's warning; fd 1 goes to /dev/null.
"""

from __future__ import annotations

import json
import os
import select
import struct
import sys
import tempfile
import time
from typing import Any

HEADER = struct.Struct(">I")
PAYLOAD = struct.Struct(">Q")
MAX_HEADER = 1 << 20
PLUGINS_ENV = "MMCLI_PILLOW_PLUGINS"  # comma-separated modules each decoder imports (pillow_heif...)
WARNING_CHARS = 200


class Closed(Exception):
    """The other end of the pipe went away (EOF before a whole message)."""


class Overrun(Exception):
    """The deadline passed before a whole message arrived."""


def send(fd: int, header: dict[str, Any], payload: bytes | memoryview = b"") -> None:
    head = json.dumps(header).encode("utf-8")
    write_all(fd, HEADER.pack(len(head)) + head + PAYLOAD.pack(len(payload)))
    if len(payload):
        write_all(fd, payload)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view) :]


def receive(fd: int, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
    """One message; ``deadline`` (time.monotonic()) raises Overrun when passed, Closed on EOF."""
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size, deadline))
    if size > MAX_HEADER:
        raise Closed(f"a header of {size} bytes")
    header = json.loads(read_exact(fd, size, deadline))
    (length,) = PAYLOAD.unpack(read_exact(fd, PAYLOAD.size, deadline))
    return header, read_exact(fd, length, deadline)


def read_exact(fd: int, n: int, deadline: float | None = None) -> bytes:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise Overrun
        count = os.readv(fd, [view[got:]])
        if count == 0:
            raise Closed("end of file")
        got += count
    return bytes(buffer)


# -- the process ------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # a stray print cannot corrupt the protocol
    scratch = tempfile.TemporaryFile()  # noqa: SIM115 - held for the life of the process
    os.dup2(scratch.fileno(), 2)  # libtiff and friends write here, not to the user's terminal
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        imaging = _start(int(argv[1]) if len(argv) > 1 else 0)
    except Exception as exc:
        send(out, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    send(out, {"ready": True})
    while True:
        try:
            header, payload = receive(0)
        except Closed:
            return 0
        reply, pixels = _job(imaging, header, payload)
        reply["warning"] = reply.get("warning") or _c_warning(2)
        send(out, reply, pixels)
        if reply.get("memory"):
            return 0


def _start(memory: int) -> Any:
    import importlib
    import resource

    from mmcli.sources import imaging

    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(name)
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return imaging


def _job(imaging: Any, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
    import io
    import resource

    from mmcli.errors import InputError

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    used = int(cpu.ru_utime + cpu.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + int(header.get("cpu_s", 60)) + 5  # a backstop should the parent be gone: SIGXCPU
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard < 0 else min(soft, hard), hard))
    source: Any = os.fsdecode(payload) if header.get("path") else io.BytesIO(payload)
    max_pixels = int(header["max_pixels"])
    try:
        if header["op"] == "probe":
            width, height = imaging.probe(source, max_pixels)
            return {"ok": True, "width": width, "height": height}, b""
        image, notes = imaging.decode(source, max_pixels)
        warning = _short(notes[0]) if notes else None
        return {"ok": True, "width": image.width, "height": image.height, "warning": warning}, image.tobytes()
    except MemoryError:
        return {"ok": False, "memory": True}, b""
    except InputError as exc:
        return {"ok": False, "error": str(exc)}, b""
    except Exception as exc:
        return {"ok": False, "error": imaging.describe(exc)}, b""


def _c_warning(fd: int) -> str | None:
    """The first line a C library printed during the job, then the scratch file is emptied."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return None
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, min(size, 4096)).decode("utf-8", "replace")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return _short(line) or None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= WARNING_CHARS else text[: WARNING_CHARS - 1] + "…"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
