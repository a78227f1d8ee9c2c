"""A zoo of tiny real checkpoints: one per multimodal family mmcli should run, built offline.

Each family is one row of ``RECIPES``: a ``Recipe`` (its module, ``mmcli.testing.recipe``, explains one) that
says the transformers model class, the config keyword arguments that make it tiny, the tokenizer, the
image processor's and processor's settings, the real checkpoint's chat template where it has one, and its
video processor's settings where it has one. ``build(family, directory)`` builds the row with
``mmcli.testing.recipe.build``. The families that have ``build_*`` entry points (``mmcli.testing.contrastive``,
``.generative``, ``.vlm``) take their rows from the same ``*_recipe`` functions, at their default sizes.

Models are random: hidden sizes 32, two layers, 16-64 px images, untied heads. Generative ones are scaled
(``recipe.speak``) so that greedy decoding writes varied, non-empty text. Video processors need torchvision
to be built, so their settings are written into ``processor_config.json`` as a saved checkpoint holds them,
without building one here.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mmcli.testing import contrastive, generative, recipe, vlm
from mmcli.testing.recipe import (
    CONTRASTIVE,
    GENERATIVE,
    HIDDEN,
    Recipe,
    bert,
    has_torchvision,
    init_zero_projectors,
    llm,
    num2words_stand_in,
    vit,
    without_video,
)
from mmcli.testing.vocab import bert_tokenizer, byte, ids, opt_tokenizer

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
    parts = generative._blip2_parts(HIDDEN, 32, 4)
    parts["qformer_config"] |= {"vocab_size": len(bert_tokenizer()), "max_position_embeddings": 64}
    return parts | {
        "text_config": generative._language("opt", tok, HIDDEN),
        "image_token_index": ids(tok, generative.IMAGE_TOKEN),
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
    vision = vlm.qwen_vision() | {"intermediate_size": 2 * HIDDEN, "out_hidden_size": HIDDEN}
    return {
        "vision_config": vision | {"num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        "text_config": llm(tok) | {"rope_parameters": vlm.mrope(HIDDEN // 4, mrope_interleaved=True)},
        **vlm.qwen_token_ids(tok),
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
QWEN_SPECIAL = vlm.QWEN2_VL_SPECIAL

BLIP_ITC = Recipe(  # BLIP's image-text matching model; its captioner differs in the model class alone
    CONTRASTIVE,
    "BlipModel",
    _blip,
    partial(bert_tokenizer, ("[DEC]",), "[DEC]"),
    {"size": {"height": 32, "width": 32}},
)
DEEPSEEK_VL_TOKENIZER = byte(
    ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>"],
    eos="<｜end▁of▁sentence｜>",
    bos="<｜begin▁of▁sentence｜>",
    image_token="<image_placeholder>",
)

RECIPES: dict[str, Recipe] = {
    # -- contrastive: classify + embed --------------------------------------------------------------------
    "clip": contrastive.clip_recipe(),
    "siglip": contrastive.siglip_recipe(),
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
    "blip_itc": BLIP_ITC,
    # -- generative: caption + vqa + classify -------------------------------------------------------------
    "blip": replace(BLIP_ITC, tasks=GENERATIVE, model="BlipForConditionalGeneration"),
    "blip2_opt": generative.blip2_recipe(),
    "blip2_t5": generative.blip2_recipe(language="t5"),
    "instructblip": Recipe(
        GENERATIVE,
        "InstructBlipForConditionalGeneration",
        _instructblip,
        opt_tokenizer,
        {"size": {"height": 32, "width": 32}},
        lambda tok: {"qformer_tokenizer": bert_tokenizer(), "num_query_tokens": 4},
    ),
    "llava": generative.llava_recipe(),
    "llava_next": generative.llava_next_recipe(),
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
    "idefics2": vlm.idefics2_recipe(),
    "idefics3": vlm.idefics3_recipe(),
    "smolvlm": replace(  # Idefics3 with a video half
        vlm.idefics3_recipe(),
        model="SmolVLMForConditionalGeneration",
        tokenizer=byte([*vlm.IDEFICS3_SPECIAL, "<video>"], eos="<end_of_utterance>"),
        video={
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
    "qwen2_vl": replace(vlm.qwen2_vl_recipe(), video=QWEN_VIDEO),
    "qwen2_5_vl": replace(vlm.qwen2_vl_recipe(version="2.5"), video=QWEN_VIDEO),
    "qwen3_vl": Recipe(
        GENERATIVE,
        "Qwen3VLForConditionalGeneration",
        _qwen3_vl,
        byte(QWEN_SPECIAL, eos="<|im_end|>"),
        vlm.qwen_images(),
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
        DEEPSEEK_VL_TOKENIZER,
        {"size": {"height": 32, "width": 32}},
        lambda tok: {"num_image_tokens": 16},
        DEEPSEEK_VL_TEMPLATE,
    ),
    "deepseek_vl_hybrid": Recipe(
        GENERATIVE,
        "DeepseekVLHybridForConditionalGeneration",
        partial(_deepseek_vl, hybrid=True),
        DEEPSEEK_VL_TOKENIZER,
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
    "gemma3": vlm.gemma3_recipe(),
    "aya_vision": Recipe(
        GENERATIVE,
        "AyaVisionForConditionalGeneration",
        _aya_vision,
        byte(AYA_VISION_SPECIAL, eos="<|END_OF_TURN_TOKEN|>", bos="<BOS_TOKEN>"),
        {"size": {"height": 32, "width": 32}, "max_patches": 2},
        lambda tok: {"patch_size": 8, "img_size": 32, "downsample_factor": 2},
        AYA_VISION_TEMPLATE,
        fix=init_zero_projectors,
    ),
}
FAMILIES: dict[str, tuple[str, ...]] = {name: row.tasks for name, row in RECIPES.items()}


def model_type(family: str) -> str:
    """The model_type of ``family``'s config.json."""
    import transformers

    found: str = getattr(transformers, RECIPES[family].model).config_class.model_type
    return found


def family_of(model_type_: str, task: str = "caption") -> str | None:
    """The first family of the zoo whose checkpoints have ``model_type_`` and can do ``task``."""
    for family, tasks in FAMILIES.items():
        if task in tasks and model_type(family) == model_type_:
            return family
    return None


def build(family: str, directory: str | Path) -> Path:
    """Build ``family``'s tiny checkpoint into ``directory`` (created) and return it."""
    return recipe.build(RECIPES[family], directory)


def load_processor(directory: str | Path) -> Any:
    """The checkpoint's processor; without torchvision, processors with a video half are built from their
    saved settings without it (for references such as ``pipeline(..., processor=...)``)."""
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    directory = Path(directory)
    data = json.loads((directory / "processor_config.json").read_text())
    if "video_processor" not in data or has_torchvision():
        with num2words_stand_in():
            return AutoProcessor.from_pretrained(directory)
    settings = {
        k: v for k, v in data.items() if k not in ("image_processor", "video_processor", "processor_class")
    }
    template = directory / "chat_template.jinja"
    if template.is_file():
        settings["chat_template"] = template.read_text()
    with num2words_stand_in():
        processor = without_video(getattr(transformers, data["processor_class"]))(
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
