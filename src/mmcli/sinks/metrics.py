"""Zero-shot accuracy from classify's rankings: top-1/top-k, per-class precision and recall, the confusion
matrix and its most confused pairs (``mmcli eval``).

Pure Python over (input, truth, ranking) rows, so the numbers can be checked against any list of classify
records and the report module gets one plain dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

TOP_K = 5  # the "top-5" of the results
KEPT = TOP_K  # labels kept per image: all that top-5 and the misclassified's top-3 need

Ranking = Sequence[tuple[str, float]]  # (label, score), best first


def ranking_of(record: dict[str, Any]) -> list[tuple[str, float]]:
    """The best ``KEPT`` (label, score) pairs of a classify record (its "scores" are best first): an
    image's share of the metrics, small enough to hold a million of."""
    scores = record["scores"]
    return [(str(label), float(score)) for label, score in list(scores.items())[:KEPT]]


def evaluate(
    labels: Sequence[str],
    scored: Iterable[tuple[str, str, Ranking]],
    failures: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The metrics of ``scored`` rows (input, truth, ranking), in their order. ``labels`` are the candidate
    labels (every truth among them); a ratio with nothing to divide by (no image, a label never predicted)
    is None."""
    index = {label: i for i, label in enumerate(labels)}
    size = len(labels)
    matrix = [[0] * size for _ in range(size)]
    n = hits1 = hits5 = 0
    misclassified: list[dict[str, Any]] = []
    for name, truth, ranking in scored:
        predicted = ranking[0][0]
        matrix[index[truth]][index[predicted]] += 1
        n += 1
        if predicted == truth:
            hits1 += 1
        else:
            top3 = [[label, score] for label, score in ranking[:3]]
            misclassified.append({"input": name, "truth": truth, "top3": top3})
        if any(label == truth for label, _ in ranking[:TOP_K]):
            hits5 += 1
    failed = [{"input": name, "error": error} for name, error in failures]
    return {
        "n": n,
        "failed": len(failed),
        "top1": _ratio(hits1, n),
        "top5": _ratio(hits5, n),
        "per_class": per_class(labels, matrix),
        "confusion": {"labels": list(labels), "matrix": matrix},
        "confused": confused_pairs(labels, matrix),
        "misclassified": misclassified,
        "failures": failed,
        "labels": list(labels),
    }


def per_class(labels: Sequence[str], matrix: list[list[int]]) -> dict[str, dict[str, Any]]:
    """Precision (of the images predicted as the label, the share that are it), recall (of the images
    that are the label, the share predicted as it) and support (images that are it), per label."""
    out: dict[str, dict[str, Any]] = {}
    for i, label in enumerate(labels):
        support = sum(matrix[i])
        predicted = sum(row[i] for row in matrix)
        hits = matrix[i][i]
        out[label] = {
            "precision": _ratio(hits, predicted),
            "recall": _ratio(hits, support),
            "support": support,
        }
    return out


def confused_pairs(labels: Sequence[str], matrix: list[list[int]]) -> list[dict[str, Any]]:
    """Every (truth, predicted) pair of different labels that occurred, most frequent first."""
    pairs = [(count, i, j) for i, row in enumerate(matrix) for j, count in enumerate(row) if i != j and count]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [{"truth": labels[i], "predicted": labels[j], "count": count} for count, i, j in pairs]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None
