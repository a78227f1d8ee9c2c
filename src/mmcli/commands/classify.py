"""mmcli classify: zero-shot labels for each image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mmcli.commands._options import Inputs, TopK, with_common_options
from mmcli.errors import UsageError
from mmcli.output import Record
from mmcli.pipeline import CommonOptions, Job, Outcome, Task

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
    inputs: Inputs = None,
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
    from mmcli import registry

    label_list = parse_labels(labels, labels_file)
    if template is not None and ensemble is not None:
        raise UsageError("--template and --ensemble cannot be used together")
    spec = registry.resolve(common.model or registry.default_model("classify"), common.revision)
    task: Task
    if {"encode_image", "encode_text"} <= spec.capabilities:
        if question is not None:
            raise UsageError("--question is for generative models; contrastive models use --template")
        task = ContrastiveClassify(label_list, template, ensemble, top_k, multi_label, threshold)
    else:
        registry.require(spec, {"score_text"}, "classify")
        if template is not None or ensemble is not None:
            raise UsageError("--template and --ensemble are for contrastive models; use --question")
        task = GenerativeClassify(label_list, question, top_k, multi_label, threshold)
    return Job(task, common, spec).execute(inputs)


class _Classify(Task):
    name = "classify"
    columns = COLUMNS
    table_columns = TABLE_COLUMNS

    def __init__(self, labels: list[str], top_k: int | None, multi_label: bool, threshold: float) -> None:
        self.labels = labels
        self.top_k = top_k
        self.multi_label = multi_label
        self.threshold = threshold

    def options_key(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "top_k": self.top_k,
            "multi_label": self.multi_label,
            "threshold": self.threshold if self.multi_label else None,
        }

    def record(self, name: str, probs: list[float], **extra: object) -> Record:
        return _record(
            name, probs, self.labels, self.top_k, self.multi_label, self.threshold, self.model, **extra
        )


class ContrastiveClassify(_Classify):
    """CLIP-like models: label prompts encoded once per run, cosine similarity, softmax (or sigmoid)."""

    embeds_images = True
    needs = frozenset({"encode_image", "encode_text"})

    def __init__(
        self,
        labels: list[str],
        template: str | None,
        ensemble: str | None,
        top_k: int | None,
        multi_label: bool,
        threshold: float,
    ) -> None:
        super().__init__(labels, top_k, multi_label, threshold)
        self.template = template
        self.ensemble = ensemble
        self.text_emb: Any = None
        self.scale: Any = None
        self.bias: Any = None
        self.scoring = "softmax"

    def options_key(self) -> dict[str, Any]:
        return super().options_key() | {"template": self.template, "ensemble": self.ensemble}

    def prepare(self, backend: Any) -> None:
        from mmcli import tasks

        if self.ensemble is not None:
            templates = tasks.ensemble_templates(self.ensemble)
        else:
            templates = [tasks.check_template(self.template or backend.spec.template or "a photo of a {}.")]
        self.text_emb = tasks.label_embeddings(backend.encode_texts, self.labels, templates)  # once per run
        self.scale, self.bias, self.scoring = backend.logit_scale, backend.logit_bias, backend.scoring

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        import torch

        from mmcli import tasks

        rows = torch.stack([out.value for out in done])
        probs = tasks.label_probabilities(rows, self.text_emb, self.scale, self.bias, self.scoring).tolist()
        return [[self.record(out.item.input, p)] for out, p in zip(done, probs, strict=True)]


class GenerativeClassify(_Classify):
    """Generative models: length-normalised log-likelihood of each label as the answer, softmax over labels."""

    needs = frozenset({"score_text"})

    def __init__(
        self,
        labels: list[str],
        question: str | None,
        top_k: int | None,
        multi_label: bool,
        threshold: float,
    ) -> None:
        super().__init__(labels, top_k, multi_label, threshold)
        self.question = question
        self.asked = question or ""

    def options_key(self) -> dict[str, Any]:
        return super().options_key() | {"question": self.question}

    def prepare(self, backend: Any) -> None:
        self.asked = self.question if self.question is not None else backend.default_prompt("classify") or ""

    def compute(self, backend: Any, batch: Any, n: int) -> list[list[float]]:
        import torch

        loglik = backend.score_labels(batch, self.asked, self.labels)
        return torch.softmax(loglik, dim=-1).tolist()

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        return [[self.record(out.item.input, out.value, question=self.asked)] for out in done]


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
