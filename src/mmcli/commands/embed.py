"""mmcli embed: image and text embeddings (L2-normalised)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mmcli.commands._options import Pool, Tiles, ViewOption, with_common_options
from mmcli.errors import UsageError
from mmcli.modeling.views import View, make_view
from mmcli.run.options import CommonOptions
from mmcli.run.pipeline import Job
from mmcli.run.task import Outcome, Task
from mmcli.sinks.output import Record

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
    view: ViewOption = None,
    tiles: Tiles = None,
    pool: Pool = None,
    *,
    common: CommonOptions,
) -> int:
    """Embed images and/or texts into the model's shared space.

    Example: mmcli embed photos/ --output vectors.npy   (rows named in vectors.ids.jsonl)
    """
    if not inputs and not text and not common.manifest:
        raise UsageError("nothing to embed: give image inputs, --manifest and/or --text")
    if any(not t.strip() for t in text or []):
        raise UsageError("--text is empty: give the text to embed")
    seen = make_view(view, tiles, pool, allow_tta=False, one_vector=True)
    images = bool(inputs) or bool(common.manifest)
    task = Embed(list(text or []), images, seen)
    job = Job(task, common)
    task.table = job.format == "table"
    return job.execute(list(inputs or []))


class Embed(Task):
    name = "embed"
    columns = COLUMNS
    table_columns = TABLE_COLUMNS
    formats = ("table", "jsonl", "json", "csv", "npy", "parquet")
    embeds_images = True
    one_vector = True  # --view tiles: the global view and the tiles' mean, half and half (views.one_vector)

    def __init__(self, texts: list[str], images: bool, view: View | None = None) -> None:
        self.texts = texts
        self.needs = frozenset(
            ({"encode_image"} if images else set()) | ({"encode_text"} if texts else set())
        )
        self.table = False
        self.view = None if view is None or view.plain else view

    def options_key(self) -> dict[str, Any]:
        return {} if self.view is None else self.view.key()

    def vector_fields(self, vector: list[float]) -> dict[str, object]:
        if self.table:
            head = ", ".join(f"{v:.4f}" for v in vector[:4])
            return {"dim": len(vector), "embedding": f"[{head}, …]"}
        return {"embedding": vector}

    def leading(self, backend: Any) -> list[Record]:
        if not self.texts:
            return []
        vectors = backend.encode_texts(list(self.texts)).tolist()
        return [
            {"text": t, **self.vector_fields(v), "model": self.model}
            for t, v in zip(self.texts, vectors, strict=True)
        ]

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        return [
            [{"input": o.item.input, **self.vector_fields(o.value.tolist()), "model": self.model}]
            for o in done
        ]
