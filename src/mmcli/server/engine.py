"""The server's core: models kept loaded, and the work of many callers batched onto them.

``Engine.run`` is called from many threads at once (one per client request): each decodes its images in
the server's isolated decoder processes and preprocesses them in its own thread, then hands them to the
model's batcher, which runs one forward pass for the requests of the same task that arrive together
(``batching``), and computes the records back in the caller's thread. Models load on first use, stay for
``keep_alive`` seconds after their last request and, past ``max_models``, the least recently used idle one
is unloaded first (``slots``).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mmcli.errors import InputError, MmcliError
from mmcli.run.loader import load_one
from mmcli.run.remote.work import ImageInput, ItemResult, Limits, ModelKey, RunResult
from mmcli.run.task import Outcome
from mmcli.server.slots import ModelSlots, Slot

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Batch
    from mmcli.modeling.registry import ModelSpec
    from mmcli.run.cache import EmbeddingCache
    from mmcli.run.task import Task
    from mmcli.sources.decoder import Decoders


class Engine:
    def __init__(
        self,
        keep_alive: float | None = 300.0,
        max_models: int = 2,
        batch_wait: float = 0.005,
        workers: int | None = None,
        log: Any = None,
    ) -> None:
        self.workers = workers or min(8, max(2, os.cpu_count() or 2))
        self.log = log or (lambda line: None)
        self.started = time.time()
        self._lock = threading.Lock()  # the decoders and caches below
        self._decoders: dict[tuple[int, float], Decoders] = {}
        self._caches: dict[tuple[str, str], EmbeddingCache] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmcli-serve-prep")
        self.models = ModelSlots(keep_alive, max_models, batch_wait, self.log)

    def spec(self, key: ModelKey) -> ModelSpec:
        return self.models.spec(key)

    # -- work -----------------------------------------------------------------------------------------
    def run(
        self, key: ModelKey, task: Task, items: list[ImageInput], limits: Limits, client: object = None
    ) -> RunResult:
        with self.models.using(key) as slot:
            slot.requests += 1
            task = self.models.prepared(slot, task)
            cache = self._cache(slot, limits, task) if task.embeds_images and limits.use_cache else None
            outcomes = [Outcome(_item(item), error=item.error) for item in items]
            slot.batcher.arriving(client, task)
            try:
                loaded = self._load_all(slot, task, items, outcomes, cache, limits)
            finally:
                slot.batcher.arrived(client, task)
            todo = [(out, data) for out, data in zip(outcomes, loaded, strict=True) if data is not None]
            if todo:
                values = slot.batcher.submit(task, [data for _, data in todo], client)
                for (out, _), value in zip(todo, values, strict=True):
                    out.value = value
            if cache is not None:
                fresh = {
                    o.digest: o.value.numpy()
                    for o in outcomes
                    if o.digest and o.value is not None and not o.cached
                }
                if fresh:
                    cache.put_many(fresh)
            good = [out for out in outcomes if out.error is None and out.value is not None]
            produced = iter(task.records(good) if good else [])
            results = []
            for out in outcomes:
                if out.error is None and out.value is not None:
                    results.append(ItemResult(records=next(produced), warning=out.warning))
                else:
                    results.append(ItemResult(error=out.error or "no result", warning=out.warning))
            hits = sum(1 for o in outcomes if o.cached)
            misses = sum(1 for o in outcomes if o.digest and not o.cached)
            return RunResult(
                results, slot.spec.label, slot.runtime.device_name, slot.runtime.dtype_name, hits, misses
            )

    def leading(self, key: ModelKey, task: Task) -> list[dict[str, Any]]:
        """Records that belong to no image (embed --text)."""
        with self.models.using(key) as slot:
            task = self.models.prepared(slot, task)
            return slot.batcher.call(lambda backend: task.leading(backend))

    def describe(self, key: ModelKey) -> dict[str, str]:
        """Load the model (if needed) and say what it runs on: for a client's summary line."""
        with self.models.using(key) as slot:
            return {
                "label": slot.spec.label,
                "device": slot.runtime.device_name,
                "dtype": slot.runtime.dtype_name,
            }

    def forget(self, client: object) -> None:
        """A client went away: batchers stop waiting for it."""
        self.models.forget(client)

    def _load_all(
        self,
        slot: Slot,
        task: Task,
        items: list[ImageInput],
        outcomes: list[Outcome],
        cache: EmbeddingCache | None,
        limits: Limits,
    ) -> list[Batch | None]:
        decoders = self._decoders_for(limits)
        backend = slot.backend

        def preprocess(images: list[Any]) -> Batch:
            return task.preprocess(backend, images)  # the Task's hook, as in the CLI's own process

        def one(i: int) -> Batch | None:
            from mmcli.sources.inputs import Source

            out, item = outcomes[i], items[i]
            if out.error is not None:
                return None
            if item.path is not None:
                source = Source(path=item.path)
            else:
                source = Source(data=item.data or b"", content_type=item.content_type)
            try:
                return load_one(out, source, cache, decoders, limits.max_pixels, preprocess)
            except InputError as exc:
                out.error = str(exc)
            except Exception as exc:  # a preprocessing bug must not sink the request
                out.error = f"cannot preprocess: {exc}"
            return None

        if len(items) == 1:
            return [one(0)]
        return list(self._pool.map(one, range(len(items))))

    def _decoders_for(self, limits: Limits) -> Decoders:
        from mmcli.sources.decoder import Decoders

        key = (limits.decode_memory, limits.decode_timeout)
        with self._lock:
            found = self._decoders.get(key)
            if found is None:
                found = self._decoders[key] = Decoders(
                    self.workers, limits.decode_memory, limits.decode_timeout
                )
                found.start()
            return found

    def _cache(self, slot: Slot, limits: Limits, task: Task) -> EmbeddingCache:
        from mmcli import paths
        from mmcli.run.cache import EmbeddingCache
        from mmcli.run.task import cache_namespace

        directory = str(paths.cache_dir(limits.cache_dir))
        namespace = cache_namespace(slot.spec, slot.runtime, task)
        with self._lock:
            found = self._caches.get((directory, namespace))
            if found is None:
                found = EmbeddingCache(paths.cache_dir(limits.cache_dir), namespace, warn=self.log)
                self._caches[(directory, namespace)] = found
            return found

    def warm_decoders(self) -> None:
        """Start the default decoder processes now, so the first request does not wait for them."""
        self._decoders_for(Limits())

    # -- state ----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        now = time.time()
        return {"pid": os.getpid(), "uptime_s": round(now - self.started, 1), **self.models.status(now)}

    def close(self) -> None:
        self.models.close()
        with self._lock:
            for decoders in self._decoders.values():
                decoders.close()
            self._decoders.clear()
            for cache in self._caches.values():
                cache.close()
            self._caches.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _item(item: ImageInput) -> Any:
    from mmcli.sources.inputs import Item

    return Item(item.name, error=item.error) if item.error else Item(item.name)


__all__ = ["Engine", "ImageInput", "ItemResult", "Limits", "MmcliError", "ModelKey", "RunResult"]
