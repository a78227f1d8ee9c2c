"""mmcli compare: rank images by cosine similarity to texts (search) or to other images (look-alikes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from mmcli.commands._options import Pool, RequiredInputs, Tiles, TopK, ViewOption, with_common_options
from mmcli.errors import UsageError
from mmcli.modeling.views import View, make_view
from mmcli.run.options import CommonOptions
from mmcli.run.pipeline import Job
from mmcli.run.task import Outcome, Task, error_record
from mmcli.sinks.output import Record

if TYPE_CHECKING:
    import numpy as np

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
    check_options(text, against, common)
    seen = make_view(view, tiles, pool, allow_tta=False)
    common.overwrite = True  # rankings need every input: compare always writes its output afresh
    task = CompareTask(bool(text), seen)
    job = Job(task, common)
    encoder = Encoder(job, task)
    return job.run(lambda: rank(job, task, encoder, inputs, text, against, top_k))


def check_options(text: list[str] | None, against: list[str] | None, common: CommonOptions) -> None:
    """What compare refuses before any model loads."""
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


def rank(
    job: Job,
    task: CompareTask,
    encoder: Encoder,
    inputs: list[str],
    text: list[str] | None,
    against: list[str] | None,
    top_k: int | None,
) -> None:
    """The Job's body: embed the queries and the targets, then write each query's targets, best first."""
    queries: list[np.ndarray]
    if text:
        query_names, queries = list(text), list(encoder.texts(list(text)))
        target_names, targets = encoder.images(inputs)
    else:
        query_names, queries = encoder.images(inputs)
        target_names, targets = encoder.images(list(against or []))
    if not queries or not targets or job.stop_signal:
        return
    scores, index = task.ranking(queries, targets, bool(text), top_k)
    for q, name in enumerate(query_names):
        for score, t in zip(scores[q].tolist(), index[q].tolist(), strict=True):
            job.emit({"query": name, "target": target_names[t], "score": score, "model": job.spec.label})
    job.writer.flush()


class Encoder:
    """compare's embeddings: from the model loaded here, or from the ``mmcli serve`` that holds it (chosen,
    and the model described or loaded, when the Encoder is made)."""

    def __init__(self, job: Job, task: CompareTask) -> None:
        self.job = job
        self.server = job.remote if job.use_server() else None
        self.key: Any = None
        self.backend: Any = None
        if self.server is not None:
            from mmcli.run.remote import offload as via

            self.key = via.model_key(job)
            self.server.describe(self.key)
        else:
            self.backend = job.load()
            task.prepare(self.backend)

    def texts(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        if self.server is not None:
            from mmcli.commands.embed import Embed

            text_task = Embed(texts, False)
            text_task.model = self.job.spec.label
            records = self.server.leading(self.key, text_task)
            return np.asarray([r["embedding"] for r in records], dtype=np.float32)
        return self.backend.encode_texts(texts).numpy()

    def images(self, sources: list[str]) -> tuple[list[str], list[np.ndarray]]:
        """The names and embeddings of the images of ``sources``; a failed image is written as its error."""
        import numpy as np

        job = self.job
        names: list[str] = []
        rows: list[np.ndarray] = []
        for batch in self.embeddings(job.pending(job.items(sources))):
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

    def embeddings(self, work: Any) -> Any:
        if self.server is not None:
            return self.served(work)
        return self.job.encode_images(work)

    def served(self, work: Any) -> Any:
        """Image embeddings computed by the ``mmcli serve`` (CompareTask's records): outcomes whose value is
        a float32 vector, or a view's packed matrix."""
        import numpy as np

        from mmcli.run.remote import offload as via

        task = self.job.task
        assert isinstance(task, CompareTask) and self.server is not None
        for batch in via.results(self.job, self.server, self.key, task, work):
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
