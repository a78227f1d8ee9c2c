"""Tiny real checkpoints, built offline (config -> save_pretrained), for tests, benchmarks and demos.

They load through exactly the code users hit (``from_pretrained`` on a directory). Weights are random
unless a caller trains them; ``seed`` makes them reproducible.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _quiet() -> None:
    from mmcli.modeling.backends.base import quiet_transformers

    quiet_transformers()


CHARS = string.ascii_lowercase + string.digits + ".,'!?-:;()/&"


def clip_tokenizer(words: Sequence[str] = ()) -> Any:
    """A CLIP BPE tokenizer: one token per character (and its end-of-word form), and one token for each
    of ``words`` (through the merges that build it), so prompts made of them are as short as with
    CLIP's real 49k-token vocabulary."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        if len(word) < 2 or not set(word) <= set(CHARS):
            continue
        left = word[0]
        for i, c in enumerate(word[1:], start=1):
            right = c + ("</w>" if i == len(word) - 1 else "")
            merge = (left, right)
            left += right
            if merge not in merges:
                merges.append(merge)
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]  # tuples, as tokenizers wants


def build_clip(
    directory: str | Path,
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
) -> Path:
    """Save a CLIPModel + CLIPProcessor to ``directory``. Defaults: a ~100 KB model for tests."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    _quiet()
    torch.manual_seed(seed)
    tok = clip_tokenizer(words)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": text_hidden or hidden,
            "intermediate_size": 4 * (text_hidden or hidden),
            "num_hidden_layers": text_layers or layers,
            "num_attention_heads": text_heads or heads,
            "max_position_embeddings": max_positions,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch,
        },
        projection_dim=projection,
    )
    model = CLIPModel(config).eval()
    if crop:
        images = CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
    else:
        images = CLIPImageProcessor(size={"height": image_size, "width": image_size}, do_center_crop=False)
    out = Path(directory)
    model.save_pretrained(out)
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
    return out


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


def build_siglip(directory: str | Path, *, hidden: int = 32, image_size: int = 32, seed: int = 0) -> Path:
    """Save a tiny SiglipModel + SiglipProcessor (word-level tokenizer, texts padded to 64)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        PreTrainedTokenizerFast,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    _quiet()
    torch.manual_seed(seed)
    words = ["<pad>", "<unk>", "</s>", ".", "a", "an", "of", "photo", "this", "is", "the"]
    words += [
        "cat",
        "dog",
        "bird",
        "car",
        "tree",
        "red",
        "green",
        "blue",
        "yellow",
        "purple",
        "orange",
        "circle",
        "square",
        "triangle",
        "star",
    ]
    vocab = {w: i for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="</s>",
        model_max_length=64,
    )
    config = SiglipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "projection_size": hidden,
        },
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": 8,
        },
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():  # a non-trivial scale and bias, so the test sees them used
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-1.5)
    out = Path(directory)
    model.save_pretrained(out)
    images = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    SiglipProcessor(image_processor=images, tokenizer=tok).save_pretrained(out)
    return out
