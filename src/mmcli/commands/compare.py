"""mmcli compare: rank images by cosine similarity to texts (search) or to other images (look-alikes)."""

from __future__ import annotations

from typing import Annotated

import typer

from mmcli.commands._options import Inputs, TopK, with_common_options
from mmcli.errors import UsageError
from mmcli.pipeline import CommonOptions, Job, error_record

COLUMNS = ["query", "target", "score", "model", "input", "error"]
TABLE_COLUMNS = ["query", "target", "score"]


@with_common_options
def compare(
    inputs: Inputs,
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
    import torch

    from mmcli import tasks

    if bool(text) == bool(against):
        raise UsageError("give either --text (search images by text) or --against (find look-alikes)")
    needs = {"encode_image"} | ({"encode_text"} if text else set())
    job = Job("compare", common, needs, COLUMNS)
    if job.format == "table":
        job.columns = TABLE_COLUMNS
    backend = job.load()
    model = job.spec.label

    def encode_all(sources: list[str]) -> tuple[list[str], torch.Tensor | None]:
        names: list[str] = []
        rows: list[torch.Tensor] = []
        for batch in job.encode_images(job.items(sources)):
            for enc in batch:
                if enc.value is None:
                    job.emit(error_record(enc.item, enc.error or "failed"))
                else:
                    names.append(enc.item.input)
                    rows.append(enc.value)
            job.writer.flush()
        return names, (torch.stack(rows) if rows else None)

    def body() -> None:
        queries: torch.Tensor | None
        if text:
            query_names, queries = list(text), backend.encode_texts(list(text))
            target_names, targets = encode_all(inputs)
        else:
            query_names, queries = encode_all(inputs)
            target_names, targets = encode_all(list(against or []))
        if queries is None or targets is None:
            return
        scores, index = tasks.cosine_ranking(queries, targets, top_k)
        for q, name in enumerate(query_names):
            for score, t in zip(scores[q].tolist(), index[q].tolist(), strict=True):
                job.emit({"query": name, "target": target_names[t], "score": score, "model": model})
        job.writer.flush()

    return job.run(body)
