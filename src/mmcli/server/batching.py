"""Dynamic batching: the requests for one model and task that arrive together share a forward pass.

Each loaded model has one batcher thread, which runs every forward pass of that model (so the model is
never used by two threads at once). When it takes a request it waits, at most ``wait`` seconds, for the
requests it can expect soon to join it: those of clients still decoding theirs, and those of clients that
sent one for this task in the last second and have none queued (eight shells each sending an image at a
time send their next ones just after their answers). A lone client never waits. A batch holds at most
``max_batch`` images (16 on a CPU, 32 on a GPU, as a run in the process), except that one request is never
split: a client's batch is computed as the same batch as without the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend, Batch
    from mmcli.run.loader import Backoff
    from mmcli.run.task import Task

RECENT_S = 1.0


class Work:
    __slots__ = ("client", "done", "error", "parts", "task", "values")

    def __init__(self, task: Task, parts: list[Batch], client: object) -> None:
        self.task = task
        self.parts = parts
        self.client = client
        self.done = threading.Event()
        self.values: list[Any] = []
        self.error: BaseException | None = None


class Batcher:
    def __init__(self, backend: Backend, backoff: Backoff, wait: float, label: str) -> None:
        self.backend = backend
        self.backoff = backoff
        self.wait = wait
        self.max_batch = 16 if backend.runtime.device.type == "cpu" else 32
        self.forward_passes = 0
        self.images = 0
        self._cond = threading.Condition()
        self._queue: list[Work] = []
        self._arriving: dict[int, dict[object, int]] = {}  # task id -> client -> requests decoding
        self._recent: dict[int, dict[object, float]] = {}  # task id -> client -> last request time
        self._model_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"mmcli-batch-{label}", daemon=True)
        self._thread.start()

    # -- the callers' side ----------------------------------------------------------------------------
    def arriving(self, client: object, task: Task) -> None:
        """``client`` is decoding a request for ``task``: a batch being formed waits for it."""
        if client is None:
            return
        with self._cond:
            clients = self._arriving.setdefault(id(task), {})
            clients[client] = clients.get(client, 0) + 1

    def arrived(self, client: object, task: Task) -> None:
        if client is None:
            return
        with self._cond:
            clients = self._arriving.get(id(task), {})
            if clients.get(client, 0) <= 1:
                clients.pop(client, None)
            else:
                clients[client] -= 1
            self._cond.notify_all()

    def submit(self, task: Task, parts: list[Batch], client: object = None) -> list[Any]:
        """One value per part (an embedding row, a caption, ...), computed with other callers' parts."""
        work = Work(task, parts, client)
        with self._cond:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._queue.append(work)
            if client is not None:
                self._recent.setdefault(id(task), {})[client] = time.monotonic()
            self._cond.notify_all()
        work.done.wait()
        if work.error is not None:
            raise work.error
        return work.values

    def call(self, fn: Callable[[Backend], Any]) -> Any:
        """Run ``fn`` with the model, between forward passes (embed --text)."""
        with self._model_lock:
            return fn(self.backend)

    def forget(self, client: object) -> None:
        with self._cond:
            for clients in self._recent.values():
                clients.pop(client, None)
            for waiting in self._arriving.values():
                waiting.pop(client, None)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for work in self._queue:
                work.error = RuntimeError("the model was unloaded")
                work.done.set()
            self._queue.clear()
            self._cond.notify_all()

    # -- the batcher thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                group = self._gather()
            if group:
                self._forward(group)

    def _gather(self) -> list[Work]:
        """The works that share the next forward pass (called holding the lock; may wait on it)."""
        task = self._queue[0].task
        deadline = time.monotonic() + self.wait
        while True:
            group, total = self._group(task)
            if total >= self.max_batch:
                break
            present = {work.client for work in group}
            now = time.monotonic()
            expected = [c for c in self._arriving.get(id(task), {}) if c not in present]
            expected += [
                c
                for c, seen in self._recent.get(id(task), {}).items()
                if now - seen < RECENT_S and c not in present
            ]
            remaining = deadline - now
            if not expected or remaining <= 0:
                break
            self._cond.wait(remaining)
            if self._closed:
                return []
        for work in group:
            self._queue.remove(work)
        return group

    def _group(self, task: Task) -> tuple[list[Work], int]:
        group: list[Work] = []
        total = 0
        clients: set[int] = set()
        for work in self._queue:
            if work.task is not task:
                continue
            if work.client is not None and id(work.client) in clients:
                continue  # a client's own requests stay apart: its batches are the ones it would run
            if group and total + len(work.parts) > self.max_batch:
                break
            if work.client is not None:
                clients.add(id(work.client))
            group.append(work)
            total += len(work.parts)
        return group, total

    def _forward(self, group: list[Work]) -> None:
        task = group[0].task
        parts = [part for work in group for part in work.parts]
        backend = self.backend

        def run(chunk: list[Batch]) -> list[Any]:
            collated = backend.collate(chunk)
            if task.embeds_images:
                return task.encode(backend, collated)
            return list(task.compute(backend, collated, len(chunk)))

        try:
            with self._model_lock:
                values = self.backoff.run(run, parts)
                self.forward_passes += 1
                self.images += len(parts)
        except BaseException as exc:
            for work in group:
                work.error = exc
                work.done.set()
            return
        start = 0
        for work in group:
            work.values = values[start : start + len(work.parts)]
            start += len(work.parts)
            work.done.set()
