"""Tiny image-text-to-text checkpoints of families the generic ``vlm`` backend runs, built offline for tests.

Qwen2-VL (flattened patches + ``image_grid_thw``, multimodal rotary positions) and Idefics3 / SmolVLM
(image tiles + ``pixel_attention_mask``, a varying number of image tokens per image). Each builder saves
the model and its processor, with the family's real chat template, through ``save_pretrained``, so they
load through ``AutoProcessor`` / ``AutoModelForImageTextToText`` exactly as hub checkpoints do. Tokenizers
are byte-level BPE over single bytes plus the family's special tokens; the language models are scaled up
like ``mmcli.testing.generative``'s so that greedy decoding writes varied, non-empty text.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from mmcli.testing.generative import speak

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


def byte_tokenizer(
    special: list[str], eos: str, named: dict[str, str] | None = None, bos: str | None = None
) -> Any:
    """Qwen2's byte-level BPE with one token per byte (no merges), ``<|endoftext|>`` and ``special``.

    ``named``: tokens the processor reads as tokenizer attributes (Gemma 3's ``boi_token``, ...).
    """
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    for token in special:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=[], pad_token="<|endoftext|>", extra_special_tokens=named or {}, bos_token=bos
    )
    tok.add_tokens([AddedToken(t, normalized=False, special=True) for t in special], special_tokens=True)
    tok.eos_token = eos
    return tok


def build_qwen2_vl(
    directory: str | Path,
    *,
    version: str = "2",
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    patch: int = 4,
    merge: int = 2,
    max_pixels: int = 32 * 32,
    seed: int = 0,
) -> Path:
    """Save a Qwen2-VL (``version`` "2") or Qwen2.5-VL ("2.5") model and its processor. Images are
    resized to multiples of ``patch * merge`` between 4 and ``max_pixels`` pixels: up to 16 image tokens."""
    import torch
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    if version not in ("2", "2.5"):
        raise ValueError(f"version must be '2' or '2.5', not {version!r}")
    prefix = "Qwen2VL" if version == "2" else "Qwen2_5_VL"
    torch.manual_seed(seed)
    tok = byte_tokenizer(QWEN2_VL_SPECIAL, eos="<|im_end|>")
    ids = tok.convert_tokens_to_ids
    head_dim = hidden // heads
    vision: dict[str, Any] = {
        "depth": layers,
        "hidden_size": hidden,
        "num_heads": heads,
        "patch_size": patch,
        "spatial_merge_size": merge,
        "temporal_patch_size": 2,
    }
    if version == "2":
        vision |= {"embed_dim": hidden, "mlp_ratio": 2}
    else:
        vision |= {
            "intermediate_size": 2 * hidden,
            "out_hidden_size": hidden,
            "window_size": 2 * patch * merge,
            "fullatt_block_indexes": [layers - 1],
        }
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision,
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 512,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8],
            },
            "bos_token_id": None,
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": tok.pad_token_id,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    speak(model, tok, model.model.visual.merger)
    out = Path(directory)
    model.save_pretrained(out)
    factor = patch * merge
    images = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": max_pixels},
    )
    processor_class = getattr(transformers, f"{prefix}Processor")
    if not has_torchvision():
        processor_class = image_only_processor(prefix)
    processor_class(
        image_processor=images, tokenizer=tok, chat_template=QWEN2_VL_CHAT_TEMPLATE
    ).save_pretrained(out)
    return out


def has_torchvision() -> bool:
    """transformers' video processors (part of Qwen2-VL's and SmolVLM's processors) need torchvision."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or built for another torch
        return False
    return True


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


def build_idefics3(
    directory: str | Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    tile: int = 16,
    patch: int = 4,
    scale_factor: int = 2,
    longest_edge: int = 32,
    seed: int = 0,
) -> Path:
    """Save an Idefics3ForConditionalGeneration (SigLIP-like vision + Llama) and an Idefics3Processor.

    Images are resized to at most ``longest_edge`` pixels and split into ``tile``-pixel tiles plus a
    global view, so images of different shapes take different numbers of tiles and image tokens.
    """
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    torch.manual_seed(seed)
    tok = byte_tokenizer(IDEFICS3_SPECIAL, eos="<end_of_utterance>")
    config = Idefics3Config(
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": tile,
            "patch_size": patch,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 1024,
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": tok.convert_tokens_to_ids("<end_of_utterance>"),
            "pad_token_id": tok.pad_token_id,
        },
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config).eval()
    speak(model, tok, model.model.connector, "text_model")
    out = Path(directory)
    model.save_pretrained(out)
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": longest_edge},
        max_image_size={"longest_edge": tile},
        do_image_splitting=True,
    )
    Idefics3Processor(
        image_processor=images,
        tokenizer=tok,
        image_seq_len=(tile // patch) ** 2 // scale_factor**2,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    ).save_pretrained(out)
    return out


# Idefics2-8B's chat template (HuggingFaceM4/idefics2-8b), unchanged.
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics2(
    directory: str | Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 16,
    patch: int = 4,
    latents: int = 4,
    seed: int = 0,
) -> Path:
    """Save an Idefics2ForConditionalGeneration (SigLIP-like vision, perceiver resampler to ``latents``
    tokens, Mistral) and an Idefics2Processor."""
    import torch
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessorPil,
        Idefics2Processor,
    )

    torch.manual_seed(seed)
    tok = byte_tokenizer(
        ["<fake_token_around_image>", "<image>", "<end_of_utterance>"], eos="<end_of_utterance>"
    )
    config = Idefics2Config(
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch,
        },
        perceiver_config={
            "hidden_size": hidden,
            "resampler_n_latents": latents,
            "resampler_depth": 1,
            "resampler_n_heads": heads,
            "resampler_head_dim": hidden // heads,
            "num_key_value_heads": max(1, heads // 2),
        },
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": tok.convert_tokens_to_ids("<end_of_utterance>"),
            "pad_token_id": tok.pad_token_id,
        },
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    model = Idefics2ForConditionalGeneration(config).eval()
    speak(model, tok, model.model.connector, "text_model")
    out = Path(directory)
    model.save_pretrained(out)
    images = Idefics2ImageProcessorPil(
        size={"shortest_edge": image_size, "longest_edge": image_size}, do_image_splitting=False
    )
    Idefics2Processor(
        image_processor=images, tokenizer=tok, image_seq_len=latents, chat_template=IDEFICS2_CHAT_TEMPLATE
    ).save_pretrained(out)
    return out


# Gemma 3's chat template (google/gemma-3-4b-it), trimmed of system prompts and non-text content kinds.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_gemma3(
    directory: str | Path,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 16,
    patch: int = 4,
    tokens_per_image: int = 4,
    seed: int = 0,
) -> Path:
    """Save a Gemma3ForConditionalGeneration (SigLIP vision pooled to ``tokens_per_image`` soft tokens,
    bidirectional attention over them through ``token_type_ids``) and a Gemma3Processor."""
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )

    torch.manual_seed(seed)
    tok = byte_tokenizer(
        [
            "<bos>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ],
        eos="<end_of_turn>",
        bos="<bos>",
        named={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ids = tok.convert_tokens_to_ids
    config = Gemma3Config(
        vision_config={
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch,
        },
        text_config={
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "head_dim": hidden // heads,
            "max_position_embeddings": 512,
            "sliding_window": 64,
            "bos_token_id": ids("<bos>"),
            "eos_token_id": ids("<end_of_turn>"),
            "pad_token_id": tok.pad_token_id,
        },
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    projector = model.model.multi_modal_projector
    with torch.no_grad():  # initialised to zeros: the image would not reach the language model
        projector.mm_input_projection_weight.normal_(0.0, 0.02)
    speak(model, tok, projector)
    out = Path(directory)
    model.save_pretrained(out)
    images = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    Gemma3Processor(
        image_processor=images,
        tokenizer=tok,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    ).save_pretrained(out)
    return out
