"""mmcli compare: rank images by cosine similarity to texts (search) or to other images (look-alikes)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mmcli.commands._options import Pool, RequiredInputs, Tiles, TopK, ViewOption, with_common_options
from mmcli.errors import UsageError
from mmcli.modeling.views import View, make_view
from mmcli.run.options import CommonOptions
from mmcli.run.pipeline import Job
from mmcli.run.task import Outcome, Task, error_record
from mmcli.sinks.output import Record

COLUMNS = ["query", "target", "score", "model", "input", "error"]
TABLE_COLUMNS = ["query", "target", "score"]


@with_common_options
def compare(
    inputs: RequiredInputs,
    text: Annotated[
        list[str] | None,
        typer.Option(
            "--text",
            "-t",
            help="Rank INPUTs by similarity to this text; repeatable.",
            show_default=False,
        ),
    ] = None,
    against: Annotated[
        list[str] | None,
        typer.Option(
            "--against",
            "-a",
            help="Rank these images by similarity to each INPUT; repeatable.",
            show_default=False,
        ),
    ] = None,
    top_k: TopK = None,
    view: ViewOption = None,
    tiles: Tiles = None,
    pool: Pool = None,
    *,
    common: CommonOptions,
) -> int:
    """Cosine similarity, ranked: texts against images, or images against images.

    Examples: mmcli compare photos/ --text "a dog on a beach" --top-k 5
              mmcli compare query.jpg --against photos/ --top-k 5
    """
    import numpy as np

    if bool(text) == bool(against):
        raise UsageError("give either --text (search images by text) or --against (find look-alikes)")
    if any(not t.strip() for t in text or []):
        raise UsageError("--text is empty: give the text to search for")
    if common.engine != "local":
        raise UsageError(
            "--engine ray does not run compare: it ranks across every input at once", "use --engine local"
        )
    if common.manifest:
        raise UsageError("compare takes its inputs on the command line, not from --manifest")
    seen = make_view(view, tiles, pool, allow_tta=False)
    common.overwrite = True  # rankings need every input: compare always writes its output afresh
    task = CompareTask(bool(text), seen)
    job = Job(task, common)
    server = job.remote if job.use_server() else None
    if server is not None:
        from mmcli.run.remote import offload as via

        key = via.model_key(job)
        server.describe(key)
    else:
        backend = job.load()
        task.prepare(backend)

    def embeddings(work: Any) -> Any:
        if server is not None:
            return served(job, key, work)
        return job.encode_images(work)

    def encode_texts(texts: list[str]) -> np.ndarray:
        if server is not None:
            from mmcli.commands.embed import Embed

            text_task = Embed(texts, False)
            text_task.model = job.spec.label
            records = server.leading(key, text_task)
            return np.asarray([r["embedding"] for r in records], dtype=np.float32)
        return backend.encode_texts(texts).numpy()

    def encode_all(sources: list[str]) -> tuple[list[str], list[np.ndarray]]:
        names: list[str] = []
        rows: list[np.ndarray] = []
        for batch in embeddings(job.pending(job.items(sources))):
            for out in batch:
                if out.error is not None:
                    job.emit_outcome(out, [error_record(out.item, out.error)])
                else:
                    job.reporter.input_done()
                    names.append(out.item.input)
                    rows.append(np.asarray(out.value, dtype=np.float32))
            job.writer.flush()
            if job.stop_signal:
                break
        return names, rows

    def body() -> None:
        queries: list[np.ndarray]
        if text:
            query_names, queries = list(text), list(encode_texts(list(text)))
            target_names, targets = encode_all(inputs)
        else:
            query_names, queries = encode_all(inputs)
            target_names, targets = encode_all(list(against or []))
        if not queries or not targets or job.stop_signal:
            return
        scores, index = task.ranking(queries, targets, bool(text), top_k)
        for q, name in enumerate(query_names):
            for score, t in zip(scores[q].tolist(), index[q].tolist(), strict=True):
                job.emit({"query": name, "target": target_names[t], "score": score, "model": job.spec.label})
        job.writer.flush()

    return job.run(body)


def served(job: Job, key: Any, work: Any) -> Any:
    """Image embeddings computed by a ``mmcli serve`` (CompareTask's records): outcomes whose value is a
    float32 vector, or a view's packed matrix."""
    import numpy as np

    from mmcli.run.remote import offload as via

    task = job.task
    assert isinstance(task, CompareTask) and job.remote is not None
    for batch in via.results(job, job.remote, key, task, work):
        for out, records in batch:
            if out.error is None and records:
                out.value = np.asarray(records[0]["embedding"], dtype=np.float32)
                task.scale = records[0].get("scale", task.scale)
        yield [out for out, _ in batch]


class CompareTask(Task):
    """Compare ranks after every embedding is known, so it uses the Job's parts rather than execute();
    through a server, its records carry each image's embedding (and the model's logit scale, which the
    pooled views' ``mean`` weighs with)."""

    name = "compare"
    columns = COLUMNS
    table_columns = TABLE_COLUMNS
    embeds_images = True

    def __init__(self, with_text: bool, view: View | None = None) -> None:
        self.needs = frozenset({"encode_image"} | ({"encode_text"} if with_text else set()))
        self.view = None if view is None or view.plain else view
        self.scale: float | None = None

    def prepare(self, backend: Any) -> None:
        self.scale = getattr(backend, "logit_scale", None)

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        return [[{"input": o.item.input, "embedding": o.value.tolist(), "scale": self.scale}] for o in done]

    def ranking(self, queries: list[Any], targets: list[Any], texts: bool, top_k: int | None) -> Any:
        """Scores and target indices, best first per query: cosine similarities, or (several views per
        image) the pooled similarities of their views (pooling.pooled_scores)."""
        import numpy as np

        from mmcli.modeling import pooling, tasks, views

        if self.view is None or not self.view.multi:
            return tasks.cosine_ranking(np.stack(queries), np.stack(targets), top_k)
        query_views = [q[None] for q in queries] if texts else [views.unpack(q) for q in queries]
        target_views = [views.unpack(t) for t in targets]
        scores = pooling.pooled_scores(query_views, target_views, self.scale or 1.0, self.view.pool)
        return pooling.ranking(scores, top_k)
