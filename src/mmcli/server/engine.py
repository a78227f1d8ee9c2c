"""The server's core: models kept loaded, and the work of many callers batched onto them.

``Engine.run`` is called from many threads at once (one per client request): each decodes its images in
the server's isolated decoder processes and preprocesses them in its own thread, then hands them to the
model's batcher, which runs one forward pass for the requests of the same task that arrive together
(``batching``), and computes the records back in the caller's thread. Models load on first use, stay for
``keep_alive`` seconds after their last request and, past ``max_models``, the least recently used idle one
is unloaded first.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmcli.errors import InputError, MmcliError
from mmcli.run.loader import Backoff, Outcome, load_one
from mmcli.run.remote import wire
from mmcli.run.remote.work import ImageInput, ItemResult, Limits, ModelKey, RunResult
from mmcli.server.batching import Batcher

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend, Batch
    from mmcli.modeling.registry import ModelSpec
    from mmcli.modeling.runtime import Runtime
    from mmcli.run.cache import EmbeddingCache
    from mmcli.run.task import Task
    from mmcli.sources.decoder import Decoders

PREPARED_TASKS = 32  # per model: label sets whose embeddings are kept


@dataclass
class Slot:
    """One loaded model and what it serves."""

    key: ModelKey
    spec: ModelSpec
    runtime: Runtime
    backend: Backend
    batcher: Batcher
    memory_bytes: int
    loaded_at: float
    last_used: float
    busy: int = 0
    requests: int = 0
    tasks: OrderedDict[str, Task] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Engine:
    def __init__(
        self,
        keep_alive: float | None = 300.0,
        max_models: int = 2,
        batch_wait: float = 0.005,
        workers: int | None = None,
        log: Any = None,
    ) -> None:
        self.keep_alive = keep_alive or None  # 0 and None: forever
        self.max_models = max(1, max_models)
        self.batch_wait = batch_wait
        self.workers = workers or min(8, max(2, os.cpu_count() or 2))
        self.log = log or (lambda line: None)
        self.started = time.time()
        self.slots: dict[ModelKey, Slot] = {}
        self._loading: dict[ModelKey, threading.Lock] = {}
        self._specs: dict[tuple[str, str | None], ModelSpec] = {}
        self._lock = threading.RLock()
        self._decoders: dict[tuple[int, float], Decoders] = {}
        self._caches: dict[tuple[str, str], EmbeddingCache] = {}
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmcli-serve-prep")
        self._closed = threading.Event()
        self.unloaded: list[str] = []  # labels of models unloaded for idleness or room, oldest first
        self._past_passes = 0  # forward passes of models since unloaded
        self._reaper = threading.Thread(target=self._reap, name="mmcli-serve-reaper", daemon=True)
        self._reaper.start()

    # -- models ---------------------------------------------------------------------------------------
    def spec(self, key: ModelKey) -> ModelSpec:
        from mmcli.modeling import registry

        found = self._specs.get((key.name, key.revision))
        if found is None:
            found = registry.resolve(key.name, key.revision)
            self._specs[(key.name, key.revision)] = found
        return found

    def _slot(self, key: ModelKey) -> Slot:
        """The loaded model for ``key``, loading it now if needed (callers for the same key wait)."""
        with self._lock:
            slot = self.slots.get(key)
            if slot is not None:
                slot.busy += 1
                return slot
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                slot = self.slots.get(key)
                if slot is not None:
                    slot.busy += 1
                    return slot
            self._make_room()
            slot = self._load(key)
            with self._lock:
                self.slots[key] = slot
                self._loading.pop(key, None)
                slot.busy += 1
                return slot

    def _load(self, key: ModelKey) -> Slot:
        from mmcli.modeling import registry, runtime
        from mmcli.modeling.backends.base import LoadOptions

        spec = self.spec(key)
        start = time.perf_counter()
        rt = runtime.resolve(key.device, key.dtype, spec.dtype)
        if not spec.is_local:
            registry.hub_offline(key.offline)
        options = LoadOptions.of(key)
        backend = registry.create_backend(spec, rt, options)
        now = time.time()
        batcher = Batcher(backend, Backoff(self.log, rt.device), self.batch_wait, spec.label)
        slot = Slot(key, spec, rt, backend, batcher, model_bytes(backend), now, now)
        self.log(
            f"loaded {spec.label} on {rt.device_name} {rt.dtype_name} in {time.perf_counter() - start:.1f} s"
        )
        return slot

    def _make_room(self) -> None:
        """Past ``max_models``, unload the least recently used idle model."""
        with self._lock:
            while len(self.slots) >= self.max_models:
                idle = [s for s in self.slots.values() if s.busy == 0]
                if not idle:
                    return  # every model is working: load one more rather than wait
                self._unload(min(idle, key=lambda s: s.last_used), "to make room")

    def _unload(self, slot: Slot, why: str) -> None:
        from mmcli.modeling import runtime

        self.slots.pop(slot.key, None)
        slot.batcher.close()
        self._past_passes += slot.batcher.forward_passes
        device = slot.runtime.device
        del slot.backend
        slot.tasks.clear()
        gc.collect()
        runtime.free_memory(device)
        self.unloaded.append(slot.spec.label)
        self.log(f"unloaded {slot.spec.label} ({why})")

    def _reap(self) -> None:
        while not self._closed.wait(0.5):
            if self.keep_alive is None:
                continue
            now = time.time()
            with self._lock:
                for slot in list(self.slots.values()):
                    if slot.busy == 0 and now - slot.last_used > self.keep_alive:
                        self._unload(slot, f"idle for {now - slot.last_used:.0f} s")

    def _release(self, slot: Slot) -> None:
        with self._lock:
            slot.busy -= 1
            slot.last_used = time.time()

    def _prepared(self, slot: Slot, task: Task) -> Task:
        """The task, prepared on this model once (a classify's label embeddings) and kept for the next
        request with the same labels and options."""
        from mmcli.modeling import registry

        name = wire.key(wire.encode(task))
        with slot.lock:
            found = slot.tasks.get(name)
            if found is not None:
                slot.tasks.move_to_end(name)
                return found
            if task.needs:
                registry.require(slot.spec, set(task.needs), task.name)
            task.model = task.model or slot.spec.label  # the CLI sends the label it would write
            task.prepare(slot.backend)
            slot.tasks[name] = task
            while len(slot.tasks) > PREPARED_TASKS:
                slot.tasks.popitem(last=False)
            return task

    # -- work -----------------------------------------------------------------------------------------
    def run(
        self, key: ModelKey, task: Task, items: list[ImageInput], limits: Limits, client: object = None
    ) -> RunResult:
        slot = self._slot(key)
        try:
            slot.requests += 1
            task = self._prepared(slot, task)
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
        finally:
            self._release(slot)

    def leading(self, key: ModelKey, task: Task) -> list[dict[str, Any]]:
        """Records that belong to no image (embed --text)."""
        slot = self._slot(key)
        try:
            task = self._prepared(slot, task)
            return slot.batcher.call(lambda backend: task.leading(backend))
        finally:
            self._release(slot)

    def describe(self, key: ModelKey) -> dict[str, str]:
        """Load the model (if needed) and say what it runs on: for a client's summary line."""
        slot = self._slot(key)
        try:
            return {
                "label": slot.spec.label,
                "device": slot.runtime.device_name,
                "dtype": slot.runtime.dtype_name,
            }
        finally:
            self._release(slot)

    def forget(self, client: object) -> None:
        """A client went away: batchers stop waiting for it."""
        with self._lock:
            slots = list(self.slots.values())
        for slot in slots:
            slot.batcher.forget(client)

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
        with self._lock:
            models = [
                {
                    "name": s.key.name,
                    "label": s.spec.label,
                    "device": s.runtime.device_name,
                    "dtype": s.runtime.dtype_name,
                    "memory_bytes": s.memory_bytes,
                    "idle_s": 0.0 if s.busy else round(now - s.last_used, 1),
                    "requests": s.requests,
                    "forward_passes": s.batcher.forward_passes,
                }
                for s in self.slots.values()
            ]
            passes = self._past_passes + sum(s.batcher.forward_passes for s in self.slots.values())
        return {
            "pid": os.getpid(),
            "uptime_s": round(now - self.started, 1),
            "keep_alive_s": self.keep_alive or 0,
            "max_models": self.max_models,
            "models": models,
            "unloaded": list(self.unloaded[-20:]),
            "forward_passes": passes,
        }

    def busy(self) -> int:
        with self._lock:
            return sum(s.busy for s in self.slots.values())

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for slot in list(self.slots.values()):
                slot.batcher.close()
            self.slots.clear()
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


def model_bytes(backend: Any) -> int:
    """Bytes of the parameters and buffers of the torch modules a backend holds."""
    import torch

    seen: set[int] = set()
    total = 0
    for value in vars(backend).values():
        if isinstance(value, torch.nn.Module):
            for tensor in [*value.parameters(), *value.buffers()]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    total += tensor.numel() * tensor.element_size()
    return total


__all__ = ["Engine", "ImageInput", "ItemResult", "Limits", "MmcliError", "ModelKey", "RunResult"]
