"""Scoring: prompt templates, softmax / sigmoid, top-k, thresholds, cosine ranking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mmcli.errors import UsageError
from mmcli.registry import load_config


def ensemble_templates(name: str) -> list[str]:
    ensembles = load_config("templates.toml").get("ensembles", {})
    if name not in ensembles:
        raise UsageError(f"unknown --ensemble {name!r}; known: {', '.join(sorted(ensembles))}")
    return list(ensembles[name]["templates"])


def check_template(template: str) -> str:
    if "{}" not in template:
        raise UsageError(f'--template {template!r} has no "{{}}" where the label goes')
    return template


def label_embeddings(encode_texts: Any, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(L, D) label embeddings, computed once per run.

    With several templates each label's normalised embeddings are averaged and normalised again (the
    CLIP paper's prompt ensembling).
    """
    texts = [t.format(label) for label in labels for t in templates]
    emb = encode_texts(texts).reshape(len(labels), len(templates), -1)
    if len(templates) == 1:
        return emb[:, 0]
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)


def label_probabilities(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: float,
    logit_bias: float = 0.0,
    scoring: str = "softmax",
) -> torch.Tensor:
    """(N, L) probabilities. CLIP: softmax over labels of scale*cosine, exactly logits_per_image.

    SigLIP: each label on its own, sigmoid(scale*cosine + bias).
    """
    logits = logit_scale * (image_emb @ text_emb.T)
    if scoring == "sigmoid":
        return torch.sigmoid(logits + logit_bias)
    return torch.softmax(logits, dim=-1)


def rank_labels(probs: Sequence[float], labels: Sequence[str], top_k: int | None) -> list[tuple[str, float]]:
    order = sorted(range(len(labels)), key=lambda i: -probs[i])
    if top_k is not None:
        order = order[:top_k]
    return [(labels[i], float(probs[i])) for i in order]


def cosine_ranking(
    queries: torch.Tensor, targets: torch.Tensor, top_k: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row, the target indices and cosine scores in descending order."""
    sims = queries @ targets.T
    k = sims.shape[1] if top_k is None else min(top_k, sims.shape[1])
    scores, index = torch.topk(sims, k=k, dim=1)
    return scores, index
