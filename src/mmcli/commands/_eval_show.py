"""How mmcli eval shows its results on stdout: rich tables on a terminal, else JSON (``--format``)."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

from mmcli.sinks.output import dumps

SHOWN = 10  # rows of each list in the table; --format json holds them all
ENSEMBLE = "ensemble:"  # how --compare-templates names an ensemble, in its FILE and in the ranking


def entry_name(template: str | None, ensemble: str | None) -> str:
    """A --compare-templates entry as its FILE spells it: the template, or ensemble:NAME."""
    return template if template is not None else f"{ENSEMBLE}{ensemble}"


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
        table.add_row(
            str(row["rank"]),
            Text(entry_name(row["template"], row["ensemble"])),
            _pct(row["top1"]),
            _pct(row["top5"]),
            str(row["n"]),
            str(row["cache_hits"]),
        )
    console.print(table)
