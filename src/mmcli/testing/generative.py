"""Tiny generative checkpoints (BLIP-2 with OPT or Flan-T5, LLaVA, LLaVA-NeXT), built offline for tests.

Each builder saves a model and its processor with ``save_pretrained``, so they load through the same
``from_pretrained`` code users hit. Every tokenizer is built from a hand-made vocabulary (one token per
character), so nothing is downloaded. The language models are untied (tied random embeddings echo the
last token), their weights scaled up and the head rows of every token but letters, digits and punctuation
zeroed: greedy decoding then writes non-empty text that changes with the image and the prompt, one
character per token, and never stops early, so tests compare real strings. (Sampling may still pick
a zeroed token: those have logit 0, not -inf.)
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

LETTERS = string.ascii_letters + string.digits + ".,:;?!'()-"
IMAGE_TOKEN = "<image>"
HEAD_SCALE = 3.0
LM_SCALE = 4.0
PROJECTOR_SCALE = 20.0

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


# -- tokenizers ---------------------------------------------------------------------------------------
def opt_tokenizer() -> Any:
    """OPT's byte-level BPE (GPT2Tokenizer): one token per byte, ``</s>`` first as BOS and EOS."""
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import GPT2Tokenizer

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in sorted(ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    tok = GPT2Tokenizer(
        vocab=vocab,
        merges=[],
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
    )
    tok.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    return tok


def t5_tokenizer() -> Any:
    """A T5 unigram tokenizer over single characters (``</s>`` appended, ``<pad>`` = 0 starts decoding)."""
    from tokenizers import AddedToken
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in LETTERS] + [("▁" + c, -2.5) for c in string.ascii_lowercase]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    return tok


def llama_tokenizer() -> Any:
    """A Llama BPE tokenizer (byte fallback, ``▁`` prepended to the first word only) plus ``<image>``."""
    from tokenizers import AddedToken
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["▁", *LETTERS]:
        vocab[char] = len(vocab)
    tok = LlamaTokenizer(vocab=vocab, merges=[], pad_token="<pad>", legacy=False, add_bos_token=True)
    tok.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    return tok


def speak(model: Any, tokenizer: Any, projector: Any, language_key: str = "language_model") -> None:
    """Make a random VLM write varied text that depends on the image (see the module's docstring).

    Unscaled, tiny random models repeat one token whatever the image; scaling the language model's
    matrices (parameters whose name holds ``language_key``), the image projector and the head makes the text
    vary with both inputs. The head rows of every token but letters, digits and punctuation are zeroed.
    """
    import torch

    speaking = set(LETTERS)
    silent = [i for t, i in tokenizer.get_vocab().items() if not set(t) <= speaking]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if language_key in name and param.dim() == 2 and "embed" not in name:
                param.mul_(LM_SCALE)
        for param in projector.parameters():
            param.mul_(PROJECTOR_SCALE)
        head = model.get_output_embeddings()
        head.weight.mul_(HEAD_SCALE)
        head.weight[silent] = 0.0


# -- BLIP-2 -------------------------------------------------------------------------------------------
def _blip2_parts(
    hidden: int, image_size: int, query_tokens: int, layers: int = 2, heads: int = 4, patch: int = 8
) -> dict[str, Any]:
    return {
        "vision_config": {
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch,
        },
        "qformer_config": {
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "encoder_hidden_size": hidden,
        },
        "num_query_tokens": query_tokens,
    }


def _language(kind: str, tok: Any, hidden: int, layers: int = 2, heads: int = 4) -> dict[str, Any]:
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


def build_blip2(
    directory: str | Path,
    *,
    language: str = "opt",
    hidden: int = 32,
    image_size: int = 32,
    query_tokens: int = 4,
    layers: int = 2,
    heads: int = 4,
    patch: int = 8,
    seed: int = 0,
) -> Path:
    """Save a Blip2ForConditionalGeneration (``language``: "opt" or "t5") and its Blip2Processor."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    if language not in ("opt", "t5"):
        raise ValueError(f"language must be 'opt' or 't5', not {language!r}")
    torch.manual_seed(seed)
    tok = opt_tokenizer() if language == "opt" else t5_tokenizer()
    config = Blip2Config(
        **_blip2_parts(hidden, image_size, query_tokens, layers, heads, patch),
        text_config=_language(language, tok, hidden, layers, heads),
        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    speak(model, tok, model.language_projection)
    out = Path(directory)
    model.save_pretrained(out)
    images = BlipImageProcessor(size={"height": image_size, "width": image_size})
    Blip2Processor(image_processor=images, tokenizer=tok, num_query_tokens=query_tokens).save_pretrained(out)
    return out


# -- LLaVA --------------------------------------------------------------------------------------------
def _llava_configs(
    tok: Any, hidden: int, image_size: int, patch: int, layers: int = 2, heads: int = 4
) -> dict[str, Any]:
    return {
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "image_size": image_size,
            "patch_size": patch,
        },
        "text_config": {
            "model_type": "llama",
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": max(1, heads // 2),
            "max_position_embeddings": 512,
            "tie_word_embeddings": False,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        "image_token_index": tok.convert_tokens_to_ids(IMAGE_TOKEN),
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
    }


def build_llava(
    directory: str | Path,
    *,
    hidden: int = 32,
    image_size: int = 32,
    patch: int = 8,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
) -> Path:
    """Save a LlavaForConditionalGeneration (CLIP vision + Llama) and a LlavaProcessor with a chat template."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    torch.manual_seed(seed)
    tok = llama_tokenizer()
    config = LlavaConfig(
        **_llava_configs(tok, hidden, image_size, patch, layers, heads),
        image_seq_length=(image_size // patch) ** 2,
    )
    model = LlavaForConditionalGeneration(config).eval()
    speak(model, tok, model.model.multi_modal_projector)
    out = Path(directory)
    model.save_pretrained(out)
    images = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    LlavaProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(out)
    return out


def build_llava_next(
    directory: str | Path, *, hidden: int = 32, image_size: int = 32, patch: int = 8, seed: int = 0
) -> Path:
    """Save a LlavaNextForConditionalGeneration: images tile into a varying number of patches (anyres)."""
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    torch.manual_seed(seed)
    tok = llama_tokenizer()
    grid = [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size, 2 * image_size]]
    config = LlavaNextConfig(**_llava_configs(tok, hidden, image_size, patch), image_grid_pinpoints=grid)
    model = LlavaNextForConditionalGeneration(config).eval()
    speak(model, tok, model.model.multi_modal_projector)
    out = Path(directory)
    model.save_pretrained(out)
    images = LlavaNextImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid,
    )
    LlavaNextProcessor(
        image_processor=images,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    ).save_pretrained(out)
    return out
