"""Whole-file output formats that cannot be appended to: json, npy (+ ids file) and parquet.

Each has a writer (from a stream of records, written to FILE.tmp, fsynced, moved over FILE in one step) and a
reader (to take an earlier complete run's FILE back as the start of a resumed run). Used by mmcli.sinks.resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from mmcli.errors import UsageError
from mmcli.sinks.records import Record, _encode, dumps, ids_path_for

ROW_GROUP = 1000  # parquet records per row group, also the read-back batch


# -- atomic replacement -----------------------------------------------------------------------------
def fsync_path(path: str) -> None:
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
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.remove(tmp)
        raise
    fsync_path(os.path.dirname(os.path.abspath(path)))


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
