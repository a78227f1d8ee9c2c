"""The run shared by every task: resolve the model, expand inputs, decode in threads, batch, write.

inputs -> loader (decode + preprocess, worker threads, a batch or two ahead) -> backend -> task -> writer.
An input that fails anywhere becomes an error record and the run goes on.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from mmcli import registry
from mmcli.errors import EXIT_OK, EXIT_PARTIAL, MmcliError, UsageError
from mmcli.output import Record, Reporter, Writer, choose_format, open_writer

if TYPE_CHECKING:
    from mmcli.backends.base import Backend, Batch
    from mmcli.inputs import Item
    from mmcli.runtime import Runtime


# Pillow's own hard limit (about 13,400 x 13,400 pixels); --max-pixels raises or lowers it.
DEFAULT_MAX_PIXELS = 178_956_970


@dataclass
class CommonOptions:
    """The options every subcommand takes (see commands/_options.py)."""

    model: str | None = None
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    format: str | None = None
    output: str | None = None
    quiet: bool = False
    strict: bool = False
    offline: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    workers: int | None = None
    null: bool = False
    device_map: str | None = None
    quantize: str | None = None
    overwrite: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    summary_json: str | None = None
    max_errors: int | None = None
    manifest: str | None = None
    engine: str = "local"
    ray_address: str = "local"
    actors: int | None = None
    gpus_per_actor: float = 0.0


class StopRun(Exception):
    """--strict: stop after the first failed input (its record is written first)."""


def batched(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(iterable)
    while chunk := list(islice(it, n)):
        yield chunk


@dataclass
class Outcome:
    """One image's result (an embedding row, a caption, ...) or the reason it failed."""

    item: Item
    value: Any = None
    error: str | None = None


class Job:
    """One run of one task. Everything cheap (model name, capabilities, output format) is checked in
    the constructor, before any weights load, so mistakes fail at once."""

    def __init__(
        self,
        task: str,
        options: CommonOptions,
        needs: set[str] | None,
        columns: Sequence[str],
        formats: Sequence[str] = ("table", "jsonl", "json", "csv"),
    ):
        self.task = task
        self.options = options
        if options.batch_size is not None and options.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        self.spec = registry.resolve(options.model or registry.default_model(task), options.revision)
        if needs is not None:
            registry.require(self.spec, needs, task)
        self.format = choose_format(options.format, options.output, formats)
        self.columns = columns
        self.reporter = Reporter(options.quiet)
        self._writer: Writer | None = None
        self.forward_limit = 1 << 30  # lowered after an out-of-memory error
        self.backend: Backend
        self.runtime: Runtime

    # -- setup ---------------------------------------------------------------------------------------
    def load(self) -> Backend:
        from mmcli import runtime as rt
        from mmcli.backends.base import LoadOptions

        if not self.spec.is_local:
            asked = self.options.offline or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            if registry.hub_offline(self.options.offline) and not asked:
                self.reporter.warn("the Hugging Face hub is not reachable: using the local cache only")
        self.runtime = rt.resolve(self.options.device, self.options.dtype, self.spec.dtype)
        opts = LoadOptions(
            allow_pickle=self.options.allow_pickle,
            trust_remote_code=self.options.trust_remote_code,
            offline=self.options.offline,
            device_map=self.options.device_map,
            quantize=self.options.quantize,
        )
        self.backend = registry.create_backend(self.spec, self.runtime, opts)
        return self.backend

    @property
    def batch_size(self) -> int:
        if self.options.batch_size:
            return self.options.batch_size
        return 16 if self.runtime.device.type == "cpu" else 32

    @property
    def workers(self) -> int:
        return self.options.workers or min(8, max(2, os.cpu_count() or 2))

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            self._writer = open_writer(self.format, self.options.output, self.columns)
        return self._writer

    def items(self, inputs: Sequence[str]) -> Iterator[Item]:
        from mmcli.inputs import expand

        stdin = sys.stdin.buffer if "-" in inputs else None
        return expand(inputs, stdin, self.options.null)

    # -- records ------------------------------------------------------------------------------------
    def emit(self, record: Record) -> None:
        self.writer.write(record)
        if "error" in record:
            self.reporter.input_failed(str(record.get("input")), str(record["error"]))
            if self.options.strict:
                raise StopRun
        else:
            self.reporter.done += 1

    def finish(self) -> int:
        writer = self._writer if self._writer is not None else self.writer
        writer.close()
        if hasattr(self, "runtime"):
            self.reporter.summary(self.task, self.runtime.device_name, self.runtime.dtype_name)
        return EXIT_PARTIAL if self.reporter.failed else EXIT_OK

    def run(self, body: Callable[[], None]) -> int:
        """Run ``body`` (which emits records); always close the writer and report."""
        try:
            body()
        except StopRun:
            self.reporter.warn("stopping at the first failed input (--strict)")
        except KeyboardInterrupt:
            self.reporter.warn("interrupted; records written so far are kept")
            self.finish()
            return 130
        return self.finish()

    # -- images ------------------------------------------------------------------------------------
    def _decode(self, path: str) -> Batch:
        from mmcli.inputs import load_image

        image = load_image(path, self.options.max_pixels)
        return self.backend.preprocess([image])

    def preprocessed(self, items: Iterable[Item]) -> Iterator[list[tuple[Item, Batch | None, str | None]]]:
        """Batches of (item, preprocessed, error), decoded by worker threads a batch or two ahead."""
        from mmcli.errors import InputError

        size = self.batch_size
        with ThreadPoolExecutor(self.workers, thread_name_prefix="mmcli-load") as pool:
            pending: deque[list[tuple[Item, Future[Batch] | None]]] = deque()

            def submit(chunk: list[Item]) -> list[tuple[Item, Future[Batch] | None]]:
                return [(it, None if it.error else pool.submit(self._decode, it.input)) for it in chunk]

            chunks = batched(items, size)
            for chunk in islice(chunks, 2):
                pending.append(submit(chunk))
            while pending:
                current = pending.popleft()
                nxt = next(chunks, None)
                if nxt is not None:
                    pending.append(submit(nxt))
                out: list[tuple[Item, Batch | None, str | None]] = []
                for item, future in current:
                    if future is None:
                        out.append((item, None, item.error))
                        continue
                    try:
                        out.append((item, future.result(), None))
                    except InputError as exc:
                        out.append((item, None, str(exc)))
                    except Exception as exc:  # a preprocessing bug must not sink the batch
                        out.append((item, None, f"cannot preprocess: {exc}"))
                yield out

    def forward(
        self, items: Iterable[Item], fn: Callable[[Batch, int], Sequence[Any]]
    ) -> Iterator[list[Outcome]]:
        """Batches of outcomes in input order: ``fn(collated, n)`` gives one value per decoded image."""
        for batch in self.preprocessed(items):
            results = [Outcome(item, None, err) for item, _, err in batch]
            good = [(i, data) for i, (_, data, err) in enumerate(batch) if err is None and data is not None]
            if good:
                values = self.with_backoff(fn, [data for _, data in good])
                for (index, _), value in zip(good, values, strict=True):
                    results[index].value = value
            yield results

    def with_backoff(self, fn: Callable[[Batch, int], Sequence[Any]], parts: list[Batch]) -> list[Any]:
        """Run ``fn`` on the collated parts; on out-of-memory halve the batch and retry, then remember
        the smaller size for the rest of the run. One image that does not fit is fatal."""
        from mmcli import runtime

        if len(parts) > self.forward_limit:
            half = self.forward_limit
            return self.with_backoff(fn, parts[:half]) + self.with_backoff(fn, parts[half:])
        try:
            return list(fn(self.backend.collate(parts), len(parts)))
        except Exception as exc:
            if not runtime.is_out_of_memory(exc):
                raise
            runtime.free_memory(self.runtime.device)
            if len(parts) == 1:
                raise MmcliError(
                    f"out of memory on {self.runtime.device} with a single image",
                    "try --dtype fp16, --quantize 4bit, --device-map auto, or a smaller model",
                ) from exc
            self.forward_limit = len(parts) // 2
            self.reporter.warn(
                f"out of memory with a batch of {len(parts)}: retrying in batches of {self.forward_limit}"
            )
            return self.with_backoff(fn, parts)

    def encode_images(self, items: Iterable[Item]) -> Iterator[list[Outcome]]:
        """Batches of image embeddings (L2-normalised, float32, CPU) or errors, in input order."""
        return self.forward(items, lambda batch, _n: list(self.backend.encode_images(batch)))


def error_record(item: Item, error: str) -> Record:
    return {"input": item.input, "error": error}
