"""A Job's set-up, whichever engine computes it: the checks made before any weights load, the model, the
output and its writer, --report, the embedding cache, the inputs, and which of them resume skips.

``run.lifecycle`` writes the records and ends the run; ``run.pipeline`` chooses where the work runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from mmcli.errors import UsageError
from mmcli.modeling import registry
from mmcli.run.loader import Backoff, Loader
from mmcli.run.options import CommonOptions
from mmcli.run.progress import Reporter
from mmcli.run.task import Outcome, Task, cache_namespace, record_key
from mmcli.sinks.output import Record, Writer, choose_format, open_writer, preflight

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend
    from mmcli.modeling.registry import ModelSpec
    from mmcli.modeling.runtime import Runtime
    from mmcli.run.cache import EmbeddingCache
    from mmcli.run.remote.client import Remote
    from mmcli.sinks.report import ReportWriter
    from mmcli.sources.inputs import Item


class JobSetup(Loader):
    """One run of one task, set up. Everything cheap (model name, capabilities, output format) is checked in
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

    def leading_key(self, record: Record) -> str:
        """The resume key of a record that belongs to no image (embed --text): the text and the identity."""
        return record_key(f"{self.identity()}\0text\0{record.get('text')}")
