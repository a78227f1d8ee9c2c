"""Resumable, crash-safe file writers: the output side of `--output FILE` batch jobs.

Every record written to a file carries a "key" (computed by the pipeline). A re-run of the same command
opens the file, repairs a half-written last record, and offers ``done``: the keys of the good (non-error)
records already there. The pipeline skips those inputs and calls ``keep(key)`` instead. On
``close(complete=True)`` the file holds exactly the records written or kept in this run, in call order:
stale records (inputs no longer named, other options, old error records redone) are dropped and the
file is fsynced. ``close(complete=False)`` drops nothing, so a later run can resume again.

jsonl and csv are appended to in place. json, npy and parquet cannot be appended safely, so a run writes
a journal, FILE.partial.jsonl, and a complete close converts it into FILE atomically (FILE.tmp, fsync,
os.replace). A FILE left by an earlier complete run is read back into a fresh journal first.
"""

from __future__ import annotations

import csv
import io
import json
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from mmcli.errors import MmcliError, UsageError
from mmcli.output import Record, Writer, _encode, csv_line, csv_row, dumps, ids_path_for

ROW_GROUP = 1000  # parquet records per row group, also the read-back batch


def journal_path_for(path: str) -> str:
    return path + ".partial.jsonl"


def remove_outputs(path: str, fmt: str) -> None:
    """--overwrite: FILE, its journal (and for npy its ids file) go before anything is written."""
    paths = [path, journal_path_for(path), path + ".tmp"]
    if fmt == "npy":
        paths.append(ids_path_for(path))
    for p in paths:
        with suppress(FileNotFoundError):
            os.remove(p)


class OutputLock:
    """FILE.lock, flock'd for the run: a second mmcli writing the same --output stops at once instead of
    interleaving records. The kernel drops the lock when a process dies (kill -9), so a stale FILE.lock
    never blocks a resume; the file is removed when the run ends."""

    def __init__(self, output: str):
        self.path = output + ".lock"
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks, no guard
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise MmcliError(
                f"--output {output} is being written by another mmcli process"
                + (f" (pid {pid})" if pid else ""),
                "wait for it to finish, or choose another --output",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def open_file_writer(fmt: str, path: str, columns: Sequence[str]) -> Writer:
    if fmt in ("jsonl", "csv"):
        return AppendWriter(path, JsonlCodec() if fmt == "jsonl" else CsvCodec(columns))
    return JournalWriter(fmt, path, columns)


def _is_error(value: Any) -> bool:
    return value not in (None, "")


# -- codecs: one record as bytes, and back ----------------------------------------------------------
class JsonlCodec:
    header: bytes | None = None

    def encode(self, record: Record) -> bytes:
        return _encode(dumps(record)) + b"\n"

    def complete(self, chunk: bytes) -> bool:
        return chunk.endswith(b"\n")

    def parse(self, chunk: bytes) -> tuple[str | None, bool] | None:
        """(key, is_error) of a complete record, or None when the bytes are not one."""
        try:
            record = json.loads(chunk.decode("utf-8"))
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        key = record.get("key")
        return (key if isinstance(key, str) and key else None), _is_error(record.get("error"))


class CsvCodec:
    """The task's columns plus a trailing "key"; a record may span lines (quoted newlines)."""

    def __init__(self, columns: Sequence[str]):
        self.columns = [*columns, "key"]
        self.header = csv_line(self.columns)
        self.error_at = self.columns.index("error") if "error" in columns else None

    def encode(self, record: Record) -> bytes:
        return csv_line(csv_row(self.columns, record))

    def complete(self, chunk: bytes) -> bool:
        return chunk.endswith(b"\n") and chunk.count(b'"') % 2 == 0

    def row(self, chunk: bytes) -> list[str] | None:
        try:
            rows = list(csv.reader(io.StringIO(chunk.decode("utf-8")), strict=True))
        except (ValueError, csv.Error):
            return None
        return rows[0] if len(rows) == 1 else None

    def parse(self, chunk: bytes) -> tuple[str | None, bool] | None:
        row = self.row(chunk)
        if row is None or len(row) != len(self.columns):
            return None
        error = self.error_at is not None and _is_error(row[self.error_at])
        return (row[-1] or None), error


Codec = JsonlCodec | CsvCodec


class KeyedLog:
    """An append-only file of records: scanned and repaired on open, then appended to.

    ``done`` maps to the first good record of each key. Every ``write`` and ``keep`` is remembered as a
    byte range (two int64 arrays: flat memory), so a complete close can lay the records out in call order.
    """

    def __init__(self, path: str, codec: Codec):
        self.path = path
        self.codec = codec
        self.start = 0  # where records begin (after a CSV header)
        self.old_off, self.old_len = array("q"), array("q")
        self.index: dict[str, int] = {}
        self.events_off, self.events_len = array("q"), array("q")
        self.end = self._scan() if os.path.exists(path) else 0
        self.file = open(path, "ab")  # noqa: SIM115 - closed in close()
        if self.end == 0 and codec.header is not None:
            self.file.write(codec.header)
            self.start = self.end = len(codec.header)
        self.done = set(self.index)

    def _scan(self) -> int:
        """Index the complete records; cut a half-written or garbled tail. Returns the new end."""
        good_end = 0
        pos = 0
        parts: list[bytes] = []
        header = self.codec.header
        with open(self.path, "rb") as f:
            for line in f:
                parts.append(line)
                chunk = b"".join(parts) if len(parts) > 1 else line
                if not self.codec.complete(chunk):
                    continue
                at, pos, parts = pos, pos + len(chunk), []
                if header is not None and at == 0:
                    self._check_header(chunk)
                    self.start = good_end = pos
                    continue
                parsed = self.codec.parse(chunk)
                if parsed is None:
                    continue  # garbage: cut if at the end, else dropped by the next complete close
                key, error = parsed
                if key is not None and not error and key not in self.index:
                    self.index[key] = len(self.old_off)
                    self.old_off.append(at)
                    self.old_len.append(len(chunk))
                good_end = pos
            size = f.tell()
        if good_end < size:
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        return good_end

    def _check_header(self, chunk: bytes) -> None:
        assert isinstance(self.codec, CsvCodec)
        if chunk != self.codec.header:
            found = self.codec.row(chunk)
            shown = ",".join(found) if found is not None else "unreadable"
            raise UsageError(
                f"--output {self.path}: its CSV header ({shown}) is not this command's "
                f"({','.join(self.codec.columns)})",
                "use --overwrite to start it afresh, or another file",
            )

    def write(self, record: Record) -> None:
        data = self.codec.encode(record)
        self.file.write(data)
        self.events_off.append(self.end)
        self.events_len.append(len(data))
        self.end += len(data)

    def keep(self, key: str) -> None:
        i = self.index.get(key)
        if i is not None:
            self.events_off.append(self.old_off[i])
            self.events_len.append(self.old_len[i])

    def flush(self, sync: bool = False) -> None:
        self.file.flush()
        if sync:
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()

    def in_order(self) -> bool:
        """True when the file already holds exactly the written and kept records, in call order."""
        at = self.start
        for off, length in zip(self.events_off, self.events_len, strict=True):
            if off != at:
                return False
            at += length
        return at == self.end

    def final(self) -> Iterator[bytes]:
        """The records written or kept in this run, in call order, read back one at a time."""
        self.flush()
        with open(self.path, "rb") as f:
            for off, length in zip(self.events_off, self.events_len, strict=True):
                if f.tell() != off:
                    f.seek(off)
                yield f.read(length)


# -- atomic replacement -----------------------------------------------------------------------------
def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some platforms cannot fsync a directory
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yield PATH.tmp to write; then fsync it and move it over PATH in one step (or remove it on error)."""
    tmp = path + ".tmp"
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_path(os.path.dirname(os.path.abspath(path)))


class LogWriter(Writer):
    """A keyed writer whose records go to a KeyedLog first."""

    keyed = True

    def __init__(self, log: KeyedLog):
        self.log = log
        self.done = log.done
        self.closed = False

    def write(self, record: Record) -> None:
        self.log.write(record)

    def keep(self, key: str) -> None:
        self.log.keep(key)

    def flush(self) -> None:
        self.log.flush()

    def close(self, complete: bool = True) -> None:
        try:
            self._close(complete)
        finally:
            self.release()

    def _close(self, complete: bool) -> None:
        raise NotImplementedError


# -- jsonl and csv: appended in place ---------------------------------------------------------------


class AppendWriter(LogWriter):
    def __init__(self, path: str, codec: Codec):
        super().__init__(KeyedLog(path, codec))

    def _close(self, complete: bool) -> None:
        if self.closed:
            return
        self.closed = True
        log = self.log
        if not complete or log.in_order():
            log.flush(sync=True)
            log.close()
            return
        with replacing(log.path) as tmp, open(tmp, "wb") as out:
            if log.codec.header is not None:
                out.write(log.codec.header)
            for data in log.final():
                out.write(data)
        log.close()


# -- json, npy and parquet: a journal, converted at the end ------------------------------------------
class JournalWriter(LogWriter):
    def __init__(self, fmt: str, path: str, columns: Sequence[str]):
        self.fmt, self.path, self.columns = fmt, path, list(columns)
        journal = journal_path_for(path)
        self.seeded = not os.path.exists(journal) and os.path.exists(path)
        if self.seeded:
            with replacing(journal) as tmp, open(tmp, "wb") as out:
                for record in READERS[fmt](path):
                    out.write(_encode(dumps(record)) + b"\n")
        super().__init__(KeyedLog(journal, JsonlCodec()))

    def _close(self, complete: bool) -> None:
        if self.closed:
            return
        self.closed = True
        log = self.log
        log.flush(sync=True)
        if complete:
            if not (self.seeded and log.in_order()):  # else FILE already holds exactly these records

                def records() -> Iterator[Record]:
                    return (json.loads(data) for data in log.final())

                WRITERS[self.fmt](self.path, records, self.columns, log.final)
            os.remove(log.path)
            _fsync_path(os.path.dirname(os.path.abspath(self.path)))
        log.close()


RecordSource = Callable[[], Iterator[Record]]
LineSource = Callable[[], Iterator[bytes]]


def _write_json(path: str, records: RecordSource, columns: Sequence[str], lines: LineSource) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as out:
        out.write(b"[")
        sep = b"\n"
        for line in lines():
            out.write(sep + line.rstrip(b"\n"))
            sep = b",\n"
        out.write(b"]\n" if sep == b"\n" else b"\n]\n")


def _read_json(path: str) -> Iterator[Record]:
    """Our layout is one record per line; anything else valid JSON is loaded whole."""
    try:
        with open(path, "rb") as f:
            records = [
                json.loads(line.rstrip(b",\r\n")) for line in f if line.strip() not in (b"[", b"]", b"")
            ]
        if not all(isinstance(r, dict) for r in records):
            raise ValueError
    except ValueError:
        try:
            with open(path, "rb") as f:
                records = json.load(f)
        except ValueError as exc:
            raise _unreadable(path, "not a JSON array", exc) from None
    if not isinstance(records, list):
        raise _unreadable(path, "not a JSON array")
    yield from (r for r in records if isinstance(r, dict))


def _unreadable(path: str, what: str, exc: Exception | None = None) -> UsageError:
    detail = f" ({exc})" if exc else ""
    return UsageError(
        f"--output {path} exists but cannot be resumed: {what}{detail}",
        "use --overwrite to start it afresh, or another file",
    )


def _write_npy(path: str, records: RecordSource, columns: Sequence[str], lines: LineSource) -> None:
    """One float32 matrix (error records have no row) plus FILE.ids.jsonl naming each row."""
    import numpy as np

    rows, dim = 0, 0
    for record in records():
        if "embedding" in record:
            rows, dim = rows + 1, len(record["embedding"])
    ids = ids_path_for(path)
    with replacing(ids) as ids_tmp, open(ids_tmp, "wb") as ids_out, replacing(path) as tmp:
        if rows == 0:
            with open(tmp, "wb") as f:
                np.save(f, np.zeros((0, 0), dtype=np.float32))
            return
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
        row = 0
        for record in records():
            if "embedding" not in record:
                continue
            matrix[row] = record["embedding"]
            row += 1
            ident = {k: v for k, v in record.items() if k != "embedding"}
            ids_out.write(_encode(dumps(ident)) + b"\n")
        matrix.flush()
        del matrix


def _read_npy(path: str) -> Iterator[Record]:
    import numpy as np

    try:
        matrix = np.load(path, mmap_mode="r")
        with open(ids_path_for(path), "rb") as f:
            ids = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as exc:
        raise _unreadable(path, "no readable matrix and ids file", exc) from None
    rows = matrix.shape[0] if matrix.ndim == 2 and matrix.size else 0
    if len(ids) != rows:
        raise _unreadable(path, f"{rows} rows but {len(ids)} ids")
    for i, ident in enumerate(ids):
        yield {**ident, "embedding": matrix[i].tolist()}


# -- parquet ----------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        if not value:
            return "list"  # fits a vector or a list of strings
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            return "vector"
        if all(isinstance(v, str) for v in value):
            return "strings"
    return "json"


def _merge(a: str | None, b: str) -> str:
    if a is None or a == b or (a == "list" and b in ("vector", "strings")):
        return b
    if b == "list" and a in ("vector", "strings"):
        return a
    if {a, b} == {"int", "float"}:
        return "float"
    return "text"  # mixed: strings as themselves, the rest as JSON text


def _utf8(text: str) -> str:
    """Parquet strings are UTF-8: odd bytes in file names become \\udcXX text, as in CSV."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _column(kind: str | None, values: list[Any]) -> list[Any]:
    if kind == "json":
        return [None if v is None else _utf8(dumps(v)) for v in values]
    if kind == "text":
        return [v if v is None else _utf8(v if isinstance(v, str) else dumps(v)) for v in values]
    if kind == "str":
        return [v if v is None else _utf8(v) for v in values]
    if kind == "strings":
        return [v if v is None else [_utf8(x) for x in v] for v in values]
    return values


def _write_parquet(path: str, records: RecordSource, columns: Sequence[str], lines: LineSource) -> None:
    """Columns from the records: vectors as list<float32>, lists of strings as list<string>, dicts as
    JSON text (as in CSV), the rest as themselves; ROW_GROUP records to a row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kinds: dict[str, str | None] = {c: None for c in columns}
    for record in records():
        for name, value in record.items():
            if value is not None:
                kinds[name] = _merge(kinds.get(name), _kind(value))
            else:
                kinds.setdefault(name, None)
    if "key" in kinds:
        kinds["key"] = kinds.pop("key")  # last, as in CSV
    types = {
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "vector": pa.list_(pa.float32()),
        "strings": pa.list_(pa.string()),
        "list": pa.list_(pa.string()),
    }
    fields = [
        pa.field(
            name, types.get(kind or "", pa.string()), metadata={b"mmcli": b"json"} if kind == "json" else None
        )
        for name, kind in kinds.items()
    ]
    schema = pa.schema(fields)

    def table(chunk: list[Record]) -> Any:
        arrays = [
            pa.array(_column(kinds[f.name], [r.get(f.name) for r in chunk]), type=f.type) for f in fields
        ]
        return pa.Table.from_arrays(arrays, schema=schema)

    with replacing(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        chunk: list[Record] = []
        for record in records():
            chunk.append(record)
            if len(chunk) == ROW_GROUP:
                writer.write_table(table(chunk))
                chunk = []
        if chunk:
            writer.write_table(table(chunk))


def _read_parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types for a file that is not parquet
        raise _unreadable(path, "not a parquet file", exc) from None
    as_json = {f.name for f in pfile.schema_arrow if f.metadata and f.metadata.get(b"mmcli") == b"json"}
    for batch in pfile.iter_batches(batch_size=ROW_GROUP):
        for row in batch.to_pylist():
            yield {
                k: json.loads(v) if k in as_json and isinstance(v, str) else v
                for k, v in row.items()
                if v is not None  # a missing field is stored as null
            }


READERS: dict[str, Callable[[str], Iterator[Record]]] = {
    "json": _read_json,
    "npy": _read_npy,
    "parquet": _read_parquet,
}
WRITERS: dict[str, Callable[[str, RecordSource, Sequence[str], LineSource], None]] = {
    "json": _write_json,
    "npy": _write_npy,
    "parquet": _write_parquet,
}
