"""The run shared by every task: resolve the model, expand inputs, skip finished work, decode in threads,
look up cached embeddings, batch, write, report.

inputs -> resume check -> loader (read + cache lookup + decode + preprocess, worker threads, a batch or two
ahead) -> backend -> task -> writer. An input that fails anywhere becomes an error record and the run goes on.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from mmcli.errors import EXIT_OK, EXIT_PARTIAL, UsageError
from mmcli.modeling import registry
from mmcli.run.loader import Backoff, Loader, Outcome
from mmcli.run.options import CommonOptions as CommonOptions
from mmcli.run.progress import Reporter
from mmcli.run.task import Task as Task
from mmcli.run.task import cache_namespace as cache_namespace
from mmcli.run.task import error_record as error_record
from mmcli.run.task import keyed as keyed
from mmcli.run.task import record_key as record_key
from mmcli.sinks.output import Record, Writer, choose_format, open_writer, preflight

__all__ = [
    "Backoff",
    "CommonOptions",
    "Job",
    "Outcome",
    "StopRun",
    "Task",
    "error_record",
    "keyed",
    "record_key",
]

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend
    from mmcli.modeling.registry import ModelSpec
    from mmcli.modeling.runtime import Runtime
    from mmcli.run.cache import EmbeddingCache
    from mmcli.run.remote.client import Remote
    from mmcli.sinks.report import ReportWriter
    from mmcli.sources.inputs import Item


EXIT_SIGTERM = 143
STOP_SIGNALS = ("SIGINT", "SIGTERM")


class StopRun(Exception):
    """--strict / --max-errors: stop after the failed input whose record was just written."""


class Job(Loader):
    """One run of one task. Everything cheap (model name, capabilities, output format) is checked in
    the constructor, before any weights load, so mistakes fail at once."""

    def __init__(self, task: Task, options: CommonOptions, spec: ModelSpec | None = None):
        self.task = task
        self.options = options
        if options.batch_size is not None and options.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if options.engine not in ("local", "ray"):
            raise UsageError(f"--engine {options.engine}: choose local or ray")
        self.spec = spec or registry.resolve(
            options.model or registry.default_model(task.name), options.revision
        )
        if task.needs:
            registry.require(self.spec, set(task.needs), task.name)
        task.model = self.spec.label
        self.format = choose_format(options.format, options.output, task.formats)
        self.columns = task.table_columns if self.format == "table" else task.columns
        self.reporter = Reporter(options.quiet)
        self._writer: Writer | None = None
        self.cache: EmbeddingCache | None = None
        self.backoff = Backoff(self.reporter.warn)
        self.stop_signal: str | None = None
        self.stop_reason: str | None = None
        self._held: list[str] = []
        self.wait_s = 0.0  # time the model waited for decoded images
        self.compute_s = 0.0
        self.backend: Backend
        self.runtime: Runtime
        self.remote: Remote | None = None  # the mmcli serve this run sends its work to
        self.report: ReportWriter | None = None  # --report FILE.html (attach_report)
        self.report_at_finish = True  # False: the command closes the report itself (eval)
        # A bad --output, or another mmcli writing it, fails now: before any weights load.
        preflight(self.format, options.output, urls=options.engine == "ray")

    # -- setup ---------------------------------------------------------------------------------------
    def load(self) -> Backend:
        from mmcli.modeling import runtime as rt
        from mmcli.modeling.backends.base import LoadOptions

        if not self.spec.is_local:
            asked = self.options.offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            if registry.hub_offline(self.options.offline) and not asked:
                self.reporter.warn("the Hugging Face hub is not reachable: using the local cache only")
        self.runtime = rt.resolve(self.options.device, self.options.dtype, self.spec.dtype)
        self.start_decoders()  # they start while the weights load
        try:
            self.backoff.device = self.runtime.device
            opts = LoadOptions.of(self.options)
            self.backend = registry.create_backend(self.spec, self.runtime, opts)
            if self.task.embeds_images and not self.options.no_cache:
                self.cache = self._open_cache()
        except BaseException:
            self.close_decoders()  # a failed load leaves no process behind
            raise
        return self.backend

    def attach_report(self, path: str, kind: str) -> ReportWriter:
        """--report FILE.html: a page of every record this run writes, checked now (before any weights load)."""
        from mmcli.sinks.report import ReportWriter

        output = self.options.output
        if output and os.path.abspath(output) == os.path.abspath(path):
            raise UsageError(f"--report {path} is also the --output file: give the page a name of its own")
        if self.options.engine == "ray" and output and "://" in output:
            raise UsageError(
                "--report needs the records to pass through this process: not with a directory URL"
            )
        o = self.options
        self.report = ReportWriter(
            path, kind, None, o.max_pixels, o.decode_memory, o.decode_timeout, overwrite=o.overwrite
        )
        return self.report

    def use_server(self) -> bool:
        """Send the work to a running ``mmcli serve`` (see run.remote.client) rather than load the model here."""
        if self.options.no_server or self.options.engine != "local":
            return False
        from mmcli.run.remote import client as remote

        self.remote = remote.connect(self.reporter.warn)
        return self.remote is not None

    def _open_cache(self) -> EmbeddingCache:
        from mmcli import paths
        from mmcli.run.cache import EmbeddingCache

        namespace = cache_namespace(self.spec, self.runtime, self.task)
        return EmbeddingCache(paths.cache_dir(self.options.cache_dir), namespace, warn=self.reporter.warn)

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            self._writer = open_writer(
                self.format, self.options.output, self.columns, overwrite=self.options.overwrite
            )
        return self._writer

    def items(self, inputs: Sequence[str]) -> Iterator[Item]:
        from mmcli.sources.inputs import expand
        from mmcli.sources.manifest import expand_manifest

        stdin = sys.stdin.buffer if "-" in inputs else None
        yield from expand(inputs, stdin, self.options.null)
        if self.options.manifest:
            yield from expand_manifest(self.options.manifest)

    def count(self, inputs: Sequence[str]) -> Callable[[], int | None]:
        """How many inputs there are, for the progress bar's total (run in a background thread)."""

        def count() -> int | None:
            from mmcli.sources.inputs import count_inputs

            if self.options.manifest:
                return None
            return count_inputs(inputs)

        return count

    # -- resume ---------------------------------------------------------------------------------------
    def identity(self) -> str:
        """What, besides the input itself, decides a record: the model, its revision, the task's options."""
        return json.dumps(
            [self.task.name, self.spec.checkpoint, self.spec.revision, self.task.options_key()],
            sort_keys=True,
            default=str,
        )

    def keys_for(self, name: str, identity: str) -> list[str]:
        """Resume keys of one input's records: (path, size, mtime, model, revision, options, part)."""
        from mmcli.sources.inputs import is_url

        size = mtime = None
        if not is_url(name):
            try:
                st = os.stat(name)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                pass
        base = f"{identity}\0{name}\0{size}\0{mtime}"
        return [record_key(f"{base}\0{part}") for part in self.task.parts()]

    def pending(self, items: Iterable[Item]) -> Iterator[Outcome]:
        """The inputs still to do: those whose records are all in --output already are skipped.

        A skipped input's records are kept in their place: their keys ride with the next input to do
        (``Outcome.before``) and are kept just before its records are written, and the keys after the last
        one wait in ``keep_held()``, so a completed run's file is in input order."""
        writer = self.writer
        self._held = []
        if not writer.keyed:
            for item in items:
                yield Outcome(item)
            return
        identity = self.identity()
        done = writer.done
        held: list[str] = []
        for item in items:
            keys = self.keys_for(item.input, identity)
            if item.error is None and all(k in done for k in keys):
                held.extend(keys)
                self.reporter.input_skipped()
                continue
            yield Outcome(item, keys, before=held)
            held = []
        self._held = held

    def keep_held(self) -> None:
        """Keep the records of the inputs skipped after the last one done (call when the inputs ran out)."""
        for key in self._held:
            self.writer.keep(key)
        self._held = []

    # -- records ------------------------------------------------------------------------------------
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

    def execute(self, inputs: Sequence[str] | None) -> int:
        """The whole run of a per-image task: load, skip finished work, compute, write, report."""
        inputs = list(inputs or [])
        if not inputs and not self.options.manifest and type(self.task).leading is Task.leading:
            raise UsageError(
                "no inputs: give image files, directories, globs, URLs, - (paths on stdin) or --manifest FILE"
            )
        if self.options.engine == "ray":
            from mmcli.run.engines.ray import run as run_on_ray

            return run_on_ray(self, inputs)
        if self.use_server():
            from mmcli.run.remote import client as remote

            return remote.execute(self, inputs)
        task = self.task
        backend = self.load()
        try:
            task.prepare(backend)
        except BaseException:
            self.close_decoders()
            raise

        def body() -> None:
            self.write_leading(task.leading(backend))
            work = self.pending(self.items(inputs))
            if task.embeds_images:
                stream = self.encode_images(work)
            else:
                stream = self.forward(work, lambda batch, n: task.compute(backend, batch, n))
            for batch in stream:
                good = [out for out in batch if out.error is None]
                produced = iter(task.records(good) if good else [])
                for out in batch:
                    if out.error is not None:
                        self.emit_outcome(out, [error_record(out.item, out.error)])
                    else:
                        self.emit_outcome(out, next(produced))
                self.writer.flush()
                if self.stop_signal:
                    return
            self.keep_held()

        return self.run(body, inputs)

    def leading_key(self, record: Record) -> str:
        """The resume key of a record that belongs to no image (embed --text): the text and the identity."""
        return record_key(f"{self.identity()}\0text\0{record.get('text')}")

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
