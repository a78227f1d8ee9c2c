"""Tiny generative checkpoints (BLIP-2 with OPT or Flan-T5, LLaVA, LLaVA-NeXT), built offline for tests.

Each ``*_recipe`` function makes the family's ``Recipe`` (``mmcli.testing.recipe``) at the sizes it is
given; each ``build_*`` entry point builds one into a directory, model and processor saved with
``save_pretrained``, so they load through the same ``from_pretrained`` code users hit. Tokenizers have one
token per character (``mmcli.testing.vocab``) and the language models are scaled (``recipe.speak``) so that
greedy decoding writes varied, non-empty text.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mmcli.testing.recipe import GENERATIVE, Recipe, block, build, decoder
from mmcli.testing.recipe import speak as speak  # tests build their own checkpoints with it
from mmcli.testing.vocab import IMAGE_TOKEN, ids, llama_tokenizer, opt_tokenizer, t5_tokenizer

# LLaVA-1.5's chat template (llava-hf), trimmed of the generation markers.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


# -- BLIP-2 -------------------------------------------------------------------------------------------
def _blip2_parts(
    hidden: int, image_size: int, query_tokens: int, layers: int = 2, heads: int = 4, patch: int = 8
) -> dict[str, Any]:
    """BLIP-2's (and InstructBLIP's) vision tower and Q-Former, with ``query_tokens`` queries."""
    return {
        "vision_config": block(hidden, layers, heads) | {"image_size": image_size, "patch_size": patch},
        "qformer_config": block(hidden, layers, heads) | {"encoder_hidden_size": hidden},
        "num_query_tokens": query_tokens,
    }


def _language(kind: str, tok: Any, hidden: int, layers: int = 2, heads: int = 4) -> dict[str, Any]:
    """BLIP-2's language model: OPT (``kind`` "opt") or a gated-GELU T5 (anything else), untied."""
    common = {"vocab_size": len(tok), "tie_word_embeddings": False, "pad_token_id": tok.pad_token_id}
    if kind == "opt":
        return common | {
            "model_type": "opt",
            "hidden_size": hidden,
            "word_embed_proj_dim": hidden,
            "ffn_dim": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "max_position_embeddings": 256,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        }
    return common | {
        "model_type": "t5",
        "d_model": hidden,
        "d_kv": hidden // heads,
        "d_ff": 2 * hidden,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": heads,
        "feed_forward_proj": "gated-gelu",
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.pad_token_id,  # captioning without text starts from it
        "decoder_start_token_id": tok.pad_token_id,
    }


def blip2_recipe(
    *,
    language: str = "opt",
    hidden: int = 32,
    image_size: int = 32,
    query_tokens: int = 4,
    layers: int = 2,
    heads: int = 4,
    patch: int = 8,
    seed: int = 0,
) -> Recipe:
    """A Blip2ForConditionalGeneration (``language``: "opt" or "t5") and its Blip2Processor."""
    if language not in ("opt", "t5"):
        raise ValueError(f"language must be 'opt' or 't5', not {language!r}")

    def config(tok: Any) -> dict[str, Any]:
        return _blip2_parts(hidden, image_size, query_tokens, layers, heads, patch) | {
            "text_config": _language(language, tok, hidden, layers, heads),
            "image_token_index": ids(tok, IMAGE_TOKEN),
        }

    return Recipe(
        GENERATIVE,
        "Blip2ForConditionalGeneration",
        config,
        opt_tokenizer if language == "opt" else t5_tokenizer,
        {"size": {"height": image_size, "width": image_size}},
        lambda tok: {"num_query_tokens": query_tokens},
        image_class="BlipImageProcessor",
        projector="language_projection",
        seed=seed,
    )


def build_blip2(directory: str | Path, **sizes: Any) -> Path:
    """Save a Blip2ForConditionalGeneration and its Blip2Processor; ``sizes`` as ``blip2_recipe`` takes
    them (keywords, ``language`` included)."""
    return build(blip2_recipe(**sizes), directory)


# -- LLaVA --------------------------------------------------------------------------------------------
def _llava(
    model: str,
    image_class: str,
    more: dict[str, Any],
    *,
    hidden: int,
    image_size: int,
    patch: int,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Recipe:
    """The LLaVA recipe (CLIP vision + Llama, LLaVA-1.5's chat template) with ``model`` as the model class,
    ``image_class`` as the image processor's, and ``more`` config settings."""

    def config(tok: Any) -> dict[str, Any]:
        vision = block(hidden, layers, heads) | {"image_size": image_size, "patch_size": patch}
        text = decoder(tok, hidden, layers, heads, max_position_embeddings=512, tie_word_embeddings=False)
        return {
            "vision_config": vision | {"model_type": "clip_vision_model"},
            "text_config": text | {"model_type": "llama"},
            "image_token_index": ids(tok, IMAGE_TOKEN),
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
        } | more

    return Recipe(
        GENERATIVE,
        model,
        config,
        llama_tokenizer,
        {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}},
        lambda tok: {
            "patch_size": patch,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
        },
        LLAVA_CHAT_TEMPLATE,
        image_class=image_class,
        projector="model.multi_modal_projector",
        seed=seed,
    )


def llava_recipe(
    *, hidden: int = 32, image_size: int = 32, patch: int = 8, layers: int = 2, heads: int = 4, seed: int = 0
) -> Recipe:
    """A LlavaForConditionalGeneration (CLIP vision + Llama) and a LlavaProcessor with a chat template."""
    return _llava(
        "LlavaForConditionalGeneration",
        "CLIPImageProcessor",
        {"image_seq_length": (image_size // patch) ** 2},
        hidden=hidden,
        image_size=image_size,
        patch=patch,
        layers=layers,
        heads=heads,
        seed=seed,
    )


def build_llava(directory: str | Path, **sizes: Any) -> Path:
    """Save a LlavaForConditionalGeneration and a LlavaProcessor with a chat template; ``sizes`` as
    ``llava_recipe`` takes them (keywords)."""
    return build(llava_recipe(**sizes), directory)


def llava_next_recipe(*, hidden: int = 32, image_size: int = 32, patch: int = 8, seed: int = 0) -> Recipe:
    """A LlavaNextForConditionalGeneration: images tile into a varying number of patches (anyres)."""
    grid = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    more = {"image_grid_pinpoints": grid}
    llava = _llava(
        "LlavaNextForConditionalGeneration",
        "LlavaNextImageProcessor",
        more,
        hidden=hidden,
        image_size=image_size,
        patch=patch,
        seed=seed,
    )
    return replace(llava, image=llava.image | more)  # the processor tiles images on the config's grid


def build_llava_next(directory: str | Path, **sizes: Any) -> Path:
    """Save a LlavaNextForConditionalGeneration and its processor; ``sizes`` as ``llava_next_recipe``
    takes them (keywords)."""
    return build(llava_next_recipe(**sizes), directory)
