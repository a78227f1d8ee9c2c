"""The on-disk cache of image embeddings: one SQLite file, keyed by (namespace, content digest).

A namespace names everything that changes a vector (model, revision, dtype, preprocessing), so vectors
from different namespaces never mix. The file is in WAL mode with a busy timeout, so several mmcli
processes can read and write it at once; "database is locked" is retried with back-off.

The cache never fails a run: when the directory is not writable, the disk is full or the file cannot be
repaired, it warns once and disables itself (lookups miss, stores do nothing). A corrupt file is moved
aside (``embeddings.sqlite3.corrupt-<timestamp>``) and a fresh one is started.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

FILENAME = "embeddings.sqlite3"
BUSY_TIMEOUT_S = 30.0
# Back-off after SQLite gave up waiting (or answered "busy" without waiting, as WAL can): about 6 s in all.
RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
# Digests per SELECT; far below SQLite's limit on bound parameters.
LOOKUP_CHUNK = 500
PAGE_SIZE = 32768

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    namespace TEXT NOT NULL,
    digest TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (namespace, digest)
)"""
_INSERT = "INSERT OR REPLACE INTO vectors (namespace, digest, dim, vector) VALUES (?, ?, ?, ?)"
_SIDE_FILES = ("", "-wal", "-shm")

# Primary SQLite result codes (the low byte of an extended code).
_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB

T = TypeVar("T")


def digest_bytes(data: bytes) -> str:
    """The content hash of an image file's bytes: BLAKE2b, 16 bytes, as 32 hex digits."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def digest_file(path: str) -> str:
    """digest_bytes of a file's content, read in chunks (a huge file never sits in memory). The checks
    load_image makes (regular file, not empty, readable) come first, with the same messages."""
    from mmcli.errors import InputError
    from mmcli.sources.inputs import check_regular_file, describe_error

    digest = hashlib.blake2b(digest_size=16)
    try:
        check_regular_file(path)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(describe_error(exc)) from exc
    return digest.hexdigest()


def _kind(exc: BaseException) -> str:
    """'busy' (wait and retry), 'corrupt' (move the file aside) or 'fatal' (disable the cache)."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary in _BUSY_CODES or "database is locked" in text or "database is busy" in text:
        return "busy"
    if primary in _CORRUPT_CODES or "malformed" in text or "not a database" in text:
        return "corrupt"
    return "fatal"


def _retry_busy(fn: Callable[[], T]) -> T:
    """Call ``fn``, retrying with back-off while the database is locked by another connection."""
    for delay in RETRY_DELAYS_S:
        try:
            return fn()
        except sqlite3.Error as exc:
            if _kind(exc) != "busy":
                raise
            time.sleep(delay)
    return fn()


def _as_vector(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"the embedding cache stores 1-D vectors, not an array of shape {array.shape}")
    return np.ascontiguousarray(array, dtype="<f4")


def _stderr_warn(message: str) -> None:
    print(f"mmcli: warning: {message}", file=sys.stderr)


class EmbeddingCache:
    """Vectors by (namespace, digest) in ``<directory>/embeddings.sqlite3``; thread-safe.

    One connection behind a lock: a 16-digest lookup is one indexed query of ~0.2 ms on a 100k-entry
    cache, and 8 threads did as well through one locked connection as through one connection each;
    one connection also keeps recovery simple. ``hits`` and ``misses`` count distinct digests asked.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        namespace: str,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(directory).expanduser()
        self.path = self.directory / FILENAME
        self.namespace = namespace
        self.hits = 0
        self.misses = 0
        self.enabled = True
        self._warn = warn if warn is not None else _stderr_warn
        self._warned: set[str] = set()
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._pid = os.getpid()
        with self._lock:
            self._open()

    # -- public -------------------------------------------------------------------------------------

    def get_many(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``digests`` (hits only), as float32 1-D arrays."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return {}
        rows = self._run(lambda conn: self._select(conn, wanted), "lookup") or []
        found: dict[str, np.ndarray] = {}
        for digest, dim, blob in rows:
            if isinstance(blob, bytes) and dim * 4 == len(blob):
                found[digest] = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        with self._lock:
            self.hits += len(found)
            self.misses += len(wanted) - len(found)
        return found

    def put_many(self, vectors: Mapping[str, np.ndarray]) -> None:
        """Store ``vectors`` (digest -> 1-D array, kept as float32) in one transaction."""
        rows = []
        for digest, value in vectors.items():
            vector = _as_vector(value)
            rows.append((self.namespace, digest, int(vector.size), vector.tobytes()))
        if rows:
            self._run(lambda conn: self._insert(conn, rows), "store")

    def close(self) -> None:
        with self._lock:
            self._close_connection()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- database work (called with the lock held) --------------------------------------------------

    def _select(self, conn: sqlite3.Connection, wanted: list[str]) -> list[tuple[str, int, bytes]]:
        rows: list[tuple[str, int, bytes]] = []
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT digest, dim, vector FROM vectors WHERE namespace = ? AND digest IN ({marks})"
            rows.extend(conn.execute(sql, (self.namespace, *chunk)).fetchall())
        return rows

    @staticmethod
    def _insert(conn: sqlite3.Connection, rows: list[tuple[str, str, int, bytes]]) -> None:
        # IMMEDIATE takes the write lock up front, so waiting for it goes through the busy timeout.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise

    def _run(self, op: Callable[[sqlite3.Connection], T], what: str) -> T | None:
        """Run ``op`` on the connection; any failure becomes a warning and ``None``, never an exception."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connection must not be used, nor closed, here
                self._conn, self._pid = None, os.getpid()
                if self.enabled and not self._open():
                    return None
            for attempt in range(2):
                conn = self._conn
                if not self.enabled or conn is None:
                    return None
                try:
                    return _retry_busy(functools.partial(op, conn))
                except (sqlite3.Error, OSError) as exc:
                    kind = _kind(exc)
                    if kind == "busy":
                        self._warn_once("busy", f"embedding cache {self.path} stayed locked; {what} skipped")
                        return None
                    if kind != "corrupt" or attempt > 0:
                        self._disable(f"{what} failed: {exc}")
                        return None
                    # Another process may already have moved the damaged file aside and started afresh.
                    self._close_connection()
                    if self._still_ours() and not self._move_aside(exc):
                        return None
                    if not self._open():
                        return None
            return None

    # -- opening, recovery, disabling ------------------------------------------------------------------

    def _connect(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            # Takes effect only when the file is new: 32 KiB pages waste ~10% on 512-d vectors, 4 KiB ~100%.
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            stat = os.stat(self.path)
        except BaseException:
            conn.close()
            raise
        self._conn, self._identity = conn, (stat.st_dev, stat.st_ino)

    def _open(self) -> bool:
        """Open (or create) the file; a corrupt one is moved aside once. False, warned, when unusable."""
        for attempt in range(2):
            self._identity = self._stat()
            try:
                _retry_busy(self._connect)
                return True
            except (sqlite3.Error, OSError) as exc:
                if attempt == 0 and _kind(exc) == "corrupt":
                    # Move it only if no other process has replaced it since we looked.
                    if self._still_ours() and not self._move_aside(exc):
                        return False
                    continue
                self._disable(f"cannot use it: {exc}")
                return False
        return False

    def _stat(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def _still_ours(self) -> bool:
        """Whether the file at ``path`` is the one we opened (another process may have replaced it)."""
        return self._identity is not None and self._stat() == self._identity

    def _move_aside(self, exc: BaseException) -> bool:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.with_name(f"{FILENAME}.corrupt-{stamp}")
        if target.exists():
            target = target.with_name(f"{target.name}-{os.getpid()}")
        try:
            for suffix in _SIDE_FILES:
                source = self.path.with_name(FILENAME + suffix)
                if source.exists():
                    source.replace(target.with_name(target.name + suffix))
        except OSError as err:
            self._disable(f"it is damaged ({exc}) and could not be moved aside: {err}")
            return False
        self._warn_once(
            "moved", f"embedding cache {self.path} was damaged ({exc}); moved it to {target.name}"
        )
        return True

    def _disable(self, reason: str) -> None:
        self.enabled = False
        self._close_connection()
        self._warn_once("disabled", f"embedding cache {self.path} disabled: {reason}")

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        with contextlib.suppress(Exception):
            self._warn(message)


def describe(directory: str | os.PathLike[str]) -> dict[str, object]:
    """What ``mmcli doctor`` shows: the file, whether it exists, its size on disk and entries per namespace.

    Opens the file read-only and creates nothing; when it cannot be read, an ``error`` key says why.
    """
    path = Path(directory).expanduser() / FILENAME
    size = 0
    for suffix in _SIDE_FILES:
        with contextlib.suppress(OSError):
            size += path.with_name(FILENAME + suffix).stat().st_size
    info: dict[str, object] = {
        "path": str(path),
        "exists": path.is_file(),
        "bytes": size,
        "entries": 0,
        "namespaces": {},
    }
    if not info["exists"]:
        return info
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)) as conn:
            sql = "SELECT namespace, COUNT(*) FROM vectors GROUP BY namespace ORDER BY namespace"
            counts = {
                str(name): int(count) for name, count in _retry_busy(lambda: conn.execute(sql).fetchall())
            }
    except (sqlite3.Error, OSError) as exc:
        info["error"] = str(exc)
        return info
    info["entries"] = sum(counts.values())
    info["namespaces"] = counts
    return info
