"""The models a server keeps loaded: one ``Slot`` each, loaded on first use (callers for the same model wait
for one load), kept ``keep_alive`` seconds after their last request and, past ``max_models``, the least
recently used idle one unloaded first; and per model, the tasks already prepared on it.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mmcli.run.loader import Backoff
from mmcli.run.remote import wire
from mmcli.run.remote.work import ModelKey
from mmcli.server.batching import Batcher

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend
    from mmcli.modeling.registry import ModelSpec
    from mmcli.modeling.runtime import Runtime
    from mmcli.run.task import Task

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


class ModelSlots:
    """The loaded models, each with its batcher; a reaper thread unloads those idle past ``keep_alive``."""

    def __init__(self, keep_alive: float | None, max_models: int, batch_wait: float, log: Any) -> None:
        self.keep_alive = keep_alive or None  # 0 and None: forever
        self.max_models = max(1, max_models)
        self.batch_wait = batch_wait
        self.log = log
        self.slots: dict[ModelKey, Slot] = {}
        self._loading: dict[ModelKey, threading.Lock] = {}
        self._specs: dict[tuple[str, str | None], ModelSpec] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self.unloaded: list[str] = []  # labels of models unloaded for idleness or room, oldest first
        self._past_passes = 0  # forward passes of models since unloaded
        self._reaper = threading.Thread(target=self._reap, name="mmcli-serve-reaper", daemon=True)
        self._reaper.start()

    def spec(self, key: ModelKey) -> ModelSpec:
        from mmcli.modeling import registry

        found = self._specs.get((key.name, key.revision))
        if found is None:
            found = registry.resolve(key.name, key.revision)
            self._specs[(key.name, key.revision)] = found
        return found

    @contextmanager
    def using(self, key: ModelKey) -> Iterator[Slot]:
        """The loaded model for ``key`` (loaded now if needed), busy while the block runs."""
        slot = self._acquire(key)
        try:
            yield slot
        finally:
            self._release(slot)

    def _acquire(self, key: ModelKey) -> Slot:
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

    def _release(self, slot: Slot) -> None:
        with self._lock:
            slot.busy -= 1
            slot.last_used = time.time()

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

    def prepared(self, slot: Slot, task: Task) -> Task:
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

    def forget(self, client: object) -> None:
        """A client went away: batchers stop waiting for it."""
        with self._lock:
            slots = list(self.slots.values())
        for slot in slots:
            slot.batcher.forget(client)

    # -- state ----------------------------------------------------------------------------------------
    def status(self, now: float) -> dict[str, Any]:
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
            "keep_alive_s": self.keep_alive or 0,
            "max_models": self.max_models,
            "models": models,
            "unloaded": list(self.unloaded[-20:]),
            "forward_passes": passes,
        }

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for slot in list(self.slots.values()):
                slot.batcher.close()
            self.slots.clear()


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
