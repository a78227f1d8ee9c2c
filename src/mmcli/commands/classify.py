"""mmcli classify: zero-shot labels for each image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmcli.commands._options import Inputs, TopK, with_common_options
from mmcli.errors import UsageError
from mmcli.pipeline import CommonOptions, Job, error_record

COLUMNS = ["input", "label", "score", "scores", "labels", "model", "error"]
TABLE_COLUMNS = ["input", "label", "score", "scores"]


def parse_labels(labels: list[str] | None, labels_file: Path | None) -> list[str]:
    """--labels a,b (repeatable) and --labels-file (one per line, # comments), de-duplicated in order."""
    found: list[str] = []
    for chunk in labels or []:
        found += [part.strip() for part in chunk.split(",")]
    if labels_file is not None:
        try:
            text = labels_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--labels-file {labels_file}: {exc.strerror or exc}") from exc
        found += [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    unique = list(dict.fromkeys(label for label in found if label))
    if not unique:
        raise UsageError("no labels: pass --labels cat,dog or --labels-file FILE")
    return unique


@with_common_options
def classify(
    inputs: Inputs,
    labels: Annotated[
        list[str] | None,
        typer.Option("--labels", "-l", help="Comma-separated labels; repeatable.", show_default=False),
    ] = None,
    labels_file: Annotated[
        Path | None, typer.Option("--labels-file", help="A file with one label per line.")
    ] = None,
    template: Annotated[
        str | None,
        typer.Option(
            "--template", "-t", help='Prompt template, "{}" is the label (default: the model\'s own).'
        ),
    ] = None,
    ensemble: Annotated[
        str | None,
        typer.Option(
            "--ensemble",
            help="Average over a template set from configs/templates.toml (imagenet80).",
        ),
    ] = None,
    top_k: TopK = None,
    multi_label: Annotated[
        bool,
        typer.Option("--multi-label", help="Return every label whose score is over --threshold."),
    ] = False,
    threshold: Annotated[
        float,
        typer.Option("--threshold", min=0.0, max=1.0, help="Score threshold for --multi-label."),
    ] = 0.5,
    *,
    common: CommonOptions,
) -> int:
    """Zero-shot classification: score each image against your labels.

    Example: mmcli classify photos/ --labels cat,dog,bird --top-k 2
    """
    from mmcli import tasks

    label_list = parse_labels(labels, labels_file)
    if template is not None and ensemble is not None:
        raise UsageError("--template and --ensemble cannot be used together")
    job = Job("classify", common, {"encode_image", "encode_text"}, COLUMNS)
    if job.format == "table":
        job.columns = TABLE_COLUMNS
    if ensemble is not None:
        templates = tasks.ensemble_templates(ensemble)
    else:
        templates = [tasks.check_template(template or job.spec.template or "a photo of a {}.")]

    backend = job.load()
    text_emb = tasks.label_embeddings(backend.encode_texts, label_list, templates)  # once per run
    scale = backend.logit_scale  # type: ignore[attr-defined]
    bias = backend.logit_bias  # type: ignore[attr-defined]
    scoring = backend.scoring  # type: ignore[attr-defined]
    model = job.spec.label

    def body() -> None:
        import torch

        for batch in job.encode_images(job.items(inputs)):
            rows = [enc.value for enc in batch if enc.value is not None]
            probs = (
                tasks.label_probabilities(torch.stack(rows), text_emb, scale, bias, scoring).tolist()
                if rows
                else []
            )
            it = iter(probs)
            for enc in batch:
                if enc.value is None:
                    job.emit(error_record(enc.item, enc.error or "failed"))
                    continue
                ranked = tasks.rank_labels(next(it), label_list, top_k)
                record: dict[str, object] = {
                    "input": enc.item.input,
                    "label": ranked[0][0],
                    "score": ranked[0][1],
                    "scores": dict(ranked),
                }
                if multi_label:
                    record["labels"] = [name for name, p in ranked if p >= threshold]
                record["model"] = model
                job.emit(record)
            job.writer.flush()

    return job.run(body)
