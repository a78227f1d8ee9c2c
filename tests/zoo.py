"""A zoo of tiny real checkpoints: one per multimodal family mmcli should run, built offline.

Each family is one row of ``RECIPES``: the transformers model class (its config class and model type follow
from it), the config keyword arguments that make it tiny, a tokenizer recipe, the image processor's
settings (its class is the one transformers maps the model type to), the processor's own settings, the
real checkpoint's chat template where it has one, and its video processor's settings where it has one.
``build(family, directory)`` builds the tokenizer, the processor (some add tokens to the tokenizer), then
the model at the tokenizer's final size, and saves both with ``save_pretrained`` as the hub lays them out.
Families that already had a builder (``mmcli.testing.contrastive``, ``.generative``, ``.vlm``) reuse it.

Models are random: hidden sizes 32, two layers, 16-64 px images, untied heads. Generative ones are scaled
as ``testing_gen.speak`` does so that greedy decoding writes varied, non-empty text. Video processors need
torchvision to be built, so their settings are written into ``processor_config.json`` as a saved
checkpoint holds them, without building one here.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mmcli.testing import contrastive as testing
from mmcli.testing import generative as testing_gen
from mmcli.testing import vlm as testing_vlm

CONTRASTIVE = ("classify", "embed")
GENERATIVE = ("caption", "vqa", "classify")
HIDDEN = 32


# -- tokenizers -----------------------------------------------------------------------------------------
def bert_tokenizer(special: tuple[str, ...] = (), bos: str | None = None) -> Any:
    """A WordPiece (BERT) tokenizer with one token per character and its ``##`` continuation."""
    from transformers import BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *special]
    chars = string.ascii_lowercase + string.digits + ".,'!?-:;()/&"
    tokens += list(chars) + ["##" + c for c in chars]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = BertTokenizer(vocab=vocab, do_lower_case=True, bos_token=bos)
    return tok


def byte(special: list[str], eos: str, bos: str | None = None, **named: str) -> Callable[[], Any]:
    """testing_vlm's byte-level BPE with ``special`` tokens; ``named`` become tokenizer attributes."""
    return partial(testing_vlm.byte_tokenizer, special, eos, named or None, bos)


def ids(tok: Any, token: str) -> int:
    found: int = tok.convert_tokens_to_ids(token)
    if found is None or (found == tok.unk_token_id and token != tok.unk_token):
        raise KeyError(f"{token!r} is not in the tokenizer")
    return found


# -- config pieces ----------------------------------------------------------------------------------------
def vit(**extra: Any) -> dict[str, Any]:
    """A CLIP/SigLIP-like vision tower: 32 px images in 8 px patches (16 patches)."""
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    } | extra


def llm(tok: Any, **extra: Any) -> dict[str, Any]:
    """A decoder-only language model at the tokenizer's size, untied (tied random heads echo)."""
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": HIDDEN // 4,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": False,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    } | extra


def bert(tok: Any, **extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "pad_token_id": tok.pad_token_id,
    } | extra


# -- chat templates of the real checkpoints (trimmed of system prompts, tools and generation markers) ------
ONEVISION_TEMPLATE = (  # llava-hf/llava-onevision-qwen2-0.5b-ov-hf
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MLLAMA_TEMPLATE = (  # meta-llama/Llama-3.2-11B-Vision-Instruct
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|image|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] | trim }}{% endif %}{% endfor %}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
QWEN3_VL_TEMPLATE = (  # Qwen/Qwen3-VL-2B-Instruct
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INTERNVL_TEMPLATE = (  # OpenGVLab/InternVL3-1B-hf
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEEPSEEK_VL_TEMPLATE = (  # deepseek-community/deepseek-vl-1.3b-chat
    "{% for message in messages %}{% if message['role'] == 'user' %}User: {% else %}Assistant: {% endif %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image_placeholder>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
AYA_VISION_TEMPLATE = (  # CohereLabs/aya-vision-8b
    "{{ bos_token }}{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{% if message['role'] == 'user' %}<|USER_TOKEN|>{% else %}<|CHATBOT_TOKEN|>{% endif %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}<|END_OF_TURN_TOKEN|>"
    "{% endfor %}{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


# -- the recipe -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """How to build one family's tiny checkpoint (see the module docstring)."""

    tasks: tuple[str, ...]
    model: str = ""  # the transformers model class; its config class and model type follow
    config: Callable[[Any], dict[str, Any]] = lambda tok: {}  # the tokenizer -> config keyword arguments
    tokenizer: Callable[[], Any] = lambda: None
    image: dict[str, Any] = field(default_factory=dict)  # image processor settings
    processor: Callable[[Any], dict[str, Any]] = lambda tok: {}  # processor settings
    chat_template: str | None = None
    video: dict[str, Any] | None = None  # the video processor's settings (class name included)
    processor_class: str | None = None  # when transformers' processor mapping has none
    builder: Callable[[Path], Path] | None = None  # an existing builder does it all
    fix: Callable[[Any], None] | None = None  # weights that need more than random init
    model_type: str | None = None  # config.json's model_type, for a builder's checkpoint


def _siglip2(tok: Any) -> dict[str, Any]:
    return {
        "text_config": bert(tok, max_position_embeddings=64, projection_size=HIDDEN)
        | {"bos_token_id": None, "eos_token_id": tok.eos_token_id},
        "vision_config": vit(patch_size=16, num_patches=256) | {"image_size": None},
    }


def _align(tok: Any) -> dict[str, Any]:
    return {
        "text_config": bert(tok),
        "vision_config": {
            "image_size": 32,
            "width_coefficient": 0.25,
            "depth_coefficient": 0.2,
            "hidden_dim": 320,
            "num_hidden_layers": 7,
        },
        "projection_dim": 80,  # the last block's channels (320 x width 0.25): the image embedding's size
    }


def _blip(tok: Any) -> dict[str, Any]:
    return {
        "text_config": bert(tok, bos_token_id=ids(tok, "[DEC]"), sep_token_id=tok.sep_token_id),
        "vision_config": vit(),
        "projection_dim": HIDDEN,
        "image_text_hidden_size": HIDDEN,
    }


def _instructblip(tok: Any) -> dict[str, Any]:
    parts = testing_gen._blip2_parts(HIDDEN, 32, 4)
    parts["qformer_config"] |= {"vocab_size": len(bert_tokenizer()), "max_position_embeddings": 64}
    return parts | {
        "text_config": testing_gen._language("opt", tok, HIDDEN),
        "image_token_index": ids(tok, testing_gen.IMAGE_TOKEN),
    }


def _llava_onevision(tok: Any) -> dict[str, Any]:
    grid = [[32, 64], [64, 32], [64, 64]]
    return {
        "vision_config": vit() | {"model_type": "siglip_vision_model"},
        "text_config": llm(tok) | {"model_type": "qwen2"},
        "image_token_index": ids(tok, "<image>"),
        "video_token_index": ids(tok, "<video>"),
        "image_grid_pinpoints": grid,
        "tie_word_embeddings": False,
    }


def _idefics(tok: Any) -> dict[str, Any]:
    kw = llm(tok)
    kw.pop("head_dim"), kw.pop("num_key_value_heads")
    return kw | {
        "additional_vocab_size": 0,
        "vision_config": {
            "embed_dim": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        "perceiver_config": {"use_resampler": False},
        "cross_layer_interval": 1,
    }


def _smolvlm(tok: Any) -> dict[str, Any]:
    return {
        "vision_config": vit(image_size=16, patch_size=4),
        "text_config": llm(tok) | {"model_type": "llama"},
        "image_token_id": ids(tok, "<image>"),
        "scale_factor": 2,
        "tie_word_embeddings": False,
    }


def _mllama(tok: Any) -> dict[str, Any]:
    return {
        "vision_config": {
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "max_num_tiles": 2,
            "intermediate_layers_indices": [0, 1],
            "vision_output_dim": 3 * HIDDEN,
            "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
        },
        "text_config": llm(tok, cross_attention_layers=[1], rope_parameters=None),
        "image_token_index": ids(tok, "<|image|>"),
    }


def _qwen3_vl(tok: Any) -> dict[str, Any]:
    head_dim = HIDDEN // 4
    return {
        "vision_config": {
            "depth": 2,
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_heads": 4,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": HIDDEN,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        },
        "text_config": llm(tok)
        | {
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
                "mrope_interleaved": True,
            },
        },
        "image_token_id": ids(tok, "<|image_pad|>"),
        "video_token_id": ids(tok, "<|video_pad|>"),
        "vision_start_token_id": ids(tok, "<|vision_start|>"),
        "vision_end_token_id": ids(tok, "<|vision_end|>"),
        "tie_word_embeddings": False,
    }


def _internvl(tok: Any) -> dict[str, Any]:
    return {
        "vision_config": vit(image_size=[32, 32], patch_size=[8, 8]),
        "text_config": llm(tok) | {"model_type": "qwen2"},
        "image_token_id": ids(tok, "<IMG_CONTEXT>"),
        "image_seq_length": 4,
        "downsample_ratio": 0.5,
        "tie_word_embeddings": False,
    }


def _deepseek_vl(tok: Any, hybrid: bool = False) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "vision_config": vit() | {"model_type": "siglip_vision_model"},
        "text_config": llm(tok) | {"model_type": "llama"},
        "image_token_id": ids(tok, "<image_placeholder>"),
        "tie_word_embeddings": False,
    }
    if hybrid:
        kw["high_res_vision_config"] = {
            "model_type": "sam_vision_model",
            "hidden_size": HIDDEN,
            "output_channels": HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
            "mlp_dim": 2 * HIDDEN,
            "global_attn_indexes": [1],
            "window_size": 4,
        }
    return kw


def _paligemma(tok: Any) -> dict[str, Any]:
    return {
        "vision_config": vit(projection_dim=HIDDEN) | {"model_type": "siglip_vision_model"},
        "text_config": llm(tok, num_image_tokens=16) | {"model_type": "gemma"},
        "image_token_index": ids(tok, "<image>"),
        "projection_dim": HIDDEN,
        "hidden_size": HIDDEN,
        "vocab_size": len(tok),
        "tie_word_embeddings": False,
    }


def _florence2(tok: Any) -> dict[str, Any]:
    return {
        "vision_config": {
            "depths": [1, 1],
            "patch_size": [7, 3],
            "patch_stride": [4, 2],
            "patch_padding": [3, 1],
            "patch_prenorm": [False, True],
            "embed_dim": [16, HIDDEN],
            "num_heads": [2, 4],
            "num_groups": [2, 4],
            "window_size": 2,
            "projection_dim": HIDDEN,
            "max_position_embeddings": 8,
        },
        "text_config": {
            "vocab_size": len(tok),
            "d_model": HIDDEN,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 2 * HIDDEN,
            "decoder_ffn_dim": 2 * HIDDEN,
            "max_position_embeddings": 128,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "decoder_start_token_id": tok.eos_token_id,
            "forced_bos_token_id": tok.bos_token_id,
            "tie_word_embeddings": False,
        },
        "image_token_id": ids(tok, "<image>"),
        "tie_word_embeddings": False,
    }


def _kosmos2(tok: Any) -> dict[str, Any]:
    return {
        "vision_config": vit(),
        "text_config": {
            "vocab_size": len(tok),
            "embed_dim": HIDDEN,
            "layers": 2,
            "ffn_dim": 2 * HIDDEN,
            "attention_heads": 4,
            "max_position_embeddings": 256,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "tie_word_embeddings": False,
        },
        "latent_query_num": 64,
        "tie_word_embeddings": False,
    }


def _aya_vision(tok: Any) -> dict[str, Any]:
    return {
        "vision_config": vit(image_size=32, patch_size=8) | {"model_type": "siglip_vision_model"},
        "text_config": llm(tok, sliding_window=64, layer_types=["sliding_attention", "full_attention"])
        | {"model_type": "cohere2"},
        "image_token_index": ids(tok, "<|IMG_PATCH|>"),
        "downsample_factor": 2,
        "tie_word_embeddings": False,
    }


def _zero_init_projector(model: Any) -> None:
    """Give zero-initialised projector weights a random start, or the image never reaches the text."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "projector" in name and param.dim() == 2 and not param.any():
                param.normal_(0.0, 0.02)


def _kaiming_convs(model: Any) -> None:
    """Convolutions initialised at std 0.02 shrink the image to ~1e-29 through EfficientNet's blocks (the
    embedding then normalises to inf): He-initialise them, as a trained network's scale would be."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


MLLAMA_SPECIAL = [
    "<|begin_of_text|>",
    "<|image|>",
    "<|python_tag|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
AYA_VISION_SPECIAL = [
    "<BOS_TOKEN>",
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<image>",
    "<|START_OF_IMG|>",
    "<|END_OF_IMG|>",
    "<|IMG_PATCH|>",
    "<|IMG_LINE_BREAK|>",
]
QWEN_VIDEO = {"video_processor_type": "Qwen2VLVideoProcessor"}
LLAVA_IMAGE = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
QWEN_SPECIAL = testing_vlm.QWEN2_VL_SPECIAL

RECIPES: dict[str, Recipe] = {
    # -- contrastive: classify + embed --------------------------------------------------------------------
    "clip": Recipe(CONTRASTIVE, builder=testing.build_clip, model_type="clip"),
    "siglip": Recipe(CONTRASTIVE, builder=testing.build_siglip, model_type="siglip"),
    "siglip2": Recipe(
        CONTRASTIVE,
        "Siglip2Model",
        _siglip2,
        byte(["<eos>"], eos="<eos>"),
        {"patch_size": 16, "max_num_patches": 256},  # the processor passes these whatever is saved
    ),
    "chinese_clip": Recipe(
        CONTRASTIVE,
        "ChineseCLIPModel",
        lambda tok: {"text_config": bert(tok), "vision_config": vit(), "projection_dim": HIDDEN},
        bert_tokenizer,
        LLAVA_IMAGE,
    ),
    "align": Recipe(
        CONTRASTIVE,
        "AlignModel",
        _align,
        bert_tokenizer,
        {"size": {"height": 32, "width": 32}},
        fix=_kaiming_convs,
    ),
    "blip_itc": Recipe(
        CONTRASTIVE,
        "BlipModel",
        _blip,
        partial(bert_tokenizer, ("[DEC]",), "[DEC]"),
        {"size": {"height": 32, "width": 32}},
    ),
    # -- generative: caption + vqa + classify -------------------------------------------------------------
    "blip": Recipe(
        GENERATIVE,
        "BlipForConditionalGeneration",
        _blip,
        partial(bert_tokenizer, ("[DEC]",), "[DEC]"),
        {"size": {"height": 32, "width": 32}},
    ),
    "blip2_opt": Recipe(GENERATIVE, builder=testing_gen.build_blip2, model_type="blip-2"),
    "blip2_t5": Recipe(
        GENERATIVE, builder=partial(testing_gen.build_blip2, language="t5"), model_type="blip-2"
    ),
    "instructblip": Recipe(
        GENERATIVE,
        "InstructBlipForConditionalGeneration",
        _instructblip,
        testing_gen.opt_tokenizer,
        {"size": {"height": 32, "width": 32}},
        lambda tok: {"qformer_tokenizer": bert_tokenizer(), "num_query_tokens": 4},
    ),
    "llava": Recipe(GENERATIVE, builder=testing_gen.build_llava, model_type="llava"),
    "llava_next": Recipe(GENERATIVE, builder=testing_gen.build_llava_next, model_type="llava_next"),
    "llava_onevision": Recipe(
        GENERATIVE,
        "LlavaOnevisionForConditionalGeneration",
        _llava_onevision,
        byte(["<|im_start|>", "<|im_end|>", "<image>", "<video>"], eos="<|im_end|>"),
        {
            "size": {"height": 32, "width": 32},
            "image_grid_pinpoints": [[32, 64], [64, 32], [64, 64]],
        },
        lambda tok: {"num_image_tokens": 16, "vision_feature_select_strategy": "full"},
        ONEVISION_TEMPLATE,
        {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 32, "width": 32}},
    ),
    "idefics": Recipe(
        GENERATIVE,
        "IdeficsForVisionText2Text",
        _idefics,
        byte(["<s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"], eos="</s>", bos="<s>"),
        {"image_size": 32},
        lambda tok: {"image_size": 32},
    ),
    "idefics2": Recipe(GENERATIVE, builder=testing_vlm.build_idefics2, model_type="idefics2"),
    "idefics3": Recipe(GENERATIVE, builder=testing_vlm.build_idefics3, model_type="idefics3"),
    "smolvlm": Recipe(
        GENERATIVE,
        "SmolVLMForConditionalGeneration",
        _smolvlm,
        byte([*testing_vlm.IDEFICS3_SPECIAL, "<video>"], eos="<end_of_utterance>"),
        {"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 16}, "do_image_splitting": True},
        lambda tok: {"image_seq_len": 4},
        testing_vlm.IDEFICS3_CHAT_TEMPLATE,
        {
            "video_processor_type": "SmolVLMVideoProcessor",
            "size": {"longest_edge": 32},
            "fps": 1,
            "num_frames": 8,
        },
    ),
    "mllama": Recipe(
        GENERATIVE,
        "MllamaForConditionalGeneration",
        _mllama,
        byte(MLLAMA_SPECIAL, eos="<|eot_id|>", bos="<|begin_of_text|>"),
        {"size": {"height": 32, "width": 32}, "max_image_tiles": 2},
        chat_template=MLLAMA_TEMPLATE,
    ),
    "qwen2_vl": Recipe(
        GENERATIVE, builder=testing_vlm.build_qwen2_vl, video=QWEN_VIDEO, model_type="qwen2_vl"
    ),
    "qwen2_5_vl": Recipe(
        GENERATIVE,
        builder=partial(testing_vlm.build_qwen2_vl, version="2.5"),
        video=QWEN_VIDEO,
        model_type="qwen2_5_vl",
    ),
    "qwen3_vl": Recipe(
        GENERATIVE,
        "Qwen3VLForConditionalGeneration",
        _qwen3_vl,
        byte(QWEN_SPECIAL, eos="<|im_end|>"),
        {
            "patch_size": 4,
            "merge_size": 2,
            "temporal_patch_size": 2,
            "size": {"shortest_edge": 64, "longest_edge": 32 * 32},
        },
        chat_template=QWEN3_VL_TEMPLATE,
        video={"video_processor_type": "Qwen3VLVideoProcessor"},
    ),
    "internvl": Recipe(
        GENERATIVE,
        "InternVLForConditionalGeneration",
        _internvl,
        byte(
            ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
            eos="<|im_end|>",
            start_image_token="<img>",
            end_image_token="</img>",
            context_image_token="<IMG_CONTEXT>",
            video_token="<video>",
        ),
        {"size": {"height": 32, "width": 32}, "max_patches": 2},  # tiles, and a thumbnail
        lambda tok: {"image_seq_length": 4},
        INTERNVL_TEMPLATE,
        {"video_processor_type": "InternVLVideoProcessor", "size": {"height": 32, "width": 32}},
    ),
    "deepseek_vl": Recipe(
        GENERATIVE,
        "DeepseekVLForConditionalGeneration",
        _deepseek_vl,
        byte(
            ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>"],
            eos="<｜end▁of▁sentence｜>",
            bos="<｜begin▁of▁sentence｜>",
            image_token="<image_placeholder>",
        ),
        {"size": {"height": 32, "width": 32}},
        lambda tok: {"num_image_tokens": 16},
        DEEPSEEK_VL_TEMPLATE,
    ),
    "deepseek_vl_hybrid": Recipe(
        GENERATIVE,
        "DeepseekVLHybridForConditionalGeneration",
        partial(_deepseek_vl, hybrid=True),
        byte(
            ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>"],
            eos="<｜end▁of▁sentence｜>",
            bos="<｜begin▁of▁sentence｜>",
            image_token="<image_placeholder>",
        ),
        {"size": {"height": 32, "width": 32}, "high_res_size": {"height": 64, "width": 64}},
        lambda tok: {"num_image_tokens": 16},
        DEEPSEEK_VL_TEMPLATE,
    ),
    "paligemma": Recipe(
        GENERATIVE,
        "PaliGemmaForConditionalGeneration",
        _paligemma,
        byte(["<bos>", "<eos>", "<image>"], eos="<eos>", bos="<bos>", image_token="<image>"),
        {"size": {"height": 32, "width": 32}, "image_seq_length": 16},
    ),
    "florence2": Recipe(
        GENERATIVE,
        "Florence2ForConditionalGeneration",
        _florence2,
        byte(["<s>", "</s>", "<image>"], eos="</s>", bos="<s>", image_token="<image>"),
        {
            "size": {"height": 32, "width": 32},
            "crop_size": {"height": 32, "width": 32},
            "do_center_crop": False,
            "image_seq_length": 17,  # (32 / 8)^2 patches after two stages, and their mean
        },
    ),
    "kosmos2": Recipe(
        GENERATIVE,
        "Kosmos2ForConditionalGeneration",
        _kosmos2,
        byte(["<s>", "</s>", "<unk>"], eos="</s>", bos="<s>"),
        LLAVA_IMAGE,
        processor_class="Kosmos2Processor",
    ),
    "gemma3": Recipe(GENERATIVE, builder=testing_vlm.build_gemma3, model_type="gemma3"),
    "aya_vision": Recipe(
        GENERATIVE,
        "AyaVisionForConditionalGeneration",
        _aya_vision,
        byte(AYA_VISION_SPECIAL, eos="<|END_OF_TURN_TOKEN|>", bos="<BOS_TOKEN>"),
        {"size": {"height": 32, "width": 32}, "max_patches": 2},
        lambda tok: {"patch_size": 8, "img_size": 32, "downsample_factor": 2},
        AYA_VISION_TEMPLATE,
        fix=_zero_init_projector,
    ),
}
FAMILIES: dict[str, tuple[str, ...]] = {name: recipe.tasks for name, recipe in RECIPES.items()}


def model_type(family: str) -> str:
    """The model_type of ``family``'s config.json."""
    import transformers

    recipe = RECIPES[family]
    if recipe.model_type is not None:
        return recipe.model_type
    found: str = getattr(transformers, recipe.model).config_class.model_type
    return found


def family_of(model_type_: str, task: str = "caption") -> str | None:
    """The first family of the zoo whose checkpoints have ``model_type_`` and can do ``task``."""
    for family, tasks in FAMILIES.items():
        if task in tasks and model_type(family) == model_type_:
            return family
    return None


# -- building ---------------------------------------------------------------------------------------------
def build(family: str, directory: str | Path) -> Path:
    """Build ``family``'s tiny checkpoint into ``directory`` (created) and return it."""
    from mmcli.modeling.backends.base import quiet_transformers

    quiet_transformers()
    recipe = RECIPES[family]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if recipe.builder is not None:
        recipe.builder(out)
    else:
        _build(recipe, out)
    if recipe.video is not None:
        _add_video_processor(out, recipe.video)
    return out


def _build(recipe: Recipe, out: Path) -> None:
    import torch
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    torch.manual_seed(0)
    model_class = getattr(transformers, recipe.model)
    model_type = model_class.config_class.model_type
    classes = IMAGE_PROCESSOR_MAPPING_NAMES[model_type]
    images = getattr(transformers, classes.get("pil") or classes["torchvision"])(**recipe.image)
    tok = recipe.tokenizer()
    processor_class = getattr(transformers, recipe.processor_class or PROCESSOR_MAPPING_NAMES[model_type])
    kwargs = recipe.processor(tok)
    if recipe.chat_template is not None:
        kwargs["chat_template"] = recipe.chat_template
    if recipe.video is not None:  # video processors need torchvision: build without, write its settings after
        processor_class = _without_video(processor_class)
    with _num2words_stand_in():
        processor = processor_class(image_processor=images, tokenizer=tok, **kwargs)  # may add tokens
    config = model_class.config_class(**recipe.config(tok))
    model = model_class(config).eval()
    if recipe.fix is not None:
        recipe.fix(model)
    if "caption" in recipe.tasks:
        _speak(model, tok)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _without_video(cls: type) -> type:
    """``cls`` built with no video processor: ProcessorMixin takes its sub-processors from ``__init__``'s
    signature, so a subclass whose ``__init__`` has no ``video_processor`` skips it."""

    import inspect

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any) -> None:
        cls.__init__(
            self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs
        )

    signature = inspect.signature(cls.__init__)  # what to_dict saves: the real class's settings
    params = [p for p in signature.parameters.values() if p.name != "video_processor"]
    __init__.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return type(cls.__name__, (cls,), {"__init__": __init__})


def _speak(model: Any, tok: Any) -> None:
    """testing_gen.speak's scaling, with the parts found from the module tree (mmcli.modeling.anatomy): the LLM's
    matrices, the input projector and the LM head scaled up, head rows of all but letters zeroed."""
    import torch

    from mmcli.modeling import anatomy

    parts = anatomy.module_parts(model, generative=True)
    speaking = set(testing_gen.LETTERS)
    silent = [i for t, i in tok.get_vocab().items() if not set(t) <= speaking and i < len(tok)]
    with torch.no_grad():
        for name, param in model.named_parameters():
            owner = anatomy.part_of(name, parts)
            if owner == "llm" and param.dim() == 2 and "embed" not in name:
                param.mul_(testing_gen.LM_SCALE)
            elif owner == "input_projector":
                param.mul_(testing_gen.PROJECTOR_SCALE)
        for path in parts["output_projector"][:1]:
            head = model.get_submodule(path)
            head.weight.mul_(testing_gen.HEAD_SCALE)
            head.weight[[i for i in silent if i < head.weight.shape[0]]] = 0.0


@contextmanager
def _num2words_stand_in() -> Iterator[None]:
    """SmolVLM's processor refuses to build without ``num2words`` (it words video frame counts only)."""
    import importlib

    try:
        module = importlib.import_module("transformers.models.smolvlm.processing_smolvlm")
    except ImportError:
        yield
        return
    saved = module.num2words
    module.num2words = module.num2words or str
    try:
        yield
    finally:
        module.num2words = saved


def _add_video_processor(out: Path, video: dict[str, Any]) -> None:
    """Write the video processor's settings into ``processor_config.json``, as ``save_pretrained`` does with
    torchvision installed: the image processor's, minus its class, plus the video processor's own."""
    import transformers

    path = out / "processor_config.json"
    data = json.loads(path.read_text())
    settings = {k: v for k, v in data["image_processor"].items() if k != "image_processor_type"}
    data["video_processor"] = settings | video
    model_type = json.loads((out / "config.json").read_text())["model_type"]
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if name and hasattr(transformers, name):  # the real class, not the one built without its video half
        data["processor_class"] = name
        tokenizer_config = out / "tokenizer_config.json"
        settings = json.loads(tokenizer_config.read_text())
        settings["processor_class"] = name
        tokenizer_config.write_text(json.dumps(settings, indent=2) + "\n")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_processor(directory: str | Path) -> Any:
    """The checkpoint's processor; without torchvision, processors with a video half are built from their
    saved settings without it (for references such as ``pipeline(..., processor=...)``)."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    directory = Path(directory)
    data = json.loads((directory / "processor_config.json").read_text())
    if "video_processor" not in data or testing_vlm.has_torchvision():
        with _num2words_stand_in():
            return AutoProcessor.from_pretrained(directory)
    settings = {
        k: v for k, v in data.items() if k not in ("image_processor", "video_processor", "processor_class")
    }
    template = directory / "chat_template.jinja"
    if template.is_file():
        settings["chat_template"] = template.read_text()
    with _num2words_stand_in():
        processor = _without_video(getattr(transformers, data["processor_class"]))(
            image_processor=AutoImageProcessor.from_pretrained(directory),
            tokenizer=AutoTokenizer.from_pretrained(directory),
            **settings,
        )
    processor.video_processor = SimpleNamespace(**data["video_processor"])  # chat templates read its settings
    return processor


def build_all(directory: str | Path, families: list[str] | None = None) -> dict[str, float]:
    """Build every family (or ``families``) under ``directory``; returns the seconds each took."""
    times: dict[str, float] = {}
    for family in families or list(RECIPES):
        start = time.perf_counter()
        build(family, Path(directory) / family)
        times[family] = time.perf_counter() - start
    return times


_BUILT: dict[str, Path] = {}


def cached(family: str, root: str | Path) -> Path:
    """``family`` built once per process under ``root`` (a pytest session's temporary directory)."""
    if family not in _BUILT:
        _BUILT[family] = build(family, Path(root) / family)
    return _BUILT[family]


if __name__ == "__main__":  # python -m tests.zoo DIR [FAMILY ...]: build and time them
    import sys

    if len(sys.argv) < 2:
        sys.exit("usage: python -m tests.zoo DIR [FAMILY ...]")
    total = time.perf_counter()
    for name, seconds in build_all(sys.argv[1], sys.argv[2:] or None).items():
        size = sum(f.stat().st_size for f in (Path(sys.argv[1]) / name).rglob("*") if f.is_file())
        print(f"{name:20} {seconds:6.2f} s  {size / 1024:6.0f} KB  {', '.join(FAMILIES[name])}")
    print(f"{'all':20} {time.perf_counter() - total:6.2f} s")
