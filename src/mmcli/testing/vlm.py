"""Tiny image-text-to-text checkpoints of families the generic ``vlm`` backend runs, built offline for tests.

Qwen2-VL and Qwen2.5-VL (flattened patches + ``image_grid_thw``, multimodal rotary positions), Idefics3 /
SmolVLM (image tiles + ``pixel_attention_mask``, a varying number of image tokens per image), Idefics2
(a perceiver resampler) and Gemma 3 (pooled soft tokens). Each ``*_recipe`` function makes the family's
``Recipe`` (``mmcli.testing.recipe``) with its real chat template; each ``build_*`` entry point builds one,
so they load through ``AutoProcessor`` / ``AutoModelForImageTextToText`` exactly as hub checkpoints do.
Tokenizers are byte-level BPE over single bytes plus the family's special tokens
(``vocab.byte_tokenizer``); the language models are scaled (``recipe.speak``) so that greedy decoding
writes varied, non-empty text.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from mmcli.testing.recipe import (
    GENERATIVE,
    Recipe,
    block,
    build,
    decoder,
    has_torchvision,
    init_zero_projectors,
)
from mmcli.testing.vocab import byte, ids
from mmcli.testing.vocab import byte_tokenizer as byte_tokenizer  # bench/coverage.py takes it from here

# Qwen2-VL-Instruct's chat template (Qwen/Qwen2-VL-2B-Instruct), unchanged.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN2_VL_SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# SmolVLM-Instruct's chat template (HuggingFaceTB/SmolVLM-Instruct), unchanged.
IDEFICS3_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_SPECIAL = [
    "<|im_start|>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
]


# Idefics2-8B's chat template (HuggingFaceM4/idefics2-8b), unchanged.
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


# Gemma 3's chat template (google/gemma-3-4b-it), trimmed of system prompts and non-text content kinds.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


# -- Qwen2-VL, Qwen2.5-VL -------------------------------------------------------------------------------
def qwen_vision(
    hidden: int = 32, layers: int = 2, heads: int = 4, patch: int = 4, merge: int = 2
) -> dict[str, Any]:
    """A Qwen-VL vision tower: ``patch``-pixel patches (two frames deep), ``merge`` x ``merge`` merged."""
    return {
        "depth": layers,
        "hidden_size": hidden,
        "num_heads": heads,
        "patch_size": patch,
        "spatial_merge_size": merge,
        "temporal_patch_size": 2,
    }


def mrope(head_dim: int, **extra: Any) -> dict[str, Any]:
    """Qwen-VL's multimodal rotary positions: of a head's ``head_dim // 2`` rotary frequencies, half turn
    with time, a quarter each with rows and with columns."""
    return {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
    } | extra


def qwen_token_ids(tok: Any) -> dict[str, Any]:
    """The ids of Qwen-VL's image and video placeholders and of the vision span's start and end."""
    return {
        "image_token_id": ids(tok, "<|image_pad|>"),
        "video_token_id": ids(tok, "<|video_pad|>"),
        "vision_start_token_id": ids(tok, "<|vision_start|>"),
        "vision_end_token_id": ids(tok, "<|vision_end|>"),
    }


def qwen_images(patch: int = 4, merge: int = 2, max_pixels: int = 32 * 32) -> dict[str, Any]:
    """Qwen-VL's image processor settings: sides multiples of ``patch * merge``, at most ``max_pixels``."""
    factor = patch * merge
    return {
        "patch_size": patch,
        "merge_size": merge,
        "temporal_patch_size": 2,
        "size": {"shortest_edge": factor * factor, "longest_edge": max_pixels},
    }


def qwen2_vl_recipe(
    *,
    version: str = "2",
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    patch: int = 4,
    merge: int = 2,
    max_pixels: int = 32 * 32,
    seed: int = 0,
) -> Recipe:
    """A Qwen2-VL (``version`` "2") or Qwen2.5-VL ("2.5") model and its processor. Images are resized to
    multiples of ``patch * merge`` between 4 and ``max_pixels`` pixels: up to 16 image tokens."""
    if version not in ("2", "2.5"):
        raise ValueError(f"version must be '2' or '2.5', not {version!r}")
    prefix = "Qwen2VL" if version == "2" else "Qwen2_5_VL"
    vision = qwen_vision(hidden, layers, heads, patch, merge)
    if version == "2":
        vision |= {"embed_dim": hidden, "mlp_ratio": 2}
    else:
        vision |= {"intermediate_size": 2 * hidden, "out_hidden_size": hidden}
        vision |= {"window_size": 2 * patch * merge, "fullatt_block_indexes": [layers - 1]}

    def config(tok: Any) -> dict[str, Any]:
        text = decoder(tok, hidden, layers, heads, max_position_embeddings=512)
        return {
            "vision_config": vision,
            "text_config": text | {"rope_parameters": mrope(hidden // heads)},
            **qwen_token_ids(tok),
            "tie_word_embeddings": False,
        }

    return Recipe(
        GENERATIVE,
        f"{prefix}ForConditionalGeneration",
        config,
        byte(QWEN2_VL_SPECIAL, eos="<|im_end|>"),
        qwen_images(patch, merge, max_pixels),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        processor_class=lambda: _qwen_processor(prefix),
        projector="model.visual.merger",
        seed=seed,
    )


def build_qwen2_vl(directory: str | Path, **sizes: Any) -> Path:
    """Save a Qwen2-VL or Qwen2.5-VL model and its processor; ``sizes`` as ``qwen2_vl_recipe`` takes them
    (keywords, ``version`` included)."""
    return build(qwen2_vl_recipe(**sizes), directory)


def _qwen_processor(prefix: str) -> type:
    """``{prefix}Processor``; without torchvision, the one without its video half (``image_only_processor``)."""
    import transformers

    found: type = (
        getattr(transformers, f"{prefix}Processor") if has_torchvision() else image_only_processor(prefix)
    )
    return found


@cache
def image_only_processor(prefix: str) -> Any:
    """``{prefix}Processor`` (Qwen2VL, Qwen2_5_VL) without its video processor, registered with
    AutoProcessor for ``{prefix}Config``.

    transformers cannot build or load these processors without torchvision, only because of their video
    half; images and text still go through the real processor code. Tests call this before loading.
    """
    import transformers
    from transformers import AutoProcessor

    base = getattr(transformers, f"{prefix}Processor")

    def __init__(
        self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw: Any
    ):
        base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kw)

    cls = type(f"ImageOnly{prefix}Processor", (base,), {"__init__": __init__})
    AutoProcessor.register(getattr(transformers, f"{prefix}Config"), cls, exist_ok=True)
    return cls


def register_image_only_processors() -> None:
    """Without torchvision: let AutoProcessor load the Qwen2-VL and Qwen2.5-VL processors built here."""
    if not has_torchvision():
        for prefix in ("Qwen2VL", "Qwen2_5_VL"):
            image_only_processor(prefix)


# -- Idefics3, Idefics2 ---------------------------------------------------------------------------------
def idefics3_recipe(
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    tile: int = 16,
    patch: int = 4,
    scale_factor: int = 2,
    longest_edge: int = 32,
    seed: int = 0,
) -> Recipe:
    """An Idefics3ForConditionalGeneration (SigLIP-like vision + Llama) and an Idefics3Processor.

    Images are resized to at most ``longest_edge`` pixels and split into ``tile``-pixel tiles plus a
    global view, so images of different shapes take different numbers of tiles and image tokens.
    """

    def config(tok: Any) -> dict[str, Any]:
        text = decoder(tok, hidden, layers, heads, max_position_embeddings=1024, tie_word_embeddings=False)
        return {
            "vision_config": block(hidden, layers, heads) | {"image_size": tile, "patch_size": patch},
            "text_config": text | {"model_type": "llama"},
            "image_token_id": ids(tok, "<image>"),
            "scale_factor": scale_factor,
            "tie_word_embeddings": False,
        }

    return Recipe(
        GENERATIVE,
        "Idefics3ForConditionalGeneration",
        config,
        byte(IDEFICS3_SPECIAL, eos="<end_of_utterance>"),
        {
            "size": {"longest_edge": longest_edge},
            "max_image_size": {"longest_edge": tile},
            "do_image_splitting": True,
        },
        lambda tok: {"image_seq_len": (tile // patch) ** 2 // scale_factor**2},
        IDEFICS3_CHAT_TEMPLATE,
        projector="model.connector",
        language_key="text_model",
        seed=seed,
    )


def build_idefics3(directory: str | Path, **sizes: Any) -> Path:
    """Save an Idefics3ForConditionalGeneration and an Idefics3Processor; ``sizes`` as ``idefics3_recipe``
    takes them (keywords)."""
    return build(idefics3_recipe(**sizes), directory)


def idefics2_recipe(
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 16,
    patch: int = 4,
    latents: int = 4,
    seed: int = 0,
) -> Recipe:
    """An Idefics2ForConditionalGeneration (SigLIP-like vision, perceiver resampler to ``latents``
    tokens, Mistral) and an Idefics2Processor."""

    def config(tok: Any) -> dict[str, Any]:
        text = decoder(tok, hidden, layers, heads, max_position_embeddings=512, tie_word_embeddings=False)
        perceiver = {"hidden_size": hidden, "resampler_n_latents": latents, "resampler_depth": 1}
        perceiver |= {"resampler_n_heads": heads, "resampler_head_dim": hidden // heads}
        return {
            "vision_config": block(hidden, layers, heads) | {"image_size": image_size, "patch_size": patch},
            "perceiver_config": perceiver | {"num_key_value_heads": max(1, heads // 2)},
            "text_config": text | {"model_type": "mistral"},
            "image_token_id": ids(tok, "<image>"),
            "tie_word_embeddings": False,
        }

    return Recipe(
        GENERATIVE,
        "Idefics2ForConditionalGeneration",
        config,
        byte(["<fake_token_around_image>", "<image>", "<end_of_utterance>"], eos="<end_of_utterance>"),
        {"size": {"shortest_edge": image_size, "longest_edge": image_size}, "do_image_splitting": False},
        lambda tok: {"image_seq_len": latents},
        IDEFICS2_CHAT_TEMPLATE,
        projector="model.connector",
        language_key="text_model",
        seed=seed,
    )


def build_idefics2(directory: str | Path, **sizes: Any) -> Path:
    """Save an Idefics2ForConditionalGeneration and an Idefics2Processor; ``sizes`` as ``idefics2_recipe``
    takes them (keywords)."""
    return build(idefics2_recipe(**sizes), directory)


# -- Gemma 3 --------------------------------------------------------------------------------------------
GEMMA3_SPECIAL = ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]
GEMMA3_SPECIAL += ["<image_soft_token>"]


def gemma3_recipe(
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 16,
    patch: int = 4,
    tokens_per_image: int = 4,
    seed: int = 0,
) -> Recipe:
    """A Gemma3ForConditionalGeneration (SigLIP vision pooled to ``tokens_per_image`` soft tokens,
    bidirectional attention over them through ``token_type_ids``) and a Gemma3Processor."""

    def config(tok: Any) -> dict[str, Any]:
        text = decoder(tok, hidden, layers, heads, head_dim=hidden // heads, max_position_embeddings=512)
        return {
            "vision_config": block(hidden, layers, heads) | {"image_size": image_size, "patch_size": patch},
            "text_config": text | {"sliding_window": 64},
            "mm_tokens_per_image": tokens_per_image,
            "boi_token_index": ids(tok, "<start_of_image>"),
            "eoi_token_index": ids(tok, "<end_of_image>"),
            "image_token_index": ids(tok, "<image_soft_token>"),
            "tie_word_embeddings": False,
        }

    return Recipe(
        GENERATIVE,
        "Gemma3ForConditionalGeneration",
        config,
        byte(
            GEMMA3_SPECIAL,
            eos="<end_of_turn>",
            bos="<bos>",
            boi_token="<start_of_image>",
            eoi_token="<end_of_image>",
            image_token="<image_soft_token>",
        ),
        {"size": {"height": image_size, "width": image_size}},
        lambda tok: {"image_seq_length": tokens_per_image},
        GEMMA3_CHAT_TEMPLATE,
        fix=init_zero_projectors,  # zeros: the image would not reach the text
        projector="model.multi_modal_projector",
        seed=seed,
    )


def build_gemma3(directory: str | Path, **sizes: Any) -> Path:
    """Save a Gemma3ForConditionalGeneration and a Gemma3Processor; ``sizes`` as ``gemma3_recipe`` takes
    them (keywords)."""
    return build(gemma3_recipe(**sizes), directory)
