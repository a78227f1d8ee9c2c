"""Record writers (results to stdout or --output) and the reporter (everything else, to stderr).

Writers to stdout format records as they come. Writers to a file are *keyed* (see mmcli.sinks.resume): each
record carries a "key", a re-run resumes where an interrupted one stopped, and the file ends up holding
exactly the records of one uninterrupted run.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from mmcli.errors import UsageError
from mmcli.sinks.records import Record as Record
from mmcli.sinks.records import Writer as Writer
from mmcli.sinks.records import _encode as _encode
from mmcli.sinks.records import csv_line as csv_line
from mmcli.sinks.records import csv_row as csv_row
from mmcli.sinks.records import dumps as dumps
from mmcli.sinks.records import ids_path_for as ids_path_for

FORMATS = ("table", "jsonl", "json", "csv", "npy", "parquet")
EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".npy": "npy",
    ".parquet": "parquet",
}
FILE_ONLY = ("npy", "parquet")  # a matrix or a columnar file is not for a terminal


def choose_format(fmt: str | None, output: str | None, allowed: Sequence[str]) -> str:
    if fmt is None and output:
        fmt = EXTENSIONS.get(Path(output).suffix.lower())
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() and not output else "jsonl"
    fmt = fmt.lower()
    if fmt not in allowed:
        raise UsageError(f"--format {fmt} is not available here; choose one of {', '.join(allowed)}")
    return fmt


def _public(record: Record) -> Record:
    """Records on stdout carry no resume key."""
    if "key" not in record:
        return record
    return {k: v for k, v in record.items() if k != "key"}


class JsonlWriter(Writer):
    def write(self, record: Record) -> None:
        self.stream.write(_encode(dumps(_public(record))) + b"\n")


class JsonWriter(Writer):
    """A JSON array written as it goes, so a crash loses only the closing bracket."""

    def __init__(self, stream: IO[bytes]):
        super().__init__(stream)
        self.count = 0
        self.stream.write(b"[")

    def write(self, record: Record) -> None:
        self.stream.write((b",\n" if self.count else b"\n") + _encode(dumps(_public(record))))
        self.count += 1

    def close(self, complete: bool = True) -> None:
        self.stream.write(b"\n]\n" if self.count else b"]\n")
        self.flush()


class CsvWriter(Writer):
    """Fixed columns per task; nested values (score tables, vectors) as JSON text."""

    def __init__(self, stream: IO[bytes], columns: Sequence[str]):
        super().__init__(stream)
        self.columns = list(columns)
        self.stream.write(csv_line(self.columns))

    def write(self, record: Record) -> None:
        self.stream.write(csv_line(csv_row(self.columns, record)))


class TableWriter(Writer):
    """A readable rich table, printed when the run ends (for a terminal)."""

    def __init__(self, stream: IO[bytes], columns: Sequence[str], to_terminal: bool):
        super().__init__(stream)
        self.columns = list(columns)
        self.rows: list[Record] = []
        self.to_terminal = to_terminal

    def write(self, record: Record) -> None:
        self.rows.append(record)

    def close(self, complete: bool = True) -> None:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(show_header=True, header_style="bold")
        for col in self.columns:
            table.add_column(col, overflow="fold", justify="right" if col == "score" else "left")
        for rec in self.rows:
            if "error" in rec:
                cells = [Text(str(rec.get(self.columns[0], "")))]
                cells.append(Text(f"error: {rec['error']}", style="red"))
                cells += [Text("")] * (len(self.columns) - 2)
                table.add_row(*cells)
                continue
            table.add_row(*[_cell(rec.get(col)) for col in self.columns])
        text = io.StringIO()
        console = Console(file=text, force_terminal=self.to_terminal, width=None if self.to_terminal else 120)
        console.print(table)
        self.stream.write(_encode(text.getvalue()))
        self.flush()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def is_stream(output: str | None) -> bool:
    """A stdout-like --output, written straight through with no resume and no lock: none or "-", a
    terminal or other character device, a FIFO or pipe, a socket, /dev/fd/N (/proc), or the very file that
    stdout or stderr already is (``-o /dev/stdout > out.jsonl``)."""
    if not output or output == "-":
        return True
    if "://" in output:
        return False  # a directory URL: the Ray engine's
    try:
        st = os.stat(output)
    except OSError:
        st = None
    if st is not None:
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            return True
        if any(_same_file(st, fd) for fd in (1, 2)):
            return True
    parent = os.path.realpath(os.path.dirname(os.path.abspath(output)))
    return parent == "/proc" or parent.startswith("/proc/")


def _same_file(st: os.stat_result, fd: int) -> bool:
    try:
        other = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def unwritable(output: str, exc: OSError) -> UsageError:
    """One line for an --output that cannot be created or opened (or its lock or journal)."""
    name = os.fsdecode(exc.filename) if exc.filename else output
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENXIO and stat.S_ISFIFO(_mode(output)):
        reason = "nothing is reading this FIFO"
    return UsageError(f"--output {output}: cannot write {name}: {reason}")


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _open_stream(output: str | None) -> IO[bytes]:
    """sys.stdout when ``output`` is stdout itself, else the device, FIFO or descriptor, opened to append.
    A FIFO is opened without blocking: no reader is an error, never a hang."""
    if not output or output == "-":
        return sys.stdout.buffer
    try:
        st = os.stat(output)
        if _same_file(st, sys.stdout.fileno()):
            return sys.stdout.buffer
    except (OSError, ValueError):
        pass  # sys.stdout without a descriptor (captured): not the same
    try:
        if stat.S_ISFIFO(_mode(output)):
            fd = os.open(output, os.O_WRONLY | os.O_NONBLOCK)
            os.set_blocking(fd, True)
            return open(fd, "wb")
        return open(output, "ab")
    except OSError as exc:
        raise unwritable(output, exc) from None


def _check_target(fmt: str, output: str | None) -> bool:
    """The checks that need no writing; True when ``output`` is stdout-like (see ``is_stream``)."""
    stream = is_stream(output)
    if fmt in FILE_ONLY and stream:
        raise UsageError(
            f"--format {fmt} needs --output FILE.{fmt} (a {fmt} file is not for a terminal or pipe)"
        )
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(
                "--format parquet needs pyarrow", "install it with: pip install 'mmcli[parquet]'"
            ) from None
    if stream:
        return True
    assert output is not None
    path = Path(output)
    if not path.parent.exists():
        raise UsageError(f"--output {output}: the directory {path.parent} does not exist")
    if not path.parent.is_dir():
        raise UsageError(f"--output {output}: {path.parent} is not a directory")
    if path.is_dir():
        raise UsageError(f"--output {output} is a directory; name a file")
    return False


def preflight(fmt: str, output: str | None, *, urls: bool = False) -> None:
    """open_writer's checks before any weights load: the format fits the output, the file can be written,
    and no other mmcli writes it. The file's lock is taken now and held (``resume.hold_lock``) until the
    writer takes it over, so a second mmcli on the same --output stops here. ``urls``: a directory URL is
    the Ray engine's to check."""
    if output and "://" in output:
        if urls:
            return
        raise UsageError(f"--output {output}: a URL is written by --engine ray only; name a local file")
    if _check_target(fmt, output):
        if output and output != "-" and not os.path.exists(output):  # /proc/..., /dev/fd/N not open
            raise unwritable(output, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), output))
        return  # opening a FIFO or device has effects (a reader sees EOF): left to open_writer
    if fmt == "table":
        return
    assert output is not None
    from mmcli.sinks import resume

    try:
        resume.hold_lock(output)
        if os.path.exists(output):
            open(output, "ab").close()  # writable? (appending nothing changes nothing)
    except OSError as exc:
        raise unwritable(output, exc) from exc


def open_writer(fmt: str, output: str | None, columns: Sequence[str], *, overwrite: bool = False) -> Writer:
    """A writer for ``fmt``: to stdout (or a stdout-like ``output``, see ``is_stream``), else a keyed,
    resumable file writer (``overwrite`` starts the file afresh instead). A file that cannot be created or
    opened is a UsageError of one line."""
    if _check_target(fmt, output):
        stream = _open_stream(output)
        if fmt == "jsonl":
            return JsonlWriter(stream)
        if fmt == "json":
            return JsonWriter(stream)
        if fmt == "csv":
            return CsvWriter(stream, columns)
        return TableWriter(stream, columns, to_terminal=stream.isatty())
    assert output is not None
    from mmcli.sinks import resume

    try:
        if fmt == "table":
            return TableWriter(open(output, "wb"), columns, to_terminal=False)
        lock = resume.take_lock(output)
        try:
            if overwrite:
                resume.remove_outputs(output, fmt)
            writer = resume.open_file_writer(fmt, output, columns)
        except BaseException:
            lock.release()
            raise
    except OSError as exc:
        raise unwritable(output, exc) from exc
    writer.lock = lock
    return writer
