"""Record writers (results to stdout or --output) and the reporter (everything else, to stderr).

Writers to stdout format records as they come. Writers to a file are *keyed* (see mmcli.resume): each
record carries a "key", a re-run resumes where an interrupted one stopped, and the file ends up holding
exactly the records of one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from mmcli.errors import UsageError

Record = dict[str, Any]
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


def dumps(record: Any) -> str:
    """One JSON line. Odd bytes in file names (kept by os.fsdecode) come out as \\udcXX escapes."""
    return json.dumps(record, ensure_ascii=False)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def choose_format(fmt: str | None, output: str | None, allowed: Sequence[str]) -> str:
    if fmt is None and output:
        fmt = EXTENSIONS.get(Path(output).suffix.lower())
    if fmt is None:
        fmt = "table" if sys.stdout.isatty() and not output else "jsonl"
    fmt = fmt.lower()
    if fmt not in allowed:
        raise UsageError(f"--format {fmt} is not available here; choose one of {', '.join(allowed)}")
    return fmt


class Writer:
    """Base writer: ``write`` records, ``flush`` after each batch, ``close`` at the end.

    ``keyed`` writers (files) resume: ``done`` holds the keys of the good records already in the output,
    ``keep(key)`` keeps one of them, and ``close(complete=True)`` leaves exactly the records written or
    kept in this run, in that order. ``close(complete=False)`` (an interrupted run) drops nothing.
    """

    keyed = False
    lock: Any = None  # resume.OutputLock of a file output, released by release()

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.done: set[str] = set()

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def keep(self, key: str) -> None:
        """Nothing to keep on a stream: only keyed writers have earlier records."""

    def flush(self) -> None:
        self.stream.flush()

    def close(self, complete: bool = True) -> None:
        self.flush()

    def release(self) -> None:
        """Let other processes write this output again (after close)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


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


def csv_row(columns: Sequence[str], record: Record) -> list[Any]:
    """Fixed columns per task; nested values (score tables, vectors) as JSON text."""
    row = []
    for col in columns:
        value = record.get(col, "")
        row.append(dumps(value) if isinstance(value, dict | list) else value)
    return row


def csv_line(row: Sequence[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return _encode(buffer.getvalue())


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


def ids_path_for(npy_path: str) -> str:
    base = npy_path[:-4] if npy_path.lower().endswith(".npy") else npy_path
    return base + ".ids.jsonl"


def open_writer(fmt: str, output: str | None, columns: Sequence[str], *, overwrite: bool = False) -> Writer:
    """A writer for ``fmt``: to stdout when ``output`` is None or "-", else a keyed, resumable file writer
    (``overwrite`` starts the file afresh instead)."""
    to_file = bool(output) and output != "-"
    if fmt in FILE_ONLY and not to_file:
        raise UsageError(f"--format {fmt} needs --output FILE.{fmt} (a {fmt} file is not for a terminal)")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(
                "--format parquet needs pyarrow", "install it with: pip install 'mmcli[parquet]'"
            ) from None
    if not to_file:
        stream = sys.stdout.buffer
        if fmt == "jsonl":
            return JsonlWriter(stream)
        if fmt == "json":
            return JsonWriter(stream)
        if fmt == "csv":
            return CsvWriter(stream, columns)
        return TableWriter(stream, columns, to_terminal=sys.stdout.isatty())
    assert output is not None
    path = Path(output)
    if not path.parent.exists():
        raise UsageError(f"--output {output}: the directory {path.parent} does not exist")
    if path.is_dir():
        raise UsageError(f"--output {output} is a directory; name a file")
    if fmt == "table":
        return TableWriter(open(output, "wb"), columns, to_terminal=False)
    from mmcli import resume

    lock = resume.OutputLock(output)
    try:
        if overwrite:
            resume.remove_outputs(output, fmt)
        writer = resume.open_file_writer(fmt, output, columns)
    except BaseException:
        lock.release()
        raise
    writer.lock = lock
    return writer
