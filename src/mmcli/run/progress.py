"""Everything a run says on stderr: warnings, failed inputs, a progress bar, the closing summary.

Results never come here (they go to stdout or --output). The bar is drawn only when stderr is a terminal
and --quiet is not given; its total is counted in a background thread while the run already works.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Summary:
    """The run in numbers: printed as one line on stderr, and written as JSON with --summary-json."""

    task: str
    model: str
    device: str
    dtype: str
    done: int
    skipped: int
    failed: int
    records: int
    items_per_s: float
    wall_s: float
    load_s: float
    exit_status: int
    stopped: str | None
    output: str | None
    cache_hits: int
    cache_misses: int
    data_wait_s: float  # time the model waited for decoded images
    compute_s: float  # time in the model
    server: int | None = None  # the pid of the mmcli serve that ran the model; None: this process

    def line(self) -> str:
        via = f" via server (pid {self.server})" if self.server is not None else ""
        if not (self.done or self.skipped or self.failed) and self.records:
            # records of no input (embed --text alone): counted as records, with no rate of inputs
            plural = "" if self.records == 1 else "s"
            return f"{self.task}: {self.records} record{plural}; {self.wall_s:.1f} s on {self.device}, {self.dtype}{via}"
        parts = [f"{self.done} done"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.cache_hits:
            parts.append(f"{self.cache_hits} from the cache")
        stopped = f" (stopped: {self.stopped})" if self.stopped else ""
        return (
            f"{self.task}: {', '.join(parts)}; {self.items_per_s:.1f} items/s, {self.wall_s:.1f} s "
            f"on {self.device}, {self.dtype}{via}{stopped}"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


class Reporter:
    """Counts what was done, skipped and failed; warns; draws the bar; prints the summary."""

    def __init__(self, quiet: bool = False, show_progress: bool | None = None):
        self.quiet = quiet
        self.done = 0
        self.skipped = 0
        self.failed = 0
        self.records = 0
        self.started = time.perf_counter()
        self.work_started: float | None = None  # after the model loaded
        if show_progress is None:
            show_progress = not quiet and sys.stderr.isatty()
        self.show_progress = show_progress
        self._progress: Any = None
        self._task_id: Any = None
        self._lock = threading.Lock()

    # -- messages ------------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(f"mmcli: {message}", markup=False, highlight=False)
            return
        sys.stderr.write(f"mmcli: {message}\n")
        sys.stderr.flush()

    def input_failed(self, name: str, error: str) -> None:
        self.failed += 1
        self.warn(f"skipping {name}: {error}")
        self._advance()

    def input_done(self) -> None:
        self.done += 1
        self._advance()

    def input_skipped(self) -> None:
        self.skipped += 1
        self._advance()

    # -- the bar ----------------------------------------------------------------------------------------
    def start(self, description: str, count: Callable[[], int | None] | None = None) -> None:
        """Begin the work phase (the model is loaded); draw the bar if wanted, its total counted aside."""
        self.work_started = time.perf_counter()
        if not self.show_progress:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} items/s"),
            TextColumn("[red]{task.fields[failures]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
            refresh_per_second=4,
        )
        self._task_id = self._progress.add_task(description, total=None, rate="-", failures="")
        self._progress.start()
        if count is not None:
            threading.Thread(target=self._count, args=(count,), daemon=True, name="mmcli-count").start()

    def _count(self, count: Callable[[], int | None]) -> None:
        try:
            total = count()
        except Exception:  # a total is a nicety: never let counting disturb the run
            return
        with self._lock:
            if total is not None and self._progress is not None:
                self._progress.update(self._task_id, total=total)

    def _advance(self) -> None:
        if self._progress is None:
            return
        with self._lock:
            processed = self.done + self.failed
            elapsed = time.perf_counter() - (self.work_started or self.started)
            rate = f"{processed / elapsed:.1f}" if elapsed > 0 and processed else "-"
            failures = f"{self.failed} failed" if self.failed else ""
            self._progress.update(self._task_id, advance=1, rate=rate, failures=failures)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- the end ----------------------------------------------------------------------------------------
    def summary(self, **fields: Any) -> Summary:
        """Stop the bar, print the one-line summary (unless --quiet), and return it."""
        self.stop()
        now = time.perf_counter()
        work = now - (self.work_started or self.started)
        processed = self.done + self.failed
        summary = Summary(
            done=self.done,
            skipped=self.skipped,
            failed=self.failed,
            records=self.records,
            items_per_s=round(processed / work, 3) if work > 0 else 0.0,
            wall_s=round(now - self.started, 3),
            load_s=round((self.work_started or now) - self.started, 3),
            **fields,
        )
        self.warn(summary.line())
        return summary
