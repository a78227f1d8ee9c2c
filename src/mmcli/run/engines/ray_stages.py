"""The parts of ``--engine ray`` that run on Ray's workers: the decode stage, the model actor, and the
stages that turn results into output rows and files. Imported by Ray on each worker (by reference, so the
worker needs mmcli installed); nothing here imports ray at module level.

Rows between stages (Ray Data blocks):
  listed   idx, name (the input as given, bytes), path (what to read, bytes), keys (JSON), error
  decoded  + image (uint8 HWC array; empty when the row failed), warning (what the decoder said, or "")
  results  idx, name, keys, records (JSON list of the input's records), error
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from mmcli.errors import InputError, MmcliError
from mmcli.run.loader import Backoff
from mmcli.run.task import keyed

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Batch
    from mmcli.modeling.registry import ModelSpec
    from mmcli.run.options import CommonOptions
    from mmcli.run.task import Task

# Ray Data hands the driver a worker's exception as text: an MmcliError travels as this line.
ERROR_MARKER = "mmcli-error: "
EMPTY_IMAGE = np.zeros((0, 0, 3), dtype=np.uint8)
# Parquet needs one schema across part files: numbers and vectors typed (as the local parquet writer types
# them), nested tables as JSON text marked as such.
FLOAT_COLUMNS = frozenset({"score"})
JSON_COLUMNS = frozenset({"scores"})
VECTOR_COLUMNS = frozenset({"embedding"})
STRING_LIST_COLUMNS = frozenset({"labels"})


def decode(row: dict[str, Any], max_pixels: int, memory: int, timeout: float) -> dict[str, Any]:
    """Read and decode one input in an isolated decoder process (mmcli.sources.decoder, as locally: the same
    limits); a failure becomes the row's error."""
    from mmcli.sources.decoder import shared
    from mmcli.sources.inputs import decode_source, open_source

    out = dict(row)
    out["image"] = EMPTY_IMAGE
    out["warning"] = ""
    if row["error"]:
        return out
    try:
        source = open_source(os.fsdecode(row["path"]))
        decoded = decode_source(source, shared(memory, timeout), max_pixels)
        out["image"] = np.asarray(decoded.image, dtype=np.uint8)
        out["warning"] = decoded.warning or ""
    except InputError as exc:
        out["error"] = str(exc)
    except Exception as exc:  # a decoder bug must not sink the block
        out["error"] = f"cannot preprocess: {exc}"
    return out


class Predictor:
    """One model replica: loads the backend once, then turns decoded batches into records."""

    def __init__(self, spec: ModelSpec, task: Task, options: CommonOptions, threads: int) -> None:
        self.task = task
        self.backoff = Backoff(
            hint="try --dtype fp16, --quantize 4bit, a smaller model, or more --gpus-per-actor"
        )
        self.failure: Exception | None = None
        try:
            self.load(spec, options, threads)
        except Exception as exc:  # raised with the first batch: Ray keeps a task's exception, not an actor's
            self.failure = exc

    def load(self, spec: ModelSpec, options: CommonOptions, threads: int) -> None:
        from mmcli.modeling import registry, runtime
        from mmcli.modeling.backends.base import LoadOptions

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        self.runtime = runtime.resolve(options.device, options.dtype, spec.dtype)
        self.backoff.device = self.runtime.device
        if threads > 0 and self.runtime.device.type == "cpu":
            import torch

            torch.set_num_threads(min(threads, os.cpu_count() or threads))  # Ray sets OMP_NUM_THREADS=1
        if not spec.is_local:
            registry.hub_offline(options.offline)  # as Job.load: an unreachable hub means the cache only
        load = LoadOptions.of(options)
        self.backend = registry.create_backend(spec, self.runtime, load)
        self.task.prepare(self.backend)
        # Preprocessing (resize, normalise) runs here, between forwards: spread a batch of it over threads
        # (Pillow and the processors release the GIL), as the local engine's decode threads do.
        workers = threads if threads > 0 else min(8, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="mmcli-preprocess")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self.predict(batch)
        except MmcliError as exc:
            raise RuntimeError(as_text(exc)) from None

    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        from mmcli.run.task import Outcome
        from mmcli.sources.inputs import Item

        if self.failure is not None:
            raise self.failure
        n = len(batch["idx"])
        errors = [str(e) for e in batch["error"]]
        records = [""] * n
        todo: list[int] = []
        parts: list[Batch] = []

        def prepare(i: int) -> Batch:
            return self.task.preprocess(self.backend, [Image.fromarray(batch["image"][i])])

        wanted = [i for i in range(n) if not errors[i]]
        for i, future in zip(wanted, [self.pool.submit(prepare, i) for i in wanted], strict=True):
            try:
                parts.append(future.result())
                todo.append(i)
            except Exception as exc:  # a preprocessing bug must not sink the batch
                errors[i] = f"cannot preprocess: {exc}"
        if todo:
            values = self.forward(parts)
            done = [
                Outcome(Item(os.fsdecode(batch["name"][i])), value=v)
                for i, v in zip(todo, values, strict=True)
            ]
            warnings = [str(w) for w in batch.get("warning", [""] * n)]
            for i, produced in zip(todo, self.task.records(done), strict=True):
                for record in produced if warnings[i] else []:
                    record["warning"] = warnings[i]  # what the decoder said, as locally
                records[i] = json.dumps(produced)
        return {
            "idx": batch["idx"],
            "name": batch["name"],
            "keys": batch["keys"],
            "records": np.array(records, dtype=object),
            "error": np.array(errors, dtype=object),
        }

    def forward(self, parts: list[Batch]) -> list[Any]:
        """One value per image; on out-of-memory halve the batch and retry (run.loader.Backoff)."""

        def run(chunk: list[Batch]) -> list[Any]:
            collated = self.backend.collate(chunk)
            if self.task.embeds_images:
                return self.task.encode(self.backend, collated)
            return list(self.task.compute(self.backend, collated, len(chunk)))

        return self.backoff.run(run, parts)


def leading_records(spec: ModelSpec, task: Task, options: CommonOptions) -> str:
    """``task.leading`` (embed --text) computed where the model can load: JSON of the records."""
    predictor = Predictor(spec, task, options, threads=0)
    try:
        if predictor.failure is not None:
            raise predictor.failure
        return json.dumps(task.leading(predictor.backend))
    except MmcliError as exc:
        raise RuntimeError(as_text(exc)) from None


def as_text(exc: MmcliError) -> str:
    fields = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    return ERROR_MARKER + json.dumps(fields)


def from_text(text: str) -> MmcliError | None:
    """The MmcliError that ``as_text`` wrote somewhere in ``text`` (a Ray error message), if any."""
    from mmcli import errors

    start = text.find(ERROR_MARKER)
    if start < 0:
        return None
    line = text[start + len(ERROR_MARKER) :].splitlines()[0]
    try:
        fields = json.JSONDecoder().raw_decode(line)[0]
    except ValueError:
        return None
    cls = getattr(errors, str(fields.get("type")), MmcliError)
    if not (isinstance(cls, type) and issubclass(cls, MmcliError)):
        cls = MmcliError
    return cls(str(fields.get("message")), fields.get("hint"))


# -- output to a directory URL (--output s3://bucket/dir/, file:///...) -------------------------------------
def output_rows(batch: dict[str, np.ndarray], done: frozenset[str]) -> dict[str, list[Any]]:
    """Results -> one row per record, each with its resume key; records already written are left out.
    ``_first`` marks the first record of a good input (counted by the sink, not written)."""
    lines: list[str] = []
    first: list[bool] = []
    failed: list[bool] = []
    for name, keys_json, recs, error in zip(
        batch["name"], batch["keys"], batch["records"], batch["error"], strict=True
    ):
        keys = json.loads(keys_json)
        if error:
            records = [{"input": os.fsdecode(name), "error": str(error)}]
        else:
            records = json.loads(recs)
        for i, (key, record) in enumerate(keyed(records, keys)):
            if key is not None:
                if key in done and "error" not in record:
                    continue
                record["key"] = key
            lines.append(json.dumps(record, ensure_ascii=False))
            first.append(i == 0 and not error)
            failed.append(bool(error))
    return {"record": lines, "_first": first, "_failed": failed}


def parquet_table(lines: list[str], columns: list[str]) -> Any:
    """Records as a table with one fixed schema (parquet part files must agree): nested values as JSON."""
    import pyarrow as pa

    fields = []
    for col in [*columns, "key"]:
        if col in FLOAT_COLUMNS:
            fields.append(pa.field(col, pa.float64()))
        elif col in VECTOR_COLUMNS:
            fields.append(pa.field(col, pa.list_(pa.float32())))
        elif col in STRING_LIST_COLUMNS:
            fields.append(pa.field(col, pa.list_(pa.string())))
        else:
            meta = {b"mmcli": b"json"} if col in JSON_COLUMNS else None
            fields.append(pa.field(col, pa.string(), metadata=meta))
    rows = []
    for line in lines:
        record = json.loads(line)
        row = {}
        for f in fields:
            value = record.get(f.name)
            if value is not None and pa.types.is_string(f.type):
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                value = text.encode("utf-8", "backslashreplace").decode("utf-8")  # odd bytes in names
            elif f.name in STRING_LIST_COLUMNS and value is not None:
                value = [str(v).encode("utf-8", "backslashreplace").decode("utf-8") for v in value]
            row[f.name] = value
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def make_sink(path: str, fmt: str, columns: list[str], overwrite: bool) -> Any:
    """A Ray file datasink writing jsonl (the local writer's exact lines) or parquet part files, which
    also counts what it wrote (``stats`` on the driver after the write)."""
    from ray.data.datasource import BlockBasedFileDatasink

    class RecordSink(BlockBasedFileDatasink):
        def __init__(self) -> None:
            kwargs: dict[str, Any] = {"file_format": fmt}
            if overwrite:
                from ray.data import SaveMode

                kwargs["mode"] = SaveMode.OVERWRITE
            super().__init__(path, **kwargs)
            self.stats: dict[str, Any] = {"done": 0, "failed": [], "records": 0}

        def write_block_to_file(self, block: Any, file: Any) -> None:
            table = block.to_arrow()
            lines = [str(v) for v in table.column("record").to_pylist()]
            if fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(parquet_table(lines, columns), file)
            else:
                file.write("".join(line + "\n" for line in lines).encode("utf-8", "backslashreplace"))

        def write(self, blocks: Any, ctx: Any) -> dict[str, Any]:  # type: ignore[override]
            from ray.data.block import BlockAccessor

            blocks = list(blocks)
            stats: dict[str, Any] = {"done": 0, "failed": [], "records": 0}
            for block in blocks:
                table = BlockAccessor.for_block(block).to_arrow()
                stats["records"] += table.num_rows
                stats["done"] += sum(bool(v) for v in table.column("_first").to_pylist())
                for line, bad in zip(
                    table.column("record").to_pylist(), table.column("_failed").to_pylist(), strict=True
                ):
                    if bad:
                        record = json.loads(line)
                        stats["failed"].append((record.get("input"), record.get("error")))
            super().write(blocks, ctx)
            return stats

        def on_write_complete(self, write_result: Any) -> None:
            super().on_write_complete(write_result)
            for part in write_result.write_returns:
                if part:
                    self.stats["done"] += part["done"]
                    self.stats["records"] += part["records"]
                    self.stats["failed"] += part["failed"]

    return RecordSink()


def written_keys(path: str) -> set[str]:
    """Resume keys of the good records already in an output directory URL (jsonl or parquet part files);
    failed inputs are tried again, as locally."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    try:
        fs, root = pafs.FileSystem.from_uri(path)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))
    except Exception:
        return set()
    keys: set[str] = set()
    for info in infos:
        if info.type != pafs.FileType.File or info.base_name.startswith((".", "_")):
            continue
        try:
            if info.path.endswith(".parquet"):
                table = pq.read_table(info.path, columns=["key", "error"], filesystem=fs)
                pairs = zip(table.column("key").to_pylist(), table.column("error").to_pylist(), strict=True)
                keys.update(k for k, error in pairs if k and error is None)
            elif info.path.endswith((".jsonl", ".json")):
                with fs.open_input_stream(info.path) as f:
                    for line in f.read().decode("utf-8", "replace").splitlines():
                        try:
                            record = json.loads(line)
                        except ValueError:
                            continue  # a line cut short by a crash: that input is done again
                        if isinstance(record, dict) and record.get("key") and "error" not in record:
                            keys.add(record["key"])
        except Exception:
            continue  # an unreadable part file: its inputs are computed again
    return keys
