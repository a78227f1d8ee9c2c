"""The Job behind ``mmcli eval``: classify's own Job, whose records also carry each image's truth and whose
rankings are kept for the metrics, including those of records a resumed ``--output`` already holds."""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from mmcli.commands._eval_data import Dataset
from mmcli.run.options import CommonOptions
from mmcli.run.pipeline import Job
from mmcli.run.progress import Reporter, Summary
from mmcli.run.task import Outcome, Task
from mmcli.sinks import metrics
from mmcli.sinks.output import Record, Writer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from mmcli.modeling.backends.base import Backend
    from mmcli.modeling.registry import ModelSpec
    from mmcli.sources.inputs import Item


class _Discard(Writer):
    """The records' writer without --output: the records are kept for the metrics only."""

    def __init__(self) -> None:
        self.done: set[str] = set()

    def write(self, record: Record) -> None:
        pass

    def flush(self) -> None:
        pass


class _Reporter(Reporter):
    """Keeps the run summary (cache hits, for --compare-templates)."""

    last: Summary | None = None

    def summary(self, **fields: Any) -> Summary:
        self.last = super().summary(**fields)
        return self.last


@dataclasses.dataclass
class Shared:
    """The model loaded by the first of --compare-templates' runs, for the others (in this process)."""

    backend: Any = None
    runtime: Any = None


class EvalJob(Job):
    """classify's Job over a dataset: each record gets its "truth" (in --output too, and in its resume key,
    so a changed truth is scored afresh), and each image's ranking is kept for the metrics."""

    def __init__(
        self,
        task: Task,
        options: CommonOptions,
        spec: ModelSpec,
        dataset: Dataset,
        shared: Shared | None = None,
    ) -> None:
        super().__init__(task, options, spec)
        self.dataset = dataset
        self.shared = shared
        at = self.columns.index("input") + 1 if "input" in self.columns else 0
        self.columns = [*self.columns[:at], "truth", *self.columns[at:]]
        self.reporter = self.keeper = _Reporter(options.quiet)
        self.backoff.warn = self.reporter.warn
        self.rankings: dict[str, list[tuple[str, float]]] = {}
        self.failures: dict[str, str] = {}
        self.kept: dict[str, list[tuple[str, float]]] = {}  # rankings already in --output, by resume key

    @property
    def writer(self) -> Writer:
        if self._writer is None and self.options.output is None:
            self._writer = _Discard()
        return super().writer

    def items(self, inputs: Sequence[str]) -> Iterator[Item]:
        from mmcli.sources.inputs import Item

        return (Item(name) for name in self.dataset.inputs)  # as listed: a path is never taken for a glob

    def count(self, inputs: Sequence[str]) -> Callable[[], int | None]:
        return lambda: len(self.dataset.inputs)

    def keys_for(self, name: str, identity: str) -> list[str]:
        return super().keys_for(name, f"{identity}\0truth\0{self.dataset.truth.get(name)}")

    def pending(self, items: Iterable[Item]) -> Iterator[Outcome]:
        """As Job.pending; first the rankings of the records it will skip, which still count."""
        self.kept = kept_rankings(self.writer)  # before the run writes: the records a re-run skips
        yield from super().pending(items)

    def emit_outcome(self, out: Outcome, records: list[Record]) -> None:
        name = out.item.input
        truth = self.dataset.truth.get(name)
        records = [{"input": r.get("input"), "truth": truth, **r} for r in records]
        failed = next((r for r in records if "error" in r), None)
        if failed is not None:
            self.failures[name] = str(failed["error"])
        elif records:
            self.rankings[name] = metrics.ranking_of(records[0])
        super().emit_outcome(out, records)

    def load(self) -> Backend:
        """As Job.load, except that --compare-templates' later runs reuse the first run's model (each run
        still has its own decoders and cache handle, closed by its finish)."""
        shared = self.shared
        if shared is None or shared.backend is None:
            backend = super().load()
            if shared is not None:
                shared.backend, shared.runtime = backend, self.runtime
            return backend
        self.runtime, self.backend = shared.runtime, shared.backend
        self.backoff.device = self.runtime.device
        self.start_decoders()
        try:
            if self.task.embeds_images and not self.options.no_cache:
                self.cache = self._open_cache()
        except BaseException:
            self.close_decoders()
            raise
        return self.backend

    def finished(self) -> bool:
        """False when the run stopped early (a signal, --strict, --max-errors): no metrics of a part."""
        if self.stop_signal is None and self.stop_reason is None:
            return True
        self.reporter.warn(
            "no results: the run stopped early; run it again (with the same --output to resume)"
        )
        return False

    def metrics(self) -> dict[str, Any]:
        """The metrics over every image: those run now and those whose records --output already held."""
        identity = self.identity()
        scored: list[tuple[str, str, metrics.Ranking]] = []
        failures: list[tuple[str, str]] = []
        for name in self.dataset.inputs:
            ranking = self.rankings.get(name)
            if ranking is None and name not in self.failures:
                ranking = self.kept.get(self.keys_for(name, identity)[0])
            if ranking is None:
                failures.append((name, self.failures.get(name, "no record")))
            else:
                scored.append((name, self.dataset.truth[name], ranking))
        return metrics.evaluate(self.dataset.labels, scored, failures)


def kept_rankings(writer: Writer) -> dict[str, list[tuple[str, float]]]:
    """The rankings of the good records a keyed --output already holds (read where resume indexed them)."""
    from mmcli.sinks import resume

    log = getattr(writer, "log", None)
    if not isinstance(log, resume.KeyedLog) or not log.index:
        return {}
    found: dict[str, list[tuple[str, float]]] = {}
    with open(log.path, "rb") as f:
        for key, i in sorted(log.index.items(), key=lambda item: item[1]):
            f.seek(log.old_off[i])
            record = _parse(f.read(log.old_len[i]), log.codec)
            if record is not None:
                found[key] = metrics.ranking_of(record)
    return found


def _parse(chunk: bytes, codec: Any) -> dict[str, Any] | None:
    """One record's bytes as written (a JSON line, or a CSV row whose scores are JSON text)."""
    from mmcli.sinks import resume

    try:
        if isinstance(codec, resume.CsvCodec):
            row = codec.row(chunk)
            if row is None:
                return None
            record: Any = dict(zip(codec.columns, row, strict=False))
            record["scores"] = json.loads(record.get("scores") or "null")
        else:
            record = json.loads(chunk.decode("utf-8"))
    except ValueError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("scores"), dict) and record["scores"]
    return record if ok else None
