"""mmcli embed: image and text embeddings (L2-normalised)."""

from __future__ import annotations

from typing import Annotated

import typer

from mmcli.commands._options import with_common_options
from mmcli.errors import UsageError
from mmcli.pipeline import CommonOptions, Job, error_record

COLUMNS = ["input", "text", "embedding", "model", "error"]
TABLE_COLUMNS = ["input", "text", "dim", "embedding"]


@with_common_options
def embed(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Image files, directories, globs, or - for paths on stdin.", show_default=False),
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option("--text", "-t", help="A text to embed; repeatable.", show_default=False),
    ] = None,
    *,
    common: CommonOptions,
) -> int:
    """Embed images and/or texts into the model's shared space.

    Example: mmcli embed photos/ --output vectors.npy   (rows named in vectors.ids.jsonl)
    """
    if not inputs and not text:
        raise UsageError("nothing to embed: give image inputs and/or --text")
    needs = ({"encode_image"} if inputs else set()) | ({"encode_text"} if text else set())
    job = Job("embed", common, needs, COLUMNS, formats=("table", "jsonl", "json", "csv", "npy"))
    if job.format == "table":
        job.columns = TABLE_COLUMNS
    table = job.format == "table"
    backend = job.load()
    model = job.spec.label

    def vector_fields(vector: list[float]) -> dict[str, object]:
        if table:
            head = ", ".join(f"{v:.4f}" for v in vector[:4])
            return {"dim": len(vector), "embedding": f"[{head}, …]"}
        return {"embedding": vector}

    def body() -> None:
        if text:
            for t, vector in zip(text, backend.encode_texts(list(text)).tolist(), strict=True):
                job.emit({"text": t, **vector_fields(vector), "model": model})
            job.writer.flush()
        if inputs:
            for batch in job.encode_images(job.items(inputs)):
                for enc in batch:
                    if enc.value is None:
                        job.emit(error_record(enc.item, enc.error or "failed"))
                    else:
                        job.emit(
                            {
                                "input": enc.item.input,
                                **vector_fields(enc.value.tolist()),
                                "model": model,
                            }
                        )
                job.writer.flush()

    return job.run(body)
