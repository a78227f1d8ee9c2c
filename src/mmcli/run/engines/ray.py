"""``--engine ray``: the same records as the local engine, computed with Ray Data.

The driver (this process) lists the inputs (``Job.items``: paths, directories, globs, stdin, --manifest) and
skips those already in --output (``Job.pending``, as locally). Ray then runs, streaming:

  from_items(rows) -> map(decode: mmcli's safe loader, on CPU workers)
                   -> map_batches(Predictor: one model per actor, preprocess + collate + forward + records)

and the records come back one of two ways:
  - --output FILE or stdout: streamed to the driver (``iter_batches``, input order kept) and written by the
    Job's own writer, so every format, --max-errors, resume and the summary behave as locally;
  - --output URL/ (``s3://bucket/dir/``, ``file:///...``): written by Ray's workers straight to part files
    (jsonl or parquet) in that directory; a second run reads the ``key`` column there and skips what is done.

Ray's traps measured here (see ../shared/notes.md): actors that take every CPU deadlock the read stage, so
CPU actors get fractional CPUs; usage stats are off; a local Ray started here is shut down at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mmcli.errors import MmcliError, UsageError
from mmcli.run.task import Task

if TYPE_CHECKING:
    from mmcli.run.lifecycle import JobRun
    from mmcli.run.task import Outcome
    from mmcli.sinks.output import Record

INSTALL_HINT = "pip install 'mmcli[ray]'"
SUPPORTED_TASKS = ("classify", "caption", "vqa", "embed")
URL_FORMATS = ("jsonl", "parquet")
CPU_ACTOR_SHARE = 0.5  # of a CPU, reserved per CPU-only actor: never all of them (silent deadlock)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How the job is laid out on the cluster."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int  # torch threads per CPU actor (0: leave torch's default)
    batch_size: int
    local: bool  # a Ray started by this process

    @property
    def where(self) -> str:
        kind = f"{self.gpus_per_actor:g} GPU" if self.gpus_per_actor else "CPU"
        return f"ray: {self.actors} actor{'s' if self.actors != 1 else ''} x {kind}"


class _Where:
    """What the run summary names as the device (``Job.finish`` reads these two)."""

    def __init__(self, device: str, dtype: str) -> None:
        self.device_name, self.dtype_name = device, dtype


class _NoWriter:
    """Stands in for the Job's writer when Ray's workers write the output directory themselves: its ``done``
    is the keys already in the directory, so ``Job.pending`` skips finished inputs as it does locally."""

    keyed = True

    def __init__(self, done: set[str]) -> None:
        self.done = done

    def keep(self, key: str) -> None:
        pass

    def write(self, record: Record) -> None:
        raise AssertionError("records go to the output directory through Ray")

    def flush(self) -> None:
        pass

    def close(self, complete: bool = True) -> None:
        pass

    def release(self) -> None:
        pass


def import_ray() -> Any:
    try:
        import ray.data

        import ray
    except ImportError as exc:
        raise UsageError("--engine ray needs Ray Data, which is not installed", INSTALL_HINT) from exc
    return ray


def directory_url(output: str | None) -> str | None:
    """``--output`` as a directory URL (``s3://bucket/dir/``, ``file:///data/out/``), or None for a file."""
    return output if output and "://" in output else None


def run(job: JobRun, inputs: Sequence[str]) -> int:
    """Run ``job`` on Ray; returns the exit status, as ``Job.execute`` does."""
    task, options = job.task, job.options
    if task.name not in SUPPORTED_TASKS:
        raise UsageError(
            f"--engine ray does not run {task.name}",
            f"it runs {', '.join(SUPPORTED_TASKS)}; {task.name} runs with --engine local",
        )
    url = directory_url(options.output)
    if url is not None:
        if job.format not in URL_FORMATS:
            raise UsageError(f"--output {url}: a directory URL takes --format jsonl or parquet")
        if (
            type(task).deliver is not Task.deliver
            and task.client_only
            and any(getattr(task, name, None) is not None for name in task.client_only)
        ):
            raise UsageError(
                f"--output {url}: {task.name}'s files beside the images (--sidecar) are written by this "
                "process, and a directory URL's records never pass through it",
                "use a local --output file with --sidecar",
            )
        if options.strict or options.max_errors is not None:
            raise UsageError(
                "--strict and --max-errors need records to pass through this process",
                "use a local --output file, or drop them for a directory URL",
            )
    ray = import_ray()
    started = connect(ray, options.ray_address)
    try:
        plan = make_plan(ray, job, local=options.ray_address == "local")
        job.runtime = cast(Any, _Where(plan.where, options.dtype))
        configure_data(ray, show_progress=url is not None and job.reporter.show_progress)

        def body() -> None:
            try:
                if url is None:
                    stream(ray, job, inputs, plan)
                else:
                    write_directory(ray, job, inputs, plan, url)
            except MmcliError:
                raise
            except Exception as exc:
                explained = find_mmcli_error(exc)
                if explained is not None:
                    raise explained from None
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise MmcliError(f"the Ray job failed: {first_line(exc)}") from exc

        return job.run(body, inputs)
    finally:
        if started:
            ray.shutdown()


# -- the cluster ---------------------------------------------------------------------------------------
def connect(ray: Any, address: str) -> bool:
    """Join (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``) or start (``local``) a Ray cluster; True when
    this call started or joined one (and must shut it down). A Ray already initialised here is reused."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address == "local":
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:
        where = "a local Ray" if address == "local" else f"the Ray cluster at {address}"
        raise MmcliError(
            f"cannot start or reach {where}: {first_line(exc)}",
            "start one with `ray start --head --port PORT`, or use --ray-address local",
        ) from exc
    return True


def make_plan(ray: Any, job: JobRun, local: bool) -> Plan:
    options = job.options
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    per_actor = options.gpus_per_actor
    if not per_actor and gpus and options.device not in ("cpu", "mps"):
        per_actor = 1.0  # a GPU cluster: one GPU per replica unless told otherwise
    if options.actors:
        actors = options.actors
    else:
        actors = max(1, int(gpus // per_actor)) if per_actor else 1
    if per_actor and actors * per_actor > gpus:
        job.reporter.warn(
            f"{actors} actors x {per_actor:g} GPUs, but the cluster has {gpus:g} GPUs now: "
            "the actors wait for more (an autoscaling cluster adds them)"
        )
    if per_actor:
        cpus_per_actor, threads = 1.0, 0
    else:
        cpus_per_actor = max(0.05, min(CPU_ACTOR_SHARE, (cpus - 1) / actors)) if cpus > 1 else 0.25
        threads = max(1, int(cpus // actors))
    batch_size = options.batch_size or (32 if per_actor else 16)
    return Plan(actors, cpus_per_actor, per_actor, threads, batch_size, local)


def configure_data(ray: Any, show_progress: bool) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # records in input order, as locally
    ctx.enable_progress_bars = show_progress  # streamed runs draw mmcli's own bar
    ctx.print_on_execution_start = False
    for handler in logging.getLogger("ray.data").handlers:  # mmcli reports failures itself, in one line;
        if "File" not in type(handler).__name__:  # Ray's session log file keeps everything
            handler.setLevel(logging.CRITICAL)


# -- the dataset ---------------------------------------------------------------------------------------
def shipped_spec(job: JobRun) -> Any:
    """The spec as the workers need it: a local checkpoint as an absolute path (their cwd differs)."""
    spec = job.spec
    if spec.is_local:
        return dataclasses.replace(spec, checkpoint=str(Path(spec.checkpoint).resolve()))
    return spec


def row_for(idx: int, out: Outcome) -> dict[str, Any]:
    from mmcli.sources.inputs import is_url

    name = out.item.input
    path = name if is_url(name) else os.path.abspath(name)
    return {
        "idx": idx,
        "name": os.fsencode(name),
        "path": os.fsencode(path),
        "keys": json.dumps(out.keys),
        "error": out.item.error or "",
    }


def build(ray: Any, job: JobRun, rows: list[dict[str, Any]], plan: Plan) -> Any:
    from mmcli.run.engines import ray_stages as stages

    remote: dict[str, Any] = {"num_cpus": plan.cpus_per_actor}
    if plan.gpus_per_actor:
        remote["num_gpus"] = plan.gpus_per_actor
    if plan.local:  # else Ray logs a warning about restartable actors on stderr
        remote["max_restarts"] = 0
    ds = ray.data.from_items(rows)
    limits = {
        "max_pixels": job.options.max_pixels,
        "memory": job.options.decode_memory,
        "timeout": job.options.decode_timeout,
    }
    ds = ds.map(stages.decode, fn_kwargs=limits)
    with warnings.catch_warnings():  # Ray 2.60 deprecates passing max_restarts this way, with no other
        warnings.simplefilter("ignore")
        return ds.map_batches(
            stages.Predictor,
            fn_constructor_kwargs={
                "spec": shipped_spec(job),
                "task": job.task,
                "options": job.options,
                "threads": plan.threads,
            },
            batch_size=plan.batch_size,
            batch_format="numpy",
            concurrency=plan.actors,
            **remote,
        )


def leading(ray: Any, job: JobRun, plan: Plan) -> list[Record]:
    """``task.leading`` records (embed --text), computed in a Ray task with an actor's resources, each with
    its resume key (as ``Job.leading_key`` keys them)."""
    if type(job.task).leading is Task.leading:
        return []
    from mmcli.run.engines import ray_stages as stages

    remote: dict[str, Any] = {"num_cpus": plan.cpus_per_actor, "num_gpus": plan.gpus_per_actor}
    fn = ray.remote(**remote)(stages.leading_records)
    records: list[Record] = json.loads(ray.get(fn.remote(shipped_spec(job), job.task, job.options)))
    return [record | {"key": job.leading_key(record)} for record in records]


# -- output streamed to this process ---------------------------------------------------------------------
def stream(ray: Any, job: JobRun, inputs: Sequence[str], plan: Plan) -> None:
    job.write_leading([{k: v for k, v in record.items() if k != "key"} for record in leading(ray, job, plan)])
    outcomes: dict[int, Outcome] = {}
    rows = []
    for idx, out in enumerate(job.pending(job.items(inputs))):
        outcomes[idx] = out
        rows.append(row_for(idx, out))
    if not rows:
        job.keep_held()
        return
    batches = build(ray, job, rows, plan).iter_batches(batch_size=None, batch_format="numpy")
    job.write_batches(received(batches, outcomes))


def received(
    batches: Iterable[dict[str, Any]], outcomes: dict[int, Outcome]
) -> Iterator[list[tuple[Outcome, Any]]]:
    """The workers' batches as (outcome, its records), or the outcome with its error set."""
    for batch in batches:
        pairs: list[tuple[Outcome, Any]] = []
        for idx, records, error in zip(batch["idx"], batch["records"], batch["error"], strict=True):
            out = outcomes.pop(int(idx))
            if error:
                out.error = str(error)
            pairs.append((out, None if error else json.loads(records)))
        yield pairs


# -- output written by the workers to a directory URL ------------------------------------------------------
def write_directory(ray: Any, job: JobRun, inputs: Sequence[str], plan: Plan, url: str) -> None:
    from mmcli.run.engines import ray_stages as stages

    overwrite = job.options.overwrite
    done = set() if overwrite else stages.written_keys(url)
    job._writer = cast(Any, _NoWriter(done))  # Ray writes; Job.finish closes nothing
    rows: list[dict[str, Any]] = []
    partly_done: set[str] = set()
    for out in job.pending(job.items(inputs)):
        partly_done.update(k for k in out.keys if k in done)
        rows.append(row_for(len(rows), out))
    lines = [json.dumps(r, ensure_ascii=False) for r in leading(ray, job, plan) if r["key"] not in done]
    if not rows and not lines:
        return
    parts = []
    if lines:
        parts.append(ray.data.from_items([{"record": s, "_first": False, "_failed": False} for s in lines]))
    if rows:
        results = build(ray, job, rows, plan)
        parts.append(
            results.map_batches(
                stages.output_rows, fn_kwargs={"done": frozenset(partly_done)}, batch_format="numpy"
            )
        )
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    sink = stages.make_sink(url, job.format, job.columns, overwrite)
    ds.write_datasink(sink)
    reporter = job.reporter
    reporter.records += sink.stats["records"]
    reporter.done += sink.stats["done"]
    for name, error in sink.stats["failed"]:
        reporter.input_failed(str(name), str(error))


# -- errors --------------------------------------------------------------------------------------------
def find_mmcli_error(exc: BaseException) -> MmcliError | None:
    """The MmcliError a worker raised (a model that fails to load, ...), under Ray's wrappers."""
    from mmcli.run.engines.ray_stages import from_text

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MmcliError):
            return current
        found = from_text(str(current))
        if found is not None:
            return found
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
