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
