"""Manifests: the inputs of a very large job listed in a .parquet, .jsonl/.ndjson or .csv file, streamed.

A manifest of 10 million rows never sits in memory: parquet is read in record batches, jsonl and csv line by
line. ``read_manifest`` and ``expand_manifest`` are the public names; ``mmcli.sources.inputs`` knows nothing
of manifests.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from mmcli.errors import UsageError
from mmcli.sources.fetch import is_url
from mmcli.sources.inputs import Item, _expand_one

MANIFEST_COLUMNS = ("path", "url", "input", "image", "file", "filename")
MANIFEST_FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
PARQUET_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class _BadRow:
    where: str  # "line 7", "row 12"
    error: str


def read_manifest(path: str) -> Iterator[str]:
    """The inputs listed in a manifest file, streamed: a 10-million-row manifest never sits in memory.

    The format comes from the extension: ``.parquet`` (read in record batches; needs pyarrow, the
    ``parquet`` extra), ``.jsonl`` / ``.ndjson`` (one JSON object per line) or ``.csv`` (a header row).
    Each row's input is its first cell, of the columns path, url, input, image, file, filename (in that
    order, any case), that is not empty, null or missing; a row with none is a bad row, so every row
    yields one input or one error. URLs and absolute paths are kept as they are; relative paths resolve
    against the manifest's directory, not the current one.

    A bad manifest (missing, unknown format, no input column, pyarrow missing) raises UsageError at once;
    a bad row (a jsonl line that is not a JSON object...) raises UsageError when it is reached
    (``expand_manifest`` makes it an error item instead).
    """
    rows = _manifest_rows(path)

    def values() -> Iterator[str]:
        for row in rows:
            if isinstance(row, _BadRow):
                raise UsageError(f"manifest {path}, {row.where}: {row.error}")
            yield row

    return values()


def expand_manifest(path: str) -> Iterator[Item]:
    """Items from a manifest: URLs as they are, files as given, directories walked as on the command line.

    Relative paths resolve against the manifest's directory. A bad row becomes an error item whose input
    is ``<manifest> line N``; a bad manifest raises UsageError at once (see ``read_manifest``).
    """
    rows = _manifest_rows(path)

    def items() -> Iterator[Item]:
        for row in rows:
            if isinstance(row, _BadRow):
                yield Item(f"{path} {row.where}", row.error)
            else:
                yield from _expand_one(row)

    return items()


def _manifest_rows(path: str) -> Iterator[str | _BadRow]:
    """One resolved input or one bad row per row (blank lines are not rows); the manifest itself is
    checked before returning."""
    kind = MANIFEST_FORMATS.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise UsageError(
            f"cannot tell the format of manifest {path}", "name it .parquet, .jsonl (or .ndjson) or .csv"
        )
    if not os.path.isfile(path):
        raise UsageError(f"manifest not found (or not a file): {path}")
    if kind == "parquet":
        cells = _parquet_cells(path)
    else:
        try:
            f = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
        cells = _csv_cells(f, path) if kind == "csv" else _jsonl_cells(f, path)
    base = os.path.dirname(path)

    def resolved() -> Iterator[str | _BadRow]:
        for cell in cells:
            if isinstance(cell, _BadRow):
                yield cell
            else:
                yield cell if is_url(cell) or os.path.isabs(cell) else os.path.join(base, cell)

    return resolved()


def _input_columns(names: Sequence[str], path: str) -> list[str]:
    """The known input columns the manifest has, in order of preference (the first spelling of each)."""
    lowered = {str(name).strip().lower(): name for name in reversed(names)}
    found = [lowered[wanted] for wanted in MANIFEST_COLUMNS if wanted in lowered]
    if not found:
        raise UsageError(
            f"manifest {path} has no input column (columns found: {', '.join(map(str, names)) or 'none'})",
            f"name the column of paths or URLs one of: {', '.join(MANIFEST_COLUMNS)}",
        )
    return found


def _cell(value: object, where: str) -> str | _BadRow:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _BadRow(where, f"not a path or URL: {value!r:.60}")


def _empty(value: object) -> bool:
    return value is None or (isinstance(value, str | bytes) and not value.strip())


def _pick(values: Iterable[object], where: str) -> str | _BadRow:
    """A row's input: its first input cell that is not empty, null or missing; else a bad row."""
    for value in values:
        if not _empty(value):
            return _cell(value, where)
    return _BadRow(where, "no path or URL (empty, null or missing)")


def _parquet_cells(path: str) -> Iterator[str | _BadRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            "reading a .parquet manifest needs pyarrow", "pip install 'mmcli[parquet]'"
        ) from None
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False)  # no read-ahead: memory stays about one row group
        columns = _input_columns(parquet.schema_arrow.names, path)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"cannot read manifest {path}: {exc}") from exc

    def cells() -> Iterator[str | _BadRow]:
        row = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            for values in zip(*(batch.column(i).to_pylist() for i in range(len(columns))), strict=True):
                row += 1
                yield _pick(values, f"row {row}")

    return cells()


def _csv_cells(f: IO[str], path: str) -> Iterator[str | _BadRow]:
    import csv

    reader = csv.reader(f)
    try:
        header = next(reader, [])
        indexes = [header.index(name) for name in _input_columns(header, path)]
    except BaseException:
        f.close()
        raise

    def cells() -> Iterator[str | _BadRow]:
        with f:
            start = reader.line_num + 1
            for fields in reader:
                if fields:  # a blank line is not a row
                    values = (fields[i] if i < len(fields) else None for i in indexes)
                    yield _pick(values, f"line {start}")
                start = reader.line_num + 1

    return cells()


def _jsonl_cells(f: IO[str], path: str) -> Iterator[str | _BadRow]:
    """Each object's input is the first of the known columns it sets (so rows may differ: some ``url``,
    some ``path``). The first object must have one of them; lines before it that are not objects are
    kept as bad rows."""
    import json

    def parse(number: int, line: str) -> dict | _BadRow | None:
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except ValueError:
            return _BadRow(f"line {number}", "not valid JSON")
        return obj if isinstance(obj, dict) else _BadRow(f"line {number}", "not a JSON object")

    lines = enumerate(f, 1)
    before: list[_BadRow] = []
    column = first = None
    try:
        for number, line in lines:
            parsed = parse(number, line)
            if isinstance(parsed, _BadRow):
                before.append(parsed)
                if len(before) > 1000:
                    raise UsageError(f"manifest {path} is not JSON lines (no JSON object in its first lines)")
            elif parsed is not None:
                column, first = _input_columns(list(parsed), path)[0], (number, parsed)
                break
    except BaseException:
        f.close()
        raise

    def row(number: int, obj: dict) -> str | _BadRow:
        value = obj.get(column)
        if not _empty(value):  # the usual case: the first object's column
            return _cell(value, f"line {number}")
        lowered = {str(key).strip().lower(): key for key in reversed(list(obj))}
        return _pick((obj[lowered[c]] for c in MANIFEST_COLUMNS if c in lowered), f"line {number}")

    def cells() -> Iterator[str | _BadRow]:
        with f:
            yield from before
            if first is None or column is None:
                return
            yield row(*first)
            for number, line in lines:
                parsed = parse(number, line)
                if parsed is not None:
                    yield row(number, parsed) if isinstance(parsed, dict) else parsed

    return cells()
