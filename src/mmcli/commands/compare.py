"""mmcli compare: rank images by cosine similarity to texts (search) or to other images (look-alikes)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mmcli.commands._options import RequiredInputs, TopK, with_common_options
from mmcli.errors import UsageError
from mmcli.pipeline import CommonOptions, Job, Task, error_record

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
    *,
    common: CommonOptions,
) -> int:
    """Cosine similarity, ranked: texts against images, or images against images.

    Examples: mmcli compare photos/ --text "a dog on a beach" --top-k 5
              mmcli compare query.jpg --against photos/ --top-k 5
    """
    import numpy as np

    from mmcli import tasks

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
    common.overwrite = True  # rankings need every input: compare always writes its output afresh
    job = Job(CompareTask(bool(text)), common)
    remote = job.use_server()
    if remote:
        from mmcli.server import remote as via

        key = via.model_key(job)
        job.remote.describe(key)  # type: ignore[union-attr]
    else:
        backend = job.load()

    def embeddings(work: Any) -> Any:
        if remote:
            return via.embeddings(job, work)
        return job.encode_images(work)

    def encode_texts(texts: list[str]) -> np.ndarray:
        if remote:
            from mmcli.commands.embed import Embed

            task = Embed(texts, False)
            task.model = job.spec.label
            records = job.remote.leading(key, task)  # type: ignore[union-attr]
            return np.asarray([r["embedding"] for r in records], dtype=np.float32)
        return backend.encode_texts(texts).numpy()

    def encode_all(sources: list[str]) -> tuple[list[str], np.ndarray | None]:
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
        return names, (np.stack(rows) if rows else None)

    def body() -> None:
        queries: np.ndarray | None
        if text:
            query_names, queries = list(text), encode_texts(list(text))
            target_names, targets = encode_all(inputs)
        else:
            query_names, queries = encode_all(inputs)
            target_names, targets = encode_all(list(against or []))
        if queries is None or targets is None or job.stop_signal:
            return
        scores, index = tasks.cosine_ranking(queries, targets, top_k)
        for q, name in enumerate(query_names):
            for score, t in zip(scores[q].tolist(), index[q].tolist(), strict=True):
                job.emit({"query": name, "target": target_names[t], "score": score, "model": job.spec.label})
        job.writer.flush()

    return job.run(body)


class CompareTask(Task):
    """Compare ranks after every embedding is known, so it uses the Job's parts rather than execute()."""

    name = "compare"
    columns = COLUMNS
    table_columns = TABLE_COLUMNS
    embeds_images = True

    def __init__(self, with_text: bool) -> None:
        self.needs = frozenset({"encode_image"} | ({"encode_text"} if with_text else set()))
