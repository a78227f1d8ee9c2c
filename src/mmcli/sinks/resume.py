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

import atexit
import csv
import io
import json
import os
from array import array
from collections.abc import Iterator, Sequence
from contextlib import suppress
from typing import Any, NoReturn

from mmcli.errors import MmcliError, UsageError
from mmcli.sinks.formats import READERS, WRITERS, fsync_path, replacing
from mmcli.sinks.records import Record, Writer, _encode, csv_line, csv_row, dumps, ids_path_for


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


def not_ours(path: str, why: str) -> NoReturn:
    """A file mmcli did not write is never resumed, cut or rewritten."""
    raise UsageError(
        f"--output {path} exists and {why}: mmcli never writes over a file it did not create",
        "use --overwrite to start it afresh, or another file",
    )


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


# Locks taken before the model loads (output.preflight), waiting for their writer (take_lock). One the
# run never got to is released when mmcli exits (cli.main, or atexit for library use).
_HELD: dict[str, OutputLock] = {}


def hold_lock(output: str) -> None:
    """Take FILE.lock now (a second mmcli stops at once), for the writer opened later to take over."""
    key = os.path.abspath(output)
    if key not in _HELD:
        _HELD[key] = OutputLock(output)


def take_lock(output: str) -> OutputLock:
    """The lock ``hold_lock`` took for ``output``, else a new one."""
    return _HELD.pop(os.path.abspath(output), None) or OutputLock(output)


def release_held() -> None:
    """Release the locks no writer took over (the run stopped before writing: a bad model, ...)."""
    while _HELD:
        _HELD.popitem()[1].release()


atexit.register(release_held)


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
            if header is None and f.read(2) not in (
                b"",
                b'{"',
            ):  # every record (even one cut short) starts so
                not_ours(self.path, "its first line is not a record mmcli wrote")
            f.seek(0)
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
                if header is None and at == 0 and (parsed is None or parsed[0] is None):
                    not_ours(self.path, "its first line is not a record mmcli wrote")
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
                    if not (isinstance(record, dict) and isinstance(record.get("key"), str)):
                        not_ours(path, "holds records mmcli did not write (no key)")
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
            fsync_path(os.path.dirname(os.path.abspath(self.path)))
        log.close()
