"""Tiny contrastive checkpoints (CLIP, SigLIP), built offline for tests, benchmarks and demos.

Each ``*_recipe`` function makes the family's ``Recipe`` (``mmcli.testing.recipe``) at the sizes it is
given; each ``build_*`` entry point builds one into a directory. They load through exactly the code users
hit (``from_pretrained`` on a directory). Weights are random unless a caller trains them; ``seed`` makes
them reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mmcli.testing.recipe import CONTRASTIVE, Recipe, block, build, token_ids
from mmcli.testing.vocab import clip_tokenizer, siglip_tokenizer


def clip_recipe(
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 32,
    patch: int = 8,
    projection: int = 16,
    text_hidden: int | None = None,
    text_layers: int | None = None,
    text_heads: int | None = None,
    max_positions: int = 77,
    seed: int = 0,
    crop: bool = True,
    words: Sequence[str] = (),
) -> Recipe:
    """A CLIPModel + CLIPProcessor; the text tower is as wide and deep as the vision one unless told.
    ``words`` get a token each (``clip_tokenizer``); ``crop``: resize the shortest edge, then center-crop."""

    def config(tok: Any) -> dict[str, Any]:
        text = block(text_hidden or hidden, text_layers or layers, text_heads or heads, ffn=4)
        return {
            "text_config": {"vocab_size": len(tok), "max_position_embeddings": max_positions}
            | text
            | token_ids(tok),
            "vision_config": block(hidden, layers, heads, ffn=4)
            | {"image_size": image_size, "patch_size": patch},
            "projection_dim": projection,
        }

    square = {"height": image_size, "width": image_size}
    images = (
        {"size": {"shortest_edge": image_size}, "crop_size": square}
        if crop
        else {"size": square, "do_center_crop": False}
    )
    return Recipe(
        CONTRASTIVE,
        "CLIPModel",
        config,
        partial(clip_tokenizer, words),
        images,
        image_class="CLIPImageProcessor",
        seed=seed,
    )


def build_clip(directory: str | Path, **sizes: Any) -> Path:
    """Save a CLIPModel + CLIPProcessor to ``directory``; ``sizes`` as ``clip_recipe`` takes them (keywords).
    Defaults: a ~100 KB model for tests."""
    return build(clip_recipe(**sizes), directory)


def build_clip_vit_b32(directory: str | Path, seed: int = 0, words: Sequence[str] = ()) -> Path:
    """The real CLIP ViT-B/32 architecture with random weights (126 M parameters: the token embeddings of
    the small vocabulary are what is missing from the real 151 M)."""
    return build_clip(
        directory,
        hidden=768,
        layers=12,
        heads=12,
        image_size=224,
        patch=32,
        projection=512,
        text_hidden=512,
        text_layers=12,
        text_heads=8,
        seed=seed,
        words=words,
    )


def _siglip_scale(model: Any) -> None:
    """A non-trivial logit scale and bias, so the tests see them used."""
    import torch

    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.5)


def siglip_recipe(*, hidden: int = 32, image_size: int = 32, seed: int = 0) -> Recipe:
    """A SiglipModel + SiglipProcessor (word-level tokenizer, texts padded to 64)."""

    def config(tok: Any) -> dict[str, Any]:
        return {
            "text_config": {"vocab_size": len(tok), "max_position_embeddings": 64, "projection_size": hidden}
            | block(hidden, ffn=4),
            "vision_config": block(hidden, ffn=4) | {"image_size": image_size, "patch_size": 8},
        }

    return Recipe(
        CONTRASTIVE,
        "SiglipModel",
        config,
        siglip_tokenizer,
        {"size": {"height": image_size, "width": image_size}},
        image_class="SiglipImageProcessor",
        fix=_siglip_scale,
        seed=seed,
    )


def build_siglip(directory: str | Path, **sizes: Any) -> Path:
    """Save a tiny SiglipModel + SiglipProcessor; ``sizes`` as ``siglip_recipe`` takes them (keywords)."""
    return build(siglip_recipe(**sizes), directory)
