"""Combining the scores of an image's views (views.py) into one score per label or per query.

Tiles, ``--pool``:

- ``max``: a label's (or query's) similarity is its best over the views;
- ``mean``: a mean of the views' likelihoods, exp(scale * cosine), with the global view weighted as much
  as all the tiles together, taken back to cosine units: ``log(½ e^{s·g} + ½ mean_t e^{s·t}) / s``.
  Unlike a mean of embeddings or of per-view softmaxes, a tile that matches a label strongly still counts
  (an empty tile scores low for every label instead of spreading its probability over them), and unlike
  ``max`` one tile showing part of a large object (a star's point reads as a triangle) does not outvote
  the whole image. Equal cosines pool to that cosine.

TTA, ``--tta-combine``:

- ``zero`` (ZERO, Farina et al., NeurIPS 2024): keep the most confident views (the lowest-entropy tenth,
  at least one), let each vote for its top label (zero temperature), and rank labels by votes, then by the
  kept views' mean probability, which is the score reported;
- ``mean``: the mean of all views' probabilities.

numpy only, float64 inside: the same figures whether the embeddings came from this process or a server.
"""

from __future__ import annotations

import math

import numpy as np

GLOBAL_WEIGHT = 0.5
ZERO_KEEP = 0.1


def pool(cosines: np.ndarray, scale: float, how: str) -> np.ndarray:
    """(..., V) cosines of V views (the global view first) -> (...) pooled cosines."""
    sims = np.asarray(cosines, dtype=np.float64)
    if sims.shape[-1] == 1:
        return sims[..., 0]
    if how == "max":
        return sims.max(axis=-1)
    logits = sims * scale
    top = logits.max(axis=-1, keepdims=True)
    likely = np.exp(logits - top)
    mixed = GLOBAL_WEIGHT * likely[..., 0] + (1 - GLOBAL_WEIGHT) * likely[..., 1:].mean(axis=-1)
    return (top[..., 0] + np.log(mixed)) / scale


def probabilities(logits: np.ndarray, bias: float, scoring: str) -> np.ndarray:
    """Label probabilities from (..., L) logits, as tasks.label_probabilities scores them."""
    logits = np.asarray(logits, dtype=np.float64)
    if scoring == "sigmoid":
        return 1.0 / (1.0 + np.exp(-(logits + bias)))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def zero_vote(probs: np.ndarray, keep: float = ZERO_KEEP) -> tuple[list[int], np.ndarray]:
    """(V, L) probabilities -> (labels best first, the kept views' mean probabilities)."""
    probs = np.asarray(probs, dtype=np.float64)
    dist = probs / np.clip(probs.sum(axis=-1, keepdims=True), 1e-12, None)
    entropy = -(dist * np.log(np.clip(dist, 1e-12, None))).sum(axis=-1)
    kept = np.argsort(entropy, kind="stable")[: max(1, round(keep * len(probs)))]
    votes = np.bincount(probs[kept].argmax(axis=-1), minlength=probs.shape[1])
    mean = probs[kept].mean(axis=0)
    order = sorted(range(probs.shape[1]), key=lambda i: (-votes[i], -mean[i], i))
    return order, mean


def pooled_scores(queries: list[np.ndarray], targets: list[np.ndarray], scale: float, how: str) -> np.ndarray:
    """(Nq, Nt) scores between queries and targets, each a (V, D) matrix of its views' embeddings (a text
    query has one): every pair of views is scored, the pair of global views counting as the global view."""
    stacked = np.concatenate([np.asarray(t, dtype=np.float32) for t in targets])
    counts = np.array([len(t) for t in targets])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    out = np.empty((len(queries), len(targets)), dtype=np.float64)
    for q, query in enumerate(queries):
        sims = (np.asarray(query, dtype=np.float32) @ stacked.T).astype(np.float64)  # (Vq, sum Vt)
        pairs = len(query) * counts
        if how == "max":
            out[q] = np.maximum.reduceat(sims.max(axis=0), starts)
            continue
        top = sims.max()
        likely = np.exp((sims - top) * scale)
        first = likely[0, starts]
        rest = likely.sum(axis=0)
        rest[starts] -= first  # the global pair is weighed on its own
        rest = np.add.reduceat(rest, starts) / np.maximum(pairs - 1, 1)
        mixed = np.where(pairs > 1, GLOBAL_WEIGHT * first + (1 - GLOBAL_WEIGHT) * rest, first)
        out[q] = top + np.log(np.maximum(mixed, math.ulp(0.0))) / scale
    return out


def ranking(scores: np.ndarray, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the scores and target indices best first (ties keep the targets' order)."""
    k = scores.shape[1] if top_k is None else min(top_k, scores.shape[1])
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, index, axis=1), index
