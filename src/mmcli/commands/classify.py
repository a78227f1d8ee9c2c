"""mmcli classify: zero-shot labels for each image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mmcli.commands._options import Inputs, TopK, with_common_options
from mmcli.errors import UsageError
from mmcli.pipeline import CommonOptions, Job, error_record

COLUMNS = ["input", "label", "score", "scores", "labels", "question", "model", "error"]
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
    question: Annotated[
        str | None,
        typer.Option(
            "--question",
            help="Generative models: the question each label answers (default: the model's, e.g. "
            '"What is in this image?").',
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
    from mmcli import registry, tasks

    label_list = parse_labels(labels, labels_file)
    if template is not None and ensemble is not None:
        raise UsageError("--template and --ensemble cannot be used together")
    job = Job("classify", common, None, COLUMNS)
    if job.format == "table":
        job.columns = TABLE_COLUMNS
    contrastive = {"encode_image", "encode_text"} <= job.spec.capabilities
    if contrastive:
        if question is not None:
            raise UsageError("--question is for generative models; contrastive models use --template")
    else:
        registry.require(job.spec, {"score_text"}, "classify")
        if template is not None or ensemble is not None:
            raise UsageError("--template and --ensemble are for contrastive models; use --question")
        return _classify_generative(job, inputs, label_list, question, top_k, multi_label, threshold)

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
                job.emit(_record(enc.item.input, next(it), label_list, top_k, multi_label, threshold, model))
            job.writer.flush()

    return job.run(body)


def _record(
    name: str,
    probs: list[float],
    labels: list[str],
    top_k: int | None,
    multi_label: bool,
    threshold: float,
    model: str,
    **extra: object,
) -> dict[str, object]:
    from mmcli import tasks

    ranked = tasks.rank_labels(probs, labels, top_k)
    record: dict[str, object] = {
        "input": name,
        "label": ranked[0][0],
        "score": ranked[0][1],
        "scores": dict(ranked),
    }
    if multi_label:
        record["labels"] = [label for label, p in ranked if p >= threshold]
    return record | {"model": model} | extra


def _classify_generative(
    job: Job,
    inputs: list[str],
    labels: list[str],
    question: str | None,
    top_k: int | None,
    multi_label: bool,
    threshold: float,
) -> int:
    """Rank labels by the length-normalised log-likelihood of each as the answer; softmax over labels."""
    import torch

    backend = job.load()
    asked = question if question is not None else backend.default_prompt("classify") or ""
    model = job.spec.label

    def scores(batch: object, _n: int) -> list[list[float]]:
        loglik = backend.score_labels(batch, asked, labels)  # type: ignore[arg-type]
        return torch.softmax(loglik, dim=-1).tolist()

    def body() -> None:
        for batch in job.forward(job.items(inputs), scores):
            for out in batch:
                if out.error is not None:
                    job.emit(error_record(out.item, out.error))
                    continue
                job.emit(
                    _record(
                        out.item.input,
                        out.value,
                        labels,
                        top_k,
                        multi_label,
                        threshold,
                        model,
                        question=asked,
                    )
                )
            job.writer.flush()

    return job.run(body)
