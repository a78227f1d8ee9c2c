"""mmcli eval: how well zero-shot classify does on your labelled images, and which prompt template is best.

Eval runs classify's own Job and task (``classify_task``), so its numbers are those of classify's records, and
everything classify does applies: ``mmcli serve``, ``--engine ray``, the embedding cache, isolated decoding,
resume of ``--output``. ``EvalJob`` only adds each record's truth and keeps a small ranking per image.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mmcli.commands import _eval_data
from mmcli.commands._eval_job import EvalJob, Shared
from mmcli.commands._options import Pool, Report, Tiles, Tta, TtaCombine, ViewOption, with_common_options
from mmcli.commands.classify import (
    FULL_LINE_COMMENT,
    check_prompt_options,
    classify_task,
    read_list_file,
)
from mmcli.errors import EXIT_OK, UsageError
from mmcli.modeling.views import make_view
from mmcli.run.options import CommonOptions
from mmcli.run.task import Task
from mmcli.sinks.output import EXTENSIONS, dumps, is_stream

if TYPE_CHECKING:
    from collections.abc import Callable

    from mmcli.modeling.registry import ModelSpec
    from mmcli.modeling.views import View
    from mmcli.run.progress import Summary

FORMATS = ("table", "json", "jsonl")
SHOWN = 10  # rows of each list in the table; --format json holds them all
ENSEMBLE = "ensemble:"


@with_common_options
def eval_command(
    data: Annotated[
        str | None,
        typer.Argument(
            metavar="DATA",
            help="A folder per class: DATA/<label>/*.jpg (folder names are the labels unless --labels-file "
            "maps them); class folders are walked recursively.",
            show_default=False,
        ),
    ] = None,
    truth: Annotated[
        Path | None,
        typer.Option(
            "--truth",
            help="Instead of DATA: a CSV with path,label columns; relative paths are relative to the CSV's folder.",
        ),
    ] = None,
    labels_file: Annotated[
        Path | None,
        typer.Option(
            "--labels-file",
            help='Map class names (folders, or --truth labels) to the labels the model scores: lines "name: label" '
            "(the first colon splits), or a bare label, which the class of that name takes. Every class must be "
            'listed; a label that no class takes is a distractor the model may still choose. "#" starts a comment.',
        ),
    ] = None,
    template: Annotated[
        str | None,
        typer.Option("--template", "-t", help='Prompt template with one "{}" (default: the model\'s own).'),
    ] = None,
    ensemble: Annotated[
        str | None,
        typer.Option(
            "--ensemble", help="Average over a template set from configs/templates.toml (imagenet80)."
        ),
    ] = None,
    question: Annotated[
        str | None,
        typer.Option("--question", help="Generative models: the question each label answers."),
    ] = None,
    view: ViewOption = None,
    tiles: Tiles = None,
    pool: Pool = None,
    tta: Tta = None,
    tta_combine: TtaCombine = None,
    report: Report = None,
    compare_templates: Annotated[
        Path | None,
        typer.Option(
            "--compare-templates",
            help='Rank the templates in FILE (one per line, e.g. "a photo of a {}."; "ensemble:NAME" for an '
            "ensemble) by top-1 on the same image embeddings, computed once. Contrastive models only.",
        ),
    ] = None,
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
    if common.manifest:
        raise UsageError("eval takes its images from DATA or --truth FILE.csv, not --manifest")
    entries = read_templates(compare_templates) if compare_templates is not None else None
    if entries is not None and (template is not None or ensemble is not None or question is not None):
        raise UsageError(
            "--compare-templates lists the templates to rank: leave out --template, --ensemble, --question"
        )
    dataset = _eval_data.load(data, truth, labels_file)
    spec = registry.resolve(common.model or registry.default_model("classify"), common.revision)
    if entries is not None:
        if report is not None:
            raise UsageError("--report shows one eval: leave out --compare-templates, or drop --report")
        return rank_templates(entries, spec, dataset, common, fmt, seen)
    task = make_task(spec, dataset.labels, template, ensemble, question, seen)
    job = EvalJob(task, job_options(common), spec, dataset)
    page = job.attach_report(str(report), "eval") if report is not None else None
    job.report_at_finish = False  # the page needs the metrics, known once the run is over
    try:
        status = job.execute(dataset.inputs)
        if not job.finished():
            if page is not None:
                page.close(complete=False)
            return status
        asked = {"template": template, "ensemble": ensemble, "question": question}
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
    options = dataclasses.replace(job_options(common), summary_json=None)
    shared, rows, summaries, status, code = Shared(), [], [], EXIT_OK, EXIT_OK
    failed: list[dict[str, Any]] = []
    for number, (template, ensemble) in enumerate(entries, start=1):
        shown = template if template is not None else f"{ENSEMBLE}{ensemble}"
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
        rows.append(
            {
                "template": template,
                "ensemble": ensemble,
                "top1": result["top1"],
                "top5": result["top5"],
                "n": result["n"],
                "failed": len(failed),
                "cache_hits": summary.cache_hits if summary else 0,
                "cache_misses": summary.cache_misses if summary else 0,
            }
        )
        if summary is not None:
            summaries.append(dataclasses.asdict(summary))
    ranked = sorted(rows, key=lambda r: (-(r["top1"] or 0.0), -(r["top5"] or 0.0)))  # ties: file order
    ranked = [{"rank": rank, **row} for rank, row in enumerate(ranked, start=1)]
    if common.summary_json:
        try:
            Path(common.summary_json).write_text(json.dumps(summaries, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            sys.stderr.write(f"mmcli: cannot write --summary-json {common.summary_json}: {exc}\n")
    show(ranked, fmt, template_table)
    return status


# -- showing the results ----------------------------------------------------------------------------------
def show(result: Any, fmt: str, table: Callable[[Any, Any], None]) -> None:
    if fmt == "table":
        from rich.console import Console

        tty = sys.stdout.isatty()
        buffer = io.StringIO()
        table(result, Console(file=buffer, force_terminal=tty, width=None if tty else 120))
        text = buffer.getvalue()
    else:
        text = (readable_json(result) if fmt == "json" else dumps(result)) + "\n"
    sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace"))
    sys.stdout.flush()


def readable_json(result: Any) -> str:
    """JSON with one line per key (results) or per row (--compare-templates): long lists stay on one line."""
    if isinstance(result, list):
        return "[\n" + ",\n".join(f"  {dumps(row)}" for row in result) + "\n]"
    return "{\n" + ",\n".join(f"  {dumps(key)}: {dumps(value)}" for key, value in result.items()) + "\n}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _more(console: Any, rows: list[Any], what: str) -> None:
    if len(rows) > SHOWN:
        console.print(
            f"… and {len(rows) - SHOWN} more {what} (--format json lists them all)", highlight=False
        )


def tables(result: dict[str, Any], console: Any) -> None:
    """The metrics as rich tables: the totals, per class, the most confused pairs, the misclassified."""
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    failed = f", {result['failed']} failed" if result["failed"] else ""
    console.print(
        f"[bold]{escape(result['model'])}[/bold]: {result['n']} images{failed}; "
        f"top-1 [bold]{_pct(result['top1'])}[/bold], top-5 [bold]{_pct(result['top5'])}[/bold]",
        highlight=False,
    )
    per_class = Table("label", "precision", "recall", "support", header_style="bold", title="per class")
    for label, row in result["per_class"].items():
        per_class.add_row(Text(label), _ratio(row["precision"]), _ratio(row["recall"]), str(row["support"]))
    console.print(per_class)
    if result["confused"]:
        pairs = Table("truth", "predicted", "images", header_style="bold", title="most confused")
        for pair in result["confused"][:SHOWN]:
            pairs.add_row(Text(pair["truth"]), Text(pair["predicted"]), str(pair["count"]))
        console.print(pairs)
        _more(console, result["confused"], "pairs")
    if result["misclassified"]:
        wrong = Table("input", "truth", "top-3", header_style="bold", title="misclassified")
        for miss in result["misclassified"][:SHOWN]:
            top3 = "  ".join(f"{label} {score:.3f}" for label, score in miss["top3"])
            wrong.add_row(Text(miss["input"]), Text(miss["truth"]), Text(top3))
        console.print(wrong)
        _more(console, result["misclassified"], "images")
    if result["failures"]:
        bad = Table("input", "error", header_style="bold", title="failed (not scored)")
        for failure in result["failures"][:SHOWN]:
            bad.add_row(Text(failure["input"]), Text(failure["error"]))
        console.print(bad)
        _more(console, result["failures"], "inputs")


def template_table(ranked: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table("rank", "template", "top-1", "top-5", "images", "cached", header_style="bold")
    for row in ranked:
        name = row["template"] if row["template"] is not None else f"{ENSEMBLE}{row['ensemble']}"
        table.add_row(
            str(row["rank"]),
            Text(name),
            _pct(row["top1"]),
            _pct(row["top5"]),
            str(row["n"]),
            str(row["cache_hits"]),
        )
    console.print(table)
