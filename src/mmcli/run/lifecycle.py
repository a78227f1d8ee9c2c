"""How a Job's run writes and ends, whichever engine computes the records: an input's records written
with its accounting (--strict, --max-errors), the run under the stop signals, the exit status and the summary.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mmcli.errors import EXIT_OK, EXIT_PARTIAL
from mmcli.run.job import JobSetup
from mmcli.run.task import Outcome, error_record, keyed
from mmcli.sinks.output import Record

EXIT_SIGTERM = 143
STOP_SIGNALS = ("SIGINT", "SIGTERM")


class StopRun(Exception):
    """--strict / --max-errors: stop after the failed input whose record was just written."""


class JobRun(JobSetup):
    """A Job that writes records and ends its run: what the local loop, the Ray engine and the client of a
    running ``mmcli serve`` all drive."""

    # -- records ------------------------------------------------------------------------------------
    def write_batches(self, batches: Iterable[list[tuple[Outcome, list[Record] | None]]]) -> None:
        """Write each batch's inputs, in order, with their records (an error record where an input failed
        or got none), flushing after each batch; stop at a signal, else keep the held inputs at the end."""
        for batch in batches:
            for out, records in batch:
                if out.error is not None or records is None:
                    self.emit_outcome(out, [error_record(out.item, out.error or "no result")])
                else:
                    self.emit_outcome(out, records)
            self.writer.flush()
            if self.stop_signal:
                return
        self.keep_held()

    def emit(self, record: Record) -> None:
        """Write one record that belongs to no input's accounting (compare's rankings, embed --text)."""
        self.writer.write(record)
        self.reporter.records += 1

    def emit_outcome(self, out: Outcome, records: list[Record]) -> None:
        """Write an input's records (those not already in --output) and count the input once."""
        writer = self.writer
        for held in out.before:
            writer.keep(held)
        if not any("error" in r for r in records):
            records = self.task.deliver(out, records)
        if self.report is not None:
            for record in records:
                self.report.add(record, thumbnail=out.thumbnail)
        failed = next((r for r in records if "error" in r), None)
        if out.warning and failed is None:
            for record in records:
                record["warning"] = out.warning
            self.reporter.warn(f"warning: {out.item.input}: {out.warning}")
        for key, record in keyed(records, out.keys):
            if key is not None:
                if key in writer.done and "error" not in record:
                    writer.keep(key)
                    continue
                record["key"] = key
            writer.write(record)
            self.reporter.records += 1
        if failed is None:
            self.reporter.input_done()
            return
        self.reporter.input_failed(str(out.item.input), str(failed["error"]))
        if self.options.strict:
            self.stop_reason = "--strict: the first failed input"
            raise StopRun
        if self.options.max_errors is not None and self.reporter.failed >= self.options.max_errors:
            self.stop_reason = f"--max-errors {self.options.max_errors}"
            raise StopRun

    def write_leading(self, records: list[Record]) -> None:
        """Write records that belong to no image, skipping those already in --output."""
        if not records:
            return
        writer = self.writer
        for record in records:
            if writer.keyed:
                key = self.leading_key(record)
                if key in writer.done:
                    writer.keep(key)
                    continue
                record["key"] = key
            self.emit(record)
        writer.flush()

    def run(self, body: Callable[[], None], inputs: Sequence[str] = ()) -> int:
        """Run ``body`` (which writes records) under the stop signals; always close the writer and report."""
        self.reporter.start(self.task.name, self.count(inputs) if inputs else None)
        previous = self._install_signal_handlers()
        try:
            body()
        except StopRun:
            self.reporter.warn(f"stopping early ({self.stop_reason})")
        except KeyboardInterrupt:
            self.stop_signal = self.stop_signal or "SIGINT"
            self.reporter.warn("interrupted; records written so far are kept")
        except BaseException:
            self.close_decoders()  # a fatal error: no decoder process outlives the run
            if self.report is not None:
                self.report.abort()
            raise
        finally:
            self._restore_signal_handlers(previous)
        return self.finish()

    def finish(self) -> int:
        complete = self.stop_signal is None and self.stop_reason is None
        writer = self._writer if self._writer is not None else self.writer
        try:
            writer.close(complete=complete)
        finally:
            writer.release()
        if self.cache is not None:
            self.cache.close()
        self.close_decoders()
        if self.remote is not None:
            self.remote.close()
        if self.report is not None and self.report_at_finish:
            self.report.close(complete=complete)
        if self.stop_signal == "SIGTERM":
            status = EXIT_SIGTERM
        elif self.stop_signal:
            status = 130
        else:
            status = EXIT_PARTIAL if self.reporter.failed else EXIT_OK
        runtime = getattr(self, "runtime", None)
        remote = self.remote
        summary = self.reporter.summary(
            task=self.task.name,
            model=self.spec.label,
            device=remote.device if remote else runtime.device_name if runtime else "-",
            dtype=remote.dtype if remote else runtime.dtype_name if runtime else "-",
            server=remote.pid if remote else None,
            exit_status=status,
            stopped=self.stop_signal or self.stop_reason,
            output=self.options.output,
            cache_hits=remote.cache_hits if remote else self.cache.hits if self.cache else 0,
            cache_misses=remote.cache_misses if remote else self.cache.misses if self.cache else 0,
            data_wait_s=round(self.wait_s, 3),
            compute_s=round(self.compute_s, 3),
        )
        if self.options.summary_json:
            try:
                with open(self.options.summary_json, "w", encoding="utf-8") as f:
                    f.write(summary.to_json())
            except OSError as exc:
                self.reporter.warn(f"cannot write --summary-json {self.options.summary_json}: {exc}")
        return status

    # -- signals ------------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT and SIGTERM finish the current batch, write it and stop; a second Ctrl-C stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for name in STOP_SIGNALS:
            signum = getattr(signal, name)
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is not None and name == "SIGINT":
            raise KeyboardInterrupt
        self.stop_signal = name
        self.reporter.warn(f"{name}: finishing the current batch, then stopping (Ctrl-C again to stop now)")
