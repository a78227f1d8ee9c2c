"""The record and the writer's interface every sink shares, and the encodings of one record (JSON, CSV).

The lowest module of ``mmcli.sinks``: output (stdout and --output), resume (keyed files) and formats (json,
npy, parquet files) all build on it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import IO, Any

Record = dict[str, Any]


def dumps(record: Any) -> str:
    """One JSON line. Odd bytes in file names (kept by os.fsdecode) come out as \\udcXX escapes."""
    return json.dumps(record, ensure_ascii=False)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


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


def ids_path_for(npy_path: str) -> str:
    base = npy_path[:-4] if npy_path.lower().endswith(".npy") else npy_path
    return base + ".ids.jsonl"
