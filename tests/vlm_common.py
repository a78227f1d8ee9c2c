"""Shared by test_generative.py and test_generic_vlm.py: generation one image at a time or batched (their
fixtures ``one_thread`` and ``backend`` are in conftest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from mmcli.modeling.backends.base import GenerateOptions

GREEDY = GenerateOptions(max_new_tokens=12)


def one_at_a_time(
    model: Any, prompts: list[str | None], options: GenerateOptions = GREEDY, *, images: Sequence[Image.Image]
) -> list[str]:
    return [
        model.generate(model.preprocess([img]), [p], options)[0]
        for img, p in zip(images, prompts, strict=False)
    ]


def batched(
    model: Any, prompts: list[str | None], options: GenerateOptions = GREEDY, *, images: Sequence[Image.Image]
) -> list[str]:
    batch = model.collate([model.preprocess([img]) for img in images[: len(prompts)]])
    out: list[str] = model.generate(batch, prompts, options)
    return out


def seeded_sampling_is_reproducible(model: Any, images: Sequence[Image.Image]) -> None:
    """Sampling with a seed gives the same text each time, other seeds other texts, and leaves the caller's
    torch random state where it was."""
    import torch

    batch = model.collate([model.preprocess([img]) for img in images])

    def sample(seed: int) -> list[str]:
        options = GenerateOptions(max_new_tokens=8, do_sample=True, temperature=1.5, seed=seed)
        out: list[str] = model.generate(batch, [None, "what?"][: len(images)], options)
        return out

    state = torch.random.get_rng_state()
    assert sample(1) == sample(1)
    assert torch.equal(state, torch.random.get_rng_state()), "the caller's random state must not move"
    assert len({tuple(sample(seed)) for seed in range(4)}) > 1
