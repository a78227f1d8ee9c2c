"""A Job's run with its model in a running ``mmcli serve``: send it the work, get the records back.

Everything but the model stays here: expanding the inputs, resume, the output file and its lock, sidecars,
progress and the summary (the Job's own code, ``run.lifecycle``), so a run through a server writes what a
run without one writes. Inputs are read here (a URL is fetched here) and sent as bytes; the server decodes
them in its isolated decoder processes with this run's limits. A file over ``SEND_MAX`` is not copied: the
server reads it from its path. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mmcli import paths as user_paths
from mmcli.errors import InputError
from mmcli.run.loader import batched
from mmcli.run.remote import wire
from mmcli.run.remote.work import ImageInput, Limits, ModelKey
from mmcli.run.task import Outcome, Task

if TYPE_CHECKING:
    from mmcli.run.lifecycle import JobRun
    from mmcli.run.remote.client import Remote

SEND_MAX = 64 << 20
IN_FLIGHT = 2  # requests a run keeps at the server: one computing while the next is decoded


def model_key(job: JobRun) -> ModelKey:
    spec, options = job.spec, job.options
    name = os.path.abspath(spec.checkpoint) if spec.is_local and spec.name not in _aliases() else spec.name
    return ModelKey(
        name=name,
        revision=spec.revision,
        device=options.device,
        dtype=options.dtype,
        device_map=options.device_map,
        quantize=options.quantize,
        trust_remote_code=options.trust_remote_code,
        allow_pickle=options.allow_pickle,
        offline=options.offline,
    )


def _aliases() -> dict[str, Any]:
    from mmcli.modeling import registry

    return registry.aliases()


def limits_of(job: JobRun) -> Limits:
    options = job.options
    return Limits(
        max_pixels=options.max_pixels,
        decode_memory=options.decode_memory,
        decode_timeout=options.decode_timeout,
        use_cache=not options.no_cache,
        cache_dir=str(user_paths.cache_dir(options.cache_dir).absolute()),  # this process's, not the server's
    )


def execute(job: JobRun, inputs: list[str]) -> int:
    """``Job.execute`` with the model in the server: the same records, statuses and summary."""
    remote = job.remote
    assert remote is not None
    task, key = job.task, model_key(job)
    remote.describe(key)  # a model that cannot load fails here, before any record, as in the process

    def body() -> None:
        if type(task).leading is not Task.leading:
            job.write_leading(remote.leading(key, task))
        job.write_batches(results(job, remote, key, task, job.pending(job.items(inputs))))

    return job.run(body, inputs)


def results(
    job: JobRun, remote: Remote, key: ModelKey, task: Task, work: Iterable[Outcome]
) -> Iterator[list[tuple[Outcome, list[dict[str, Any]] | None]]]:
    """Batches of (outcome, its records), in input order; a few requests in flight, the next batch's
    files read by worker threads while the server computes."""
    import time

    size = job.options.batch_size or (16 if remote.device.startswith("cpu") else 32)
    encoded = wire.encode(task)
    limits = limits_of(job)
    pool = ThreadPoolExecutor(max(1, job.workers), thread_name_prefix="mmcli-read")
    pending: deque[tuple[list[Outcome], int]] = deque()
    chunks = batched(work, size)
    try:
        while True:
            chunk = next(chunks, None)
            if chunk is not None:
                items = list(pool.map(read_input, chunk))
                sent = [(out, item) for out, item in zip(chunk, items, strict=True) if out.error is None]
                ident = remote.send_run(key, encoded, [item for _, item in sent], limits) if sent else 0
                pending.append((chunk, ident))
                if len(pending) < IN_FLIGHT:
                    continue
            if not pending:
                return
            chunk, ident = pending.popleft()
            start = time.perf_counter()
            answer = remote.receive_run(ident).items if ident else []
            job.compute_s += time.perf_counter() - start
            answers = iter(answer)
            batch: list[tuple[Outcome, list[dict[str, Any]] | None]] = []
            for out in chunk:
                if out.error is not None:
                    batch.append((out, None))
                    continue
                result = next(answers)
                out.warning = result.warning
                out.error = result.error
                batch.append((out, result.records))
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def read_input(out: Outcome) -> ImageInput:
    """An input as the server gets it: its bytes (a URL fetched here), or the path of a very large file."""
    from mmcli.sources.inputs import describe_error, open_source

    name = out.item.input
    if out.error is None and out.item.error:
        out.error = out.item.error
    if out.error is not None:
        return ImageInput(name, error=out.error)
    try:
        source = open_source(name)
        if source.data is not None:
            return ImageInput(name, data=source.data, content_type=source.content_type)
        assert source.path is not None
        if os.path.getsize(source.path) > SEND_MAX:
            return ImageInput(name, path=os.path.abspath(source.path))
        with open(source.path, "rb") as f:
            return ImageInput(name, data=f.read())
    except InputError as exc:
        out.error = str(exc)
    except OSError as exc:
        out.error = describe_error(exc)
    return ImageInput(name, error=out.error)
