"""mmcli eval: how well zero-shot classify does on your labelled images, and which prompt template is best.

Eval runs classify's own Job and task (``classify_task``), so its numbers are those of classify's records, and
everything classify does applies: ``mmcli serve``, ``--engine ray``, the embedding cache, isolated decoding,
resume of ``--output``. ``EvalJob`` only adds each record's truth and keeps a small ranking per image.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mmcli.commands import _eval_data
from mmcli.commands._eval_job import EvalJob, Shared
from mmcli.commands._eval_show import ENSEMBLE, entry_name, show, tables, template_table
from mmcli.commands._options import Pool, Report, Tiles, Tta, TtaCombine, ViewOption, with_common_options
from mmcli.commands.classify import (
    FULL_LINE_COMMENT,
    Ensemble,
    check_prompt_options,
    classify_task,
    read_list_file,
)
from mmcli.errors import EXIT_OK, UsageError
from mmcli.modeling.views import make_view
from mmcli.run.options import CommonOptions
from mmcli.run.task import Task
from mmcli.sinks.output import EXTENSIONS, is_stream

if TYPE_CHECKING:
    from mmcli.modeling.registry import ModelSpec
    from mmcli.modeling.views import View
    from mmcli.run.progress import Summary

FORMATS = ("table", "json", "jsonl")


# eval's own options (--ensemble is classify's).
Data = Annotated[
    str | None,
    typer.Argument(
        metavar="DATA",
        help="A folder per class: DATA/<label>/*.jpg (folder names are the labels unless --labels-file "
        "maps them); class folders are walked recursively.",
        show_default=False,
    ),
]
Truth = Annotated[
    Path | None,
    typer.Option(
        "--truth",
        help="Instead of DATA: a CSV with path,label columns; relative paths are relative to the CSV's folder.",
    ),
]
LabelsFile = Annotated[
    Path | None,
    typer.Option(
        "--labels-file",
        help='Map class names (folders, or --truth labels) to the labels the model scores: lines "name: label" '
        "(the first colon splits), or a bare label, which the class of that name takes. Every class must be "
        'listed; a label that no class takes is a distractor the model may still choose. "#" starts a comment.',
    ),
]
Template = Annotated[
    str | None,
    typer.Option("--template", "-t", help='Prompt template with one "{}" (default: the model\'s own).'),
]
Question = Annotated[
    str | None,
    typer.Option("--question", help="Generative models: the question each label answers."),
]
CompareTemplates = Annotated[
    Path | None,
    typer.Option(
        "--compare-templates",
        help='Rank the templates in FILE (one per line, e.g. "a photo of a {}."; "ensemble:NAME" for an '
        "ensemble) by top-1 on the same image embeddings, computed once. Contrastive models only.",
    ),
]


@with_common_options
def eval_command(
    data: Data = None,
    truth: Truth = None,
    labels_file: LabelsFile = None,
    template: Template = None,
    ensemble: Ensemble = None,
    question: Question = None,
    view: ViewOption = None,
    tiles: Tiles = None,
    pool: Pool = None,
    tta: Tta = None,
    tta_combine: TtaCombine = None,
    report: Report = None,
    compare_templates: CompareTemplates = None,
    *,
    common: CommonOptions,
) -> int:
    """Measure zero-shot classify on labelled images: top-1 and top-5 accuracy, per-class precision and recall, the most confused pairs, the misclassified images.

    Results go to stdout: a table on a terminal, else JSON (--format table|json|jsonl). Without --output the per-image records are only counted; --output FILE (.jsonl, .json, .csv or .parquet) keeps each one, classify's record plus "truth", and a re-run with the same FILE skips the images already in it yet reports on them all.

    Examples: mmcli eval photos/ --model siglip-base --ensemble imagenet80
              mmcli eval --truth truth.csv --labels-file names.txt -o eval.jsonl
              mmcli eval photos/ --compare-templates templates.txt
    """
    from mmcli.modeling import registry

    check_prompt_options(template, ensemble, question)
    seen = make_view(view, tiles, pool, tta, tta_combine)
    fmt = results_format(common.format)
    entries = templates_to_rank(compare_templates, template, ensemble, question, common)
    dataset = _eval_data.load(data, truth, labels_file)
    spec = registry.resolve(common.model or registry.default_model("classify"), common.revision)
    if entries is not None:
        if report is not None:
            raise UsageError("--report shows one eval: leave out --compare-templates, or drop --report")
        return rank_templates(entries, spec, dataset, common, fmt, seen)
    asked = {"template": template, "ensemble": ensemble, "question": question}
    return run_eval(spec, dataset, asked, seen, common, fmt, report)


def templates_to_rank(
    compare_templates: Path | None,
    template: str | None,
    ensemble: str | None,
    question: str | None,
    common: CommonOptions,
) -> list[tuple[str | None, str | None]] | None:
    """The entries of --compare-templates (None without it), checked with the options it cannot go with."""
    if common.manifest:
        raise UsageError("eval takes its images from DATA or --truth FILE.csv, not --manifest")
    entries = read_templates(compare_templates) if compare_templates is not None else None
    if entries is not None and (template is not None or ensemble is not None or question is not None):
        raise UsageError(
            "--compare-templates lists the templates to rank: leave out --template, --ensemble, --question"
        )
    return entries


def run_eval(
    spec: ModelSpec,
    dataset: _eval_data.Dataset,
    asked: dict[str, str | None],
    view: View | None,
    common: CommonOptions,
    fmt: str,
    report: Path | None,
) -> int:
    """One eval: classify's run with each record's truth, then its metrics, shown (and put on --report's
    page) once every image is in. ``asked``: the template, ensemble and question given."""
    task = make_task(spec, dataset.labels, asked["template"], asked["ensemble"], asked["question"], view)
    job = EvalJob(task, job_options(common), spec, dataset)
    page = job.attach_report(str(report), "eval") if report is not None else None
    job.report_at_finish = False  # the page needs the metrics, known once the run is over
    try:
        status = job.execute(dataset.inputs)
        if not job.finished():
            if page is not None:
                page.close(complete=False)
            return status
        result = {"model": spec.label, **{k: v for k, v in asked.items() if v is not None}, **job.metrics()}
        if page is not None:
            page.set_eval(result)
            page.close()
    except BaseException:
        if page is not None:
            page.abort()
        raise
    show(result, fmt, tables)
    return status


def make_task(
    spec: ModelSpec,
    labels: list[str],
    template: str | None,
    ensemble: str | None,
    question: str | None,
    view: View | None = None,
) -> Task:
    """classify's task with full rankings (every label scored, no threshold): the one place eval's classify
    options (--view, --tiles, --pool, --tta) pass through to classify_task."""
    return classify_task(spec, labels, template, ensemble, question, None, False, 0.5, view)


def results_format(fmt: str | None) -> str:
    """--format of the results: table on a terminal, JSON otherwise (jsonl: the same JSON on one line)."""
    chosen = (fmt or ("table" if sys.stdout.isatty() else "json")).lower()
    if chosen not in FORMATS:
        raise UsageError(f"--format {chosen} is not available for eval; choose one of {', '.join(FORMATS)}")
    return chosen


def job_options(common: CommonOptions) -> CommonOptions:
    """The options of eval's classify Job: --format names the results' format, so the records' comes from
    --output's extension (jsonl by default); without --output the records are only counted."""
    output = common.output
    if output is None:
        return dataclasses.replace(common, format="jsonl")
    if "://" in output or is_stream(output):
        raise UsageError(
            f"--output {output}: eval writes its per-image records to a file (results go to stdout)"
        )
    fmt = EXTENSIONS.get(Path(output).suffix.lower(), "jsonl")
    if fmt == "npy":
        raise UsageError(f"--output {output}: eval's records go to a .jsonl, .json, .csv or .parquet file")
    return dataclasses.replace(common, format=fmt)


# -- --compare-templates -----------------------------------------------------------------------------------
def read_templates(path: Path) -> list[tuple[str | None, str | None]]:
    """(template, ensemble) per line of FILE, each checked now, before any model loads."""
    from mmcli.modeling import tasks

    where = f"--compare-templates {path}"
    lines = read_list_file(path, "--compare-templates", "templates", FULL_LINE_COMMENT)
    entries: list[tuple[str | None, str | None]] = []
    for line in lines:
        if line.startswith(ENSEMBLE):
            name = line[len(ENSEMBLE) :].strip()
            tasks.ensemble_templates(name)
            entries.append((None, name))
        else:
            entries.append((tasks.check_template(line, f"{where}: template"), None))
    if len(set(entries)) < len(entries):
        raise UsageError(f"{where} lists a template twice")
    return entries


def rank_templates(
    entries: list[tuple[str | None, str | None]],
    spec: ModelSpec,
    dataset: _eval_data.Dataset,
    common: CommonOptions,
    fmt: str,
    view: View | None = None,
) -> int:
    """One classify run per template on the same images: the first computes the image embeddings, the
    others find them in the embedding cache (and here reuse the loaded model), so each extra template costs
    its text encoding. Inputs that failed in the first run are not tried again."""
    check_ranking(spec, common)
    options = dataclasses.replace(job_options(common), summary_json=None)
    shared, rows, summaries, status, code = Shared(), [], [], EXIT_OK, EXIT_OK
    failed: list[dict[str, Any]] = []
    for number, (template, ensemble) in enumerate(entries, start=1):
        shown = entry_name(template, ensemble)
        result: dict[str, Any] = {"n": 0, "top1": None, "top5": None}
        summary: Summary | None = None
        if dataset.inputs:
            if not common.quiet:
                sys.stderr.write(f"mmcli: template {number}/{len(entries)}: {shown}\n")
            job = EvalJob(
                make_task(spec, dataset.labels, template, ensemble, None, view),
                options,
                spec,
                dataset,
                shared,
            )
            code = job.execute(dataset.inputs)
            if not job.finished():
                return code
            result, summary = job.metrics(), job.keeper.last
        status = status or code  # the first run's failures (3), or a later run's trouble
        if number == 1:
            failed = result["failures"]
            gone = {f["input"] for f in failed}
            dataset = dataclasses.replace(dataset, inputs=[p for p in dataset.inputs if p not in gone])
        rows.append(template_row(template, ensemble, result, len(failed), summary))
        if summary is not None:
            summaries.append(dataclasses.asdict(summary))
    if common.summary_json:
        write_summaries(common.summary_json, summaries)
    show(ranked(rows), fmt, template_table)
    return status


def check_ranking(spec: ModelSpec, common: CommonOptions) -> None:
    """What --compare-templates refuses once the model is known, and its warning about --no-cache."""
    if not {"encode_image", "encode_text"} <= spec.capabilities:
        raise UsageError(
            f"--compare-templates ranks prompt templates, which {spec.label} (generative) does not use"
        )
    if common.output is not None:
        raise UsageError(
            "--compare-templates writes no --output: it ranks templates (run eval per template for records)"
        )
    if common.no_cache and not common.quiet:
        sys.stderr.write("mmcli: warning: --no-cache: every template encodes the images again\n")


def template_row(
    template: str | None, ensemble: str | None, result: dict[str, Any], failed: int, summary: Summary | None
) -> dict[str, Any]:
    """A template's row of the ranking: its accuracy, the inputs that failed, the embedding cache's use."""
    return {
        "template": template,
        "ensemble": ensemble,
        "top1": result["top1"],
        "top5": result["top5"],
        "n": result["n"],
        "failed": failed,
        "cache_hits": summary.cache_hits if summary else 0,
        "cache_misses": summary.cache_misses if summary else 0,
    }


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows best first (top-1, then top-5; ties keep the file's order), each with its rank."""
    order = sorted(rows, key=lambda r: (-(r["top1"] or 0.0), -(r["top5"] or 0.0)))
    return [{"rank": rank, **row} for rank, row in enumerate(order, start=1)]


def write_summaries(path: str, summaries: list[dict[str, Any]]) -> None:
    """--summary-json of --compare-templates: each run's summary; a file that cannot be written is a warning."""
    try:
        Path(path).write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"mmcli: cannot write --summary-json {path}: {exc}\n")
