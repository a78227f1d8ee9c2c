"""Scoring: prompt templates, softmax / sigmoid, top-k, thresholds, cosine ranking.

torch is imported inside the functions that compute, so the commands can check templates before it loads.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mmcli.errors import UsageError
from mmcli.modeling.spec import ModelSpec, configs_dir, family_entry, load_config, model_type_entry

if TYPE_CHECKING:
    import numpy as np
    import torch

BRACES = "write {{ and }} for a literal brace"


@dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int = 30
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    raw_prompts: bool = False  # True: prompts reach the model as given, not through the question template


def ensemble_templates(name: str) -> list[str]:
    """The templates of ``--ensemble NAME`` (configs/templates.toml), each checked like a --template."""
    ensembles = load_config("templates.toml").get("ensembles", {})
    if name not in ensembles:
        raise UsageError(f"unknown --ensemble {name!r}; known: {', '.join(sorted(ensembles))}")
    where = f"--ensemble {name} ({configs_dir() / 'templates.toml'}): template"
    templates = ensembles[name].get("templates") if isinstance(ensembles[name], dict) else None
    if not isinstance(templates, list) or not templates:
        raise UsageError(f"{where}s: none listed")
    return [check_template(t, where) for t in templates]


def check_question_template(spec: ModelSpec) -> None:
    """The template a generative model's config puts questions through ("Question: {} Answer:")."""
    settings = family_entry(spec.family) | model_type_entry(spec.model_type) | spec.options
    if "question_template" in settings:
        where = f"the question_template of {spec.name} (configs/models.toml)"
        check_template(settings["question_template"], where, "question")


def check_template(template: object, where: str = "--template", what: str = "label") -> str:
    """A prompt template: text with exactly one ``{}``, where the label goes; ``{{`` and ``}}`` are braces."""
    if not isinstance(template, str):
        raise UsageError(f"{where} {template!r} is not text")
    try:
        fields = [
            (name, spec, conv)
            for _, name, spec, conv in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise UsageError(f"{where} {template!r} is not a valid template: {exc} ({BRACES})") from None
    if not fields:
        raise UsageError(f'{where} {template!r} has no "{{}}" where the {what} goes')
    if len(fields) > 1:
        raise UsageError(
            f'{where} {template!r} has {len(fields)} places in braces; it takes exactly one "{{}}", where '
            f"the {what} goes ({BRACES})"
        )
    if fields[0] != ("", "", None):
        raise UsageError(
            f'{where} {template!r}: write the {what}\'s place as "{{}}", with nothing inside the braces '
            f"({BRACES})"
        )
    return template


def label_embeddings(encode_texts: Any, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(L, D) label embeddings, computed once per run.

    With several templates each label's normalised embeddings are averaged and normalised again (the
    CLIP paper's prompt ensembling).
    """
    import torch

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
    import torch

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
    queries: np.ndarray, targets: np.ndarray, top_k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the target scores and indices in descending order of cosine similarity
    (rows are L2-normalised). numpy, float32: the same figures whether the embeddings were computed here or
    by a server; ties keep the targets' order."""
    import numpy as np

    sims = np.asarray(queries, dtype=np.float32) @ np.asarray(targets, dtype=np.float32).T
    k = sims.shape[1] if top_k is None else min(top_k, sims.shape[1])
    index = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, index, axis=1), index
