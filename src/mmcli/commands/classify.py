"""mmcli classify: zero-shot labels for each image."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mmcli.commands._options import (
    Inputs,
    Pool,
    Report,
    Tiles,
    TopK,
    Tta,
    TtaCombine,
    ViewOption,
    with_common_options,
)
from mmcli.errors import UsageError
from mmcli.modeling.views import View, make_view, refuse_generative
from mmcli.run.options import CommonOptions
from mmcli.run.pipeline import Job
from mmcli.run.task import Outcome, Task
from mmcli.sinks.output import Record

if TYPE_CHECKING:
    from mmcli.modeling.registry import ModelSpec

COLUMNS = ["input", "label", "score", "scores", "labels", "question", "model", "error"]
TABLE_COLUMNS = ["input", "label", "score", "scores"]
DEFAULT_TEMPLATE = "a photo of a {}."
# A "#" at the start of a line starts a comment; in a labels file also one after whitespace ("cat  # pet").
FULL_LINE_COMMENT = re.compile(r"^\s*#.*")
COMMENT = re.compile(r"(^|\s)#.*")


def parse_labels(labels: list[str] | None, labels_file: Path | None) -> list[str]:
    """--labels a,b (repeatable) and --labels-file (one per line, # comments); each label once."""
    found = [part.strip() for chunk in labels or [] for part in chunk.split(",")]
    if labels_file is not None:
        found += read_list_file(labels_file, "--labels-file", "labels", COMMENT)
    found = [label for label in found if label]
    if not found:
        raise UsageError("no labels: pass --labels cat,dog or --labels-file FILE")
    refuse_duplicates(found, "label")
    return found


def read_list_file(path: Path, option: str, what: str, comment: re.Pattern[str]) -> list[str]:
    """The entries of a list file, one per line: UTF-8 text (a BOM is dropped), blank lines and
    ``comment`` matches left out. A file with no entries, or that is not UTF-8, is a usage error."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from exc
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at, line = bom + exc.start, data[: bom + exc.start].count(b"\n") + 1
        raise UsageError(
            f"{option} {path} is not UTF-8 text: byte 0x{data[at]:02x} at offset {at} (line {line}); "
            "save it as UTF-8"
        ) from None
    entries = [comment.sub("", line).strip() for line in text.splitlines()]
    if not any(entries):
        raise UsageError(f"{option} {path} holds no {what}, only blank lines and # comments")
    return [entry for entry in entries if entry]


def refuse_duplicates(items: list[str], what: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise UsageError(f"the {what} {item!r} is given twice")
        seen.add(item)


def prompt_templates(template: str | None, ensemble: str | None) -> list[str] | None:
    """The checked templates of --template or --ensemble; None: the model's own."""
    from mmcli.modeling import tasks

    if template is not None and ensemble is not None:
        raise UsageError("--template and --ensemble cannot be used together")
    if ensemble is not None:
        return tasks.ensemble_templates(ensemble)
    return None if template is None else [tasks.check_template(template)]


# classify's own options (eval takes --ensemble too).
Labels = Annotated[
    list[str] | None,
    typer.Option("--labels", "-l", help="Comma-separated labels; repeatable.", show_default=False),
]
LabelsFile = Annotated[
    Path | None,
    typer.Option(
        "--labels-file",
        help='A UTF-8 file with one label per line; "#" at the start or after a space starts a comment.',
    ),
]
Template = Annotated[
    str | None,
    typer.Option(
        "--template",
        "-t",
        help='Prompt template with one "{}" where the label goes; {{ and }} are literal braces '
        "(default: the model's own).",
    ),
]
Ensemble = Annotated[
    str | None,
    typer.Option(
        "--ensemble",
        help="Average over a template set from configs/templates.toml (imagenet80).",
    ),
]
Question = Annotated[
    str | None,
    typer.Option(
        "--question",
        help="Generative models: the question each label answers (default: the model's, e.g. "
        '"What is in this image?").',
    ),
]
MultiLabel = Annotated[
    bool,
    typer.Option("--multi-label", help="Return every label whose score is over --threshold."),
]
Threshold = Annotated[
    float,
    typer.Option("--threshold", min=0.0, max=1.0, help="Score threshold for --multi-label."),
]


@with_common_options
def classify(
    inputs: Inputs = None,
    labels: Labels = None,
    labels_file: LabelsFile = None,
    template: Template = None,
    ensemble: Ensemble = None,
    question: Question = None,
    top_k: TopK = None,
    multi_label: MultiLabel = False,
    threshold: Threshold = 0.5,
    view: ViewOption = None,
    tiles: Tiles = None,
    pool: Pool = None,
    tta: Tta = None,
    tta_combine: TtaCombine = None,
    report: Report = None,
    *,
    common: CommonOptions,
) -> int:
    """Zero-shot classification: score each image against your labels.

    Example: mmcli classify photos/ --labels cat,dog,bird --top-k 2
    """
    from mmcli.modeling import registry

    label_list = parse_labels(labels, labels_file)
    check_prompt_options(template, ensemble, question)
    seen = make_view(view, tiles, pool, tta, tta_combine)
    spec = registry.resolve(common.model or registry.default_model("classify"), common.revision)
    task = classify_task(spec, label_list, template, ensemble, question, top_k, multi_label, threshold, seen)
    job = Job(task, common, spec)
    if report is not None:
        job.attach_report(str(report), "classify")
    return job.execute(inputs)


def check_prompt_options(template: str | None, ensemble: str | None, question: str | None) -> None:
    """What can be checked before the model resolves: a bad template or an empty question fails at once."""
    prompt_templates(template, ensemble)
    if question is not None and not question.strip():
        raise UsageError("--question is empty; leave it out for the model's own question")


def classify_task(
    spec: ModelSpec,
    labels: list[str],
    template: str | None,
    ensemble: str | None,
    question: str | None,
    top_k: int | None,
    multi_label: bool,
    threshold: float,
    view: View | None = None,
) -> Task:
    """The classify task the model calls for: contrastive when it embeds images and texts, else generative
    (one place for the choice: the command, ``mmcli serve`` and ``mmcli.Client`` all come here). ``view``:
    what a contrastive model sees of each image (``views.make_view``); generative models refuse one."""
    from mmcli.modeling import registry, tasks

    check_prompt_options(template, ensemble, question)
    if {"encode_image", "encode_text"} <= spec.capabilities:
        if question is not None:
            raise UsageError("--question is for generative models; contrastive models use --template")
        return ContrastiveClassify(
            labels, template, ensemble, top_k, multi_label, threshold, spec.template, view=view
        )
    refuse_generative(view, spec.name)
    registry.require(spec, {"score_text"}, "classify")
    if template is not None or ensemble is not None:
        raise UsageError("--template and --ensemble are for contrastive models; use --question")
    tasks.check_question_template(spec)
    return GenerativeClassify(labels, question, top_k, multi_label, threshold)


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

    def record(
        self, name: str, probs: list[float], order: list[int] | None = None, **extra: object
    ) -> Record:
        """``order``: the labels best first, when not by score (a TTA vote)."""
        ranked = _rank(probs, self.labels, self.top_k, order)
        return _record(name, ranked, self.multi_label, self.threshold, self.model, **extra)


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
        default_template: str | None = None,
        *,
        view: View | None = None,
    ) -> None:
        from mmcli.modeling import tasks

        super().__init__(labels, top_k, multi_label, threshold)
        self.view = None if view is None or view.plain else view
        self.template = template
        self.ensemble = ensemble
        where = "the model's template (configs/models.toml)"
        self.templates = prompt_templates(template, ensemble) or [
            tasks.check_template(default_template or DEFAULT_TEMPLATE, where)
        ]
        self.text_emb: Any = None
        self.scale: Any = None
        self.bias: Any = None
        self.scoring = "softmax"

    def options_key(self) -> dict[str, Any]:
        key = super().options_key() | {"template": self.template, "ensemble": self.ensemble}
        return key if self.view is None else key | self.view.key()

    def prepare(self, backend: Any) -> None:
        from mmcli.modeling import tasks

        # once per run, whatever the number of images
        self.text_emb = tasks.label_embeddings(backend.encode_texts, self.labels, self.templates)
        self.scale, self.bias, self.scoring = backend.logit_scale, backend.logit_bias, backend.scoring

    def records(self, done: list[Outcome]) -> list[list[Record]]:
        import torch

        from mmcli.modeling import tasks

        if self.view is not None and self.view.multi:
            return [[self.viewed(out)] for out in done]
        rows = torch.stack([out.value for out in done])
        probs = tasks.label_probabilities(rows, self.text_emb, self.scale, self.bias, self.scoring).tolist()
        return [[self.record(out.item.input, p)] for out, p in zip(done, probs, strict=True)]

    def viewed(self, out: Outcome) -> Record:
        """The record of an image seen several times: tiles pooled (``--pool``), or TTA copies combined
        (``--tta-combine``: ZERO's vote ranks the labels, the kept views' mean probabilities are the
        scores)."""
        from mmcli.modeling import pooling, tasks, views

        assert self.view is not None
        matrix = views.unpack(out.value)
        if self.view.kind == "tiles":
            cosines = (matrix @ self.text_emb.T).T.numpy()  # (labels, views)
            pooled = pooling.pool(cosines, self.scale, self.view.pool)
            probs = pooling.probabilities(self.scale * pooled, self.bias, self.scoring)
            return self.record(out.item.input, probs.tolist())
        each = tasks.label_probabilities(matrix, self.text_emb, self.scale, self.bias, self.scoring).numpy()
        if self.view.combine == "mean":
            return self.record(out.item.input, each.mean(axis=0).tolist())
        order, mean = pooling.zero_vote(each)
        return self.record(out.item.input, mean.tolist(), order=order)


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


def _rank(
    probs: list[float], labels: list[str], top_k: int | None, order: list[int] | None
) -> list[tuple[str, float]]:
    from mmcli.modeling import tasks

    if order is None:
        return tasks.rank_labels(probs, labels, top_k)
    return [(labels[i], float(probs[i])) for i in order[:top_k]]


def _record(
    name: str,
    ranked: list[tuple[str, float]],
    multi_label: bool,
    threshold: float,
    model: str,
    **extra: object,
) -> dict[str, object]:
    record: dict[str, object] = {
        "input": name,
        "label": ranked[0][0],
        "score": ranked[0][1],
        "scores": dict(ranked),
    }
    if multi_label:
        record["labels"] = [label for label, p in ranked if p >= threshold]
    return record | {"model": model} | extra
