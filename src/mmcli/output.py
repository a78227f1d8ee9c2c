"""Record writers (results to stdout or --output) and the reporter (everything else, to stderr)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from mmcli.errors import UsageError

Record = dict[str, Any]
FORMATS = ("table", "jsonl", "json", "csv", "npy")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".npy": "npy"}


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
    """Base writer: ``write`` records, ``flush`` after each batch, ``close`` at the end."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


class JsonlWriter(Writer):
    def write(self, record: Record) -> None:
        self.stream.write(_encode(dumps(record)) + b"\n")


class JsonWriter(Writer):
    """A JSON array written as it goes, so a crash loses only the closing bracket."""

    def __init__(self, stream: IO[bytes]):
        super().__init__(stream)
        self.count = 0
        self.stream.write(b"[")

    def write(self, record: Record) -> None:
        self.stream.write((b",\n" if self.count else b"\n") + _encode(dumps(record)))
        self.count += 1

    def close(self) -> None:
        self.stream.write(b"\n]\n" if self.count else b"]\n")
        self.flush()


class CsvWriter(Writer):
    """Fixed columns per task; nested values (score tables, vectors) as JSON text."""

    def __init__(self, stream: IO[bytes], columns: Sequence[str]):
        super().__init__(stream)
        self.columns = list(columns)
        self.buffer = io.StringIO()
        self.csv = csv.writer(self.buffer, lineterminator="\n")
        self._emit(self.columns)

    def _emit(self, row: list[Any]) -> None:
        self.csv.writerow(row)
        self.stream.write(_encode(self.buffer.getvalue()))
        self.buffer.seek(0)
        self.buffer.truncate()

    def write(self, record: Record) -> None:
        row = []
        for col in self.columns:
            value = record.get(col, "")
            row.append(dumps(value) if isinstance(value, dict | list) else value)
        self._emit(row)


class TableWriter(Writer):
    """A readable rich table, printed when the run ends (for a terminal)."""

    def __init__(self, stream: IO[bytes], columns: Sequence[str], to_terminal: bool):
        super().__init__(stream)
        self.columns = list(columns)
        self.rows: list[Record] = []
        self.to_terminal = to_terminal

    def write(self, record: Record) -> None:
        self.rows.append(record)

    def close(self) -> None:
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


class NpyWriter(Writer):
    """Embeddings as one float32 .npy matrix plus FILE.ids.jsonl naming each row (same order)."""

    def __init__(self, path: str):
        self.path = path
        self.ids_path = ids_path_for(path)
        super().__init__(open(self.ids_path, "wb"))  # noqa: SIM115 - closed in close()
        self.vectors: list[Any] = []

    def write(self, record: Record) -> None:
        if "embedding" not in record:
            return  # error records go to stderr only: a matrix has no row for them
        self.vectors.append(record["embedding"])
        ident = {k: v for k, v in record.items() if k != "embedding"}
        self.stream.write(_encode(dumps(ident)) + b"\n")

    def close(self) -> None:
        import numpy as np

        matrix = np.asarray(self.vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix.reshape(0, 0)
        tmp = self.path + ".tmp"
        with open(tmp, "wb") as f:
            np.save(f, matrix)
        os.replace(tmp, self.path)
        self.stream.close()


def ids_path_for(npy_path: str) -> str:
    base = npy_path[:-4] if npy_path.lower().endswith(".npy") else npy_path
    return base + ".ids.jsonl"


def open_writer(fmt: str, output: str | None, columns: Sequence[str]) -> Writer:
    if fmt == "npy":
        if not output:
            raise UsageError("--format npy needs --output FILE.npy (a matrix is not for a terminal)")
        return NpyWriter(output)
    stream: IO[bytes]
    if output and output != "-":
        parent = Path(output).parent
        if not parent.exists():
            raise UsageError(f"--output {output}: the directory {parent} does not exist")
        stream = open(output, "wb")  # noqa: SIM115 - closed by the caller through Writer.close
    else:
        stream = sys.stdout.buffer
    if fmt == "jsonl":
        return JsonlWriter(stream)
    if fmt == "json":
        return JsonWriter(stream)
    if fmt == "csv":
        return CsvWriter(stream, columns)
    return TableWriter(stream, columns, to_terminal=stream is sys.stdout.buffer and sys.stdout.isatty())


class Reporter:
    """Warnings and the run summary, on stderr only. Counts what was done and what failed."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.done = 0
        self.failed = 0
        self.started = time.perf_counter()

    def warn(self, message: str) -> None:
        if not self.quiet:
            sys.stderr.write(f"mmcli: {message}\n")
            sys.stderr.flush()

    def input_failed(self, name: str, error: str) -> None:
        self.failed += 1
        self.warn(f"skipping {name}: {error}")

    def summary(self, task: str, device: str, dtype: str) -> None:
        elapsed = time.perf_counter() - self.started
        total = self.done + self.failed
        rate = total / elapsed if elapsed > 0 else 0.0
        failed = f", {self.failed} failed" if self.failed else ""
        self.warn(
            f"{task}: {self.done} done{failed} in {elapsed:.1f} s ({rate:.1f} items/s) on {device}, {dtype}"
        )
