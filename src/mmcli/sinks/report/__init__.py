"""``--report FILE.html``: one self-contained page to review a run by eye (classify, caption, eval).

The command makes a ``ReportWriter`` before any weights load (its constructor checks the file, as
``output.preflight`` does for --output), calls ``add`` with each record it writes (and ``set_eval`` with
eval's results), and ``close`` at the end, which writes the page in one step (a temporary file moved over
FILE). Thumbnails are made while the run goes on (mmcli.sinks.report.thumbs); the page itself is written by
mmcli.sinks.report.page and rendered in the browser by report.js, one page of 100 records at a time, so 10,000
images stay usable.

A report never replaces a file mmcli did not write: an existing FILE is replaced only when it is an mmcli
report (it starts with ``page.MARKER``), or with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import stat
from typing import Any

from mmcli.errors import MmcliError, UsageError
from mmcli.sinks.report.page import MARKER, write_page
from mmcli.sinks.report.thumbs import MAX_THUMBNAILS, THUMB_SIZE, Thumbnails, thumbnail_jpeg
from mmcli.sources.limits import DEFAULT_DECODE_MEMORY, DEFAULT_DECODE_TIMEOUT, DEFAULT_MAX_PIXELS

__all__ = ["KINDS", "MARKER", "ReportWriter", "is_report", "preflight", "thumbnail_jpeg"]

KINDS = ("classify", "caption", "eval")
PER_PAGE = 100  # records per page of the gallery
TOP = 5  # scores kept per classify record (a 1,000-label run would otherwise weigh 20 kB a record)
MAX_ERRORS = 1000  # error records listed one by one; the rest are counted
MAX_ITEMS = 100_000  # records in the gallery (about 30 MB of JSON); the rest are counted


def is_report(path: str) -> bool:
    """True when ``path`` is a regular file (not a link) that starts like a page mmcli wrote."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return MARKER.encode() in f.read(1024)
    except OSError:
        return False


def preflight(path: str, overwrite: bool = False) -> None:
    """Refuse, with one line naming the file, a --report that could not be written at the end of the run or
    that would replace a file mmcli did not write (unless ``overwrite``)."""
    if not path or path == "-":
        raise UsageError("--report needs a file name, such as report.html (a report is not for a pipe)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--report {path}: the directory {folder} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"--report {path} is a directory; name a file")
    if os.path.lexists(path) and not is_report(path):
        st = os.lstat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise UsageError(f"--report {path} is not a regular file")
        if not overwrite:
            raise UsageError(
                f"--report {path}: {path} exists and is not a report mmcli wrote; "
                "choose another name, remove it, or pass --overwrite"
            )
    try:
        os.unlink(_temporary(path))  # can a file be made (and moved) there?
    except OSError as exc:
        raise UsageError(f"--report {path}: cannot write in {folder}: {exc.strerror or exc}") from None


def _temporary(path: str) -> str:
    """A new empty file beside ``path`` (created 0666 less the umask), for the page to be written into."""
    folder, name = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(folder, f".{name}.mmcli-{os.urandom(4).hex()}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def _number(value: Any) -> float | None:
    """A finite float, else None (JSON has no NaN; a report must still be written)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _top(scores: Any, n: int) -> list[list[Any]]:
    """The ``n`` best ``[label, score]`` pairs of a record's scores (a dict) or top-k list."""
    pairs = scores.items() if isinstance(scores, dict) else scores if isinstance(scores, list) else []
    good = [(str(p[0]), _number(p[1])) for p in pairs if isinstance(p, list | tuple) and len(p) >= 2]
    good.sort(key=lambda p: -p[1] if p[1] is not None else math.inf)
    return [[label, score] for label, score in good[:n]]


class ReportWriter:
    """Collect a run's records and write its HTML report on ``close``.

    ``kind``: "classify" or "caption" (a gallery of every record, with its thumbnail), or "eval" (the
    metrics of ``set_eval``; ``add`` keeps only error records there, as the results hold the rest).
    ``max_pixels``, ``decode_memory`` and ``decode_timeout`` are the run's own limits, kept when the
    thumbnails are decoded; ``threads`` decoder threads (each with its decoder process) make them.
    Use as a context manager, or call ``close`` (write) or ``abort`` (write nothing) yourself. Not
    thread-safe: call ``add`` and ``set_eval`` from the thread that writes the records.
    """

    def __init__(
        self,
        path: str,
        kind: str,
        title: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_memory: int = DEFAULT_DECODE_MEMORY,
        decode_timeout: float = DEFAULT_DECODE_TIMEOUT,
        *,
        overwrite: bool = False,
        threads: int = 2,
        thumb_size: int = THUMB_SIZE,
        max_thumbnails: int = MAX_THUMBNAILS,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        preflight(path, overwrite)
        self.path = path
        self.kind = kind
        self.title = title or f"mmcli {kind}"
        self.overwrite = overwrite
        self.thumbs = Thumbnails(
            threads, max_pixels, decode_memory, decode_timeout, thumb_size, max_thumbnails
        )
        self.items: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.error_count = 0
        self.left_out = 0  # records past MAX_ITEMS
        self.records = 0
        self.models: dict[str, None] = {}  # ordered sets
        self.prompts: dict[str, int] = {}
        self.eval: dict[str, Any] | None = None
        self._done = False

    # -- collecting ---------------------------------------------------------------------------------------
    def add(self, record: dict[str, Any], thumbnail: bytes | None = None) -> None:
        """One record the run wrote (a result or an error record); its thumbnail starts now, in a decoder
        process, unless ``thumbnail`` brings it: ``thumbnail_jpeg(image)`` of the pixels the run itself
        decoded (about 2 ms instead of a second decode)."""
        self.records += 1
        name = str(record.get("input", ""))
        if "error" in record:
            self.error_count += 1
            if len(self.errors) < MAX_ERRORS:
                self.errors.append({"i": name, "e": str(record["error"])})
            return
        if record.get("model"):
            self.models.setdefault(str(record["model"]), None)
        if self.kind == "eval":
            return
        if len(self.items) >= MAX_ITEMS:
            self.left_out += 1
            return
        item: dict[str, Any] = {"i": name, "t": self.thumbs.want(name, thumbnail)}
        if self.kind == "classify":
            item["l"] = str(record.get("label", ""))
            item["s"] = _number(record.get("score"))
            item["k"] = _top(record.get("scores"), TOP)
            if isinstance(record.get("labels"), list):
                item["m"] = [str(label) for label in record["labels"]]
        else:
            item["c"] = str(record.get("caption", ""))
            prompt = record.get("prompt")
            if prompt is not None:
                item["p"] = self.prompts.setdefault(str(prompt), len(self.prompts))
        if record.get("warning"):
            item["w"] = str(record["warning"])
        self.items.append(item)

    def set_eval(self, results: dict[str, Any]) -> None:
        """eval's results (``top1``, ``top5``, ``per_class``, ``confusion``, ``misclassified``, …); the
        thumbnails of the misclassified images start now. Confusion rows are the truth, columns the
        prediction."""
        per_class = results.get("per_class") or {}
        confusion = results.get("confusion") or {}
        self.eval = {
            "top1": _number(results.get("top1")),
            "top5": _number(results.get("top5")),
            "n": _count(results.get("n")),
            "model": results.get("model"),
            "extra": {
                str(k): v
                for k, v in results.items()
                if k not in ("top1", "top5", "n", "model")
                and isinstance(v, str | int | float | bool)
                and not (isinstance(v, float) and not math.isfinite(v))
            },
            "per_class": [
                [str(label), _number(m.get("precision")), _number(m.get("recall")), _count(m.get("support"))]
                for label, m in per_class.items()
            ],
            "confusion": {
                "labels": [str(label) for label in confusion.get("labels", [])],
                "matrix": [[int(c) for c in row] for row in confusion.get("matrix", [])],
            },
            "mis": [
                {
                    "i": str(m.get("input", "")),
                    "t": self.thumbs.want(str(m.get("input", ""))),
                    "truth": str(m.get("truth", "")),
                    "k": _top(m.get("top3"), 3),
                }
                for m in results.get("misclassified") or []
            ],
        }
        if results.get("model"):
            self.models.setdefault(str(results["model"]), None)

    # -- writing ------------------------------------------------------------------------------------------
    def close(self, complete: bool = True) -> str:
        """Wait for the thumbnails and write the page in one step; returns its path. ``complete=False``
        (an interrupted run) says so at the top of the page."""
        if self._done:
            return self.path
        self._done = True
        try:
            self.thumbs.wait()
            self._write(self._data(complete))
        finally:
            self.thumbs.close(cancel=True)  # a no-op after a whole wait; after a Ctrl-C, no more waiting
        return self.path

    def abort(self) -> None:
        """Stop making thumbnails and write nothing (a run that failed)."""
        if not self._done:
            self._done = True
            self.thumbs.close(cancel=True)

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _data(self, complete: bool) -> dict[str, Any]:
        notices = []
        if not complete:
            notices.append(
                f"The run was interrupted: this report holds the {self.records:,} records written."
            )
        if self.thumbs.over_limit:
            notices.append(
                f"Only the first {self.thumbs.limit:,} images have thumbnails "
                f"({self.thumbs.over_limit:,} more shown without)."
            )
        if self.left_out:
            notices.append(
                f"Only the first {len(self.items):,} records are in the gallery "
                f"({self.left_out:,} more left out)."
            )
        if self.error_count > len(self.errors):
            notices.append(f"Only the first {len(self.errors):,} of {self.error_count:,} errors are listed.")
        return {
            "kind": self.kind,
            "generated": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "version": _version(),
            "complete": complete,
            "per_page": PER_PAGE,
            "models": list(self.models),
            "prompts": list(self.prompts),
            "records": self.records,
            "error_count": self.error_count,
            "notices": notices,
            "items": self.items,
            "errors": self.errors,
            "eval": self.eval,
        }

    def _write(self, data: dict[str, Any]) -> None:
        tmp = _temporary(self.path)
        try:
            with open(tmp, "wb") as out:
                write_page(out, self.title, data, self.thumbs.spooled())
                out.flush()
                os.fsync(out.fileno())
            self._move(tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _move(self, tmp: str) -> None:
        """Over FILE, unless a file mmcli may not replace appeared there during the run: then the page
        stays beside it under a name of its own, and the error says where."""
        if os.path.lexists(self.path) and not self.overwrite and not is_report(self.path):
            root, ext = os.path.splitext(self.path)
            kept = f"{root}.mmcli-{os.urandom(3).hex()}{ext or '.html'}"
            os.replace(tmp, kept)
            raise MmcliError(
                f"--report {self.path} appeared during the run and is not mmcli's: left as is; "
                f"the report is {kept}"
            )
        os.replace(tmp, self.path)
        with contextlib.suppress(OSError):
            fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _version() -> str:
    from mmcli.version import __version__

    return __version__
