"""The image side of a run, shared by every task: read, look up the embedding cache, decode and preprocess in
worker threads a batch or two ahead of the model, batch, run the model with out-of-memory back-off.

``Loader`` is mixed into the Job (``run.job.JobSetup``); ``Backoff`` is also used by the Ray engine's actors.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import TYPE_CHECKING, Any

from mmcli.errors import InputError, MmcliError

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend, Batch
    from mmcli.modeling.runtime import Runtime
    from mmcli.run.cache import EmbeddingCache
    from mmcli.run.options import CommonOptions
    from mmcli.run.task import Outcome, Task
    from mmcli.sources.decoder import Decoders
    from mmcli.sources.inputs import Source


def batched(iterable: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(iterable)
    while chunk := list(islice(it, n)):
        yield chunk


class Loader:
    """Decoding, caching and batching for a Job (which sets these attributes)."""

    options: CommonOptions
    task: Task
    backend: Backend
    runtime: Runtime
    cache: EmbeddingCache | None
    backoff: Backoff
    decoders: Decoders
    wait_s: float
    compute_s: float

    @property
    def batch_size(self) -> int:
        if self.options.batch_size:
            return self.options.batch_size
        return 16 if self.runtime.device.type == "cpu" else 32

    @property
    def workers(self) -> int:
        """Loader threads, each with its decoder process; 0: one decoder process, no prefetch."""
        if self.options.workers is not None:
            return self.options.workers
        return min(8, max(2, os.cpu_count() or 2))

    def start_decoders(self) -> Decoders:
        """The isolated decoder processes, one per loader thread, started now (they start while the model
        loads)."""
        from mmcli.sources.decoder import Decoders

        self.decoders = Decoders(
            max(1, self.workers), self.options.decode_memory, self.options.decode_timeout
        )
        self.decoders.start()
        return self.decoders

    def close_decoders(self) -> None:
        decoders = getattr(self, "decoders", None)
        if decoders is not None:
            decoders.close()

    def _load(self, out: Outcome) -> Batch | None:
        from mmcli.sources.inputs import open_source

        source = open_source(out.item.input)
        backend, task = self.backend, self.task
        return load_one(
            out,
            source,
            self.cache,
            self.decoders,
            self.options.max_pixels,
            lambda images: task.preprocess(backend, images),
            thumbnails=getattr(self, "report", None) is not None,
        )

    def _load_safely(self, out: Outcome) -> tuple[Outcome, Batch | None]:
        if out.error is None and out.item.error:
            out.error = out.item.error
        if out.error is not None:
            return out, None
        try:
            return out, self._load(out)
        except InputError as exc:
            out.error = str(exc)
        except Exception as exc:  # a preprocessing bug must not sink the batch
            out.error = f"cannot preprocess: {exc}"
        return out, None

    def loaded(self, work: Iterable[Outcome]) -> Iterator[list[tuple[Outcome, Batch | None]]]:
        """Batches of (outcome, preprocessed), decoded by worker threads a batch or two ahead."""
        size = self.batch_size
        chunks = batched(work, size)
        if self.workers == 0:
            for chunk in chunks:
                start = time.perf_counter()
                loaded = [self._load_safely(out) for out in chunk]
                self.wait_s += time.perf_counter() - start
                yield loaded
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmcli-load")
        try:
            pending: deque[list[Future[tuple[Outcome, Batch | None]]]] = deque()
            for chunk in islice(chunks, 2):
                pending.append([pool.submit(self._load_safely, out) for out in chunk])
            while pending:
                current = pending.popleft()
                nxt = next(chunks, None)
                if nxt is not None:
                    pending.append([pool.submit(self._load_safely, out) for out in nxt])
                start = time.perf_counter()
                results = [future.result() for future in current]
                self.wait_s += time.perf_counter() - start
                yield results
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def forward(
        self, work: Iterable[Outcome], fn: Callable[[Batch, int], Sequence[Any]]
    ) -> Iterator[list[Outcome]]:
        """Batches of outcomes in input order: ``fn(collated, n)`` gives one value per decoded image."""
        for batch in self.loaded(work):
            todo = [(out, data) for out, data in batch if out.error is None and data is not None]
            if todo:
                start = time.perf_counter()
                values = self.with_backoff(fn, [data for _, data in todo])
                self.compute_s += time.perf_counter() - start
                for (out, _), value in zip(todo, values, strict=True):
                    out.value = value
            yield [out for out, _ in batch]

    def with_backoff(self, fn: Callable[[Batch, int], Sequence[Any]], parts: list[Batch]) -> list[Any]:
        """Run ``fn`` on the collated parts, halving the batch on out-of-memory (see Backoff)."""
        return self.backoff.run(lambda chunk: list(fn(self.backend.collate(chunk), len(chunk))), parts)

    def encode_images(self, work: Iterable[Outcome]) -> Iterator[list[Outcome]]:
        """Batches of image embeddings (L2-normalised, float32, CPU) or errors, in input order; cached
        embeddings are used as they are and new ones are stored."""
        for batch in self.forward(work, lambda collated, _n: self.task.encode(self.backend, collated)):
            if self.cache is not None:
                fresh = {
                    out.digest: out.value.numpy()
                    for out in batch
                    if out.digest and out.value is not None and not out.cached
                }
                if fresh:
                    self.cache.put_many(fresh)
            yield batch


def load_one(
    out: Outcome,
    source: Source,
    cache: EmbeddingCache | None,
    decoders: Decoders,
    max_pixels: int,
    preprocess: Callable[[list[Any]], Batch],
    thumbnails: bool = False,
) -> Batch | None:
    """Look up the cache, decode (in a decoder process), preprocess: one input, in a loader thread (or a
    server's). Every limit applies on every path: a cache hit still has its header checked (no pixels
    decoded). A hit leaves the embedding in ``out.value`` and returns None. ``thumbnails``: also keep a small
    JPEG of the pixels in ``out.thumbnail`` (--report)."""
    from mmcli.sources.inputs import decode_source

    if cache is not None:
        from mmcli.run.cache import digest_bytes, digest_file

        if source.path is not None:
            out.digest = digest_file(source.path)
        else:
            out.digest = digest_bytes(source.data or b"")
        hit = cache.get_many([out.digest]).get(out.digest)
        if hit is not None:
            import torch

            decoders.probe(source.path, source.data, max_pixels)
            out.value, out.cached = torch.from_numpy(hit), True
            return None
    decoded = decode_source(source, decoders, max_pixels)
    out.warning = decoded.warning
    if thumbnails:  # --report: from the pixels decoded anyway, not a second decode
        from mmcli.sinks.report.thumbs import thumbnail_jpeg

        out.thumbnail = thumbnail_jpeg(decoded.image)
    return preprocess([decoded.image])


class Backoff:
    """Out-of-memory back-off, for the local engine and each Ray actor: on out-of-memory halve the batch
    and retry, then remember the smaller size for the rest of the run. One image that does not fit is fatal."""

    def __init__(
        self, warn: Callable[[str], None] | None = None, device: Any = None, hint: str | None = None
    ):
        self.limit = 1 << 30
        self.warn = warn
        self.device = device
        self.hint = hint or "try --dtype fp16, --quantize 4bit, --device-map auto, or a smaller model"

    def run(self, fn: Callable[[list[Batch]], list[Any]], parts: list[Batch]) -> list[Any]:
        from mmcli.modeling import runtime

        if len(parts) > self.limit:
            half = self.limit
            return self.run(fn, parts[:half]) + self.run(fn, parts[half:])
        try:
            return fn(parts)
        except Exception as exc:
            if not runtime.is_out_of_memory(exc):
                raise
            if self.device is not None:
                runtime.free_memory(self.device)
            if len(parts) == 1:
                raise MmcliError(f"out of memory on {self.device} with a single image", self.hint) from exc
            self.limit = len(parts) // 2
            if self.warn is not None:
                self.warn(f"out of memory with a batch of {len(parts)}: retrying in batches of {self.limit}")
            return self.run(fn, parts)
