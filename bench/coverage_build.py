"""The generic tiny build of bench/coverage.py (its ``--build TYPE --dir DIR`` runs this); not a script.

For an image-text-to-text model type: its config class with every hidden size, layer count, head count and
vocabulary of the config and its sub-configs shrunk (a SIDE x SIDE patch grid), the real processor class
transformers maps the type to, its image processor, and a byte-level tokenizer holding every token-like
string the processor's module names; one greedy token through transformers alone before it is saved.
(Where it fails, coverage.py's ``build_main`` builds the zoo's recipe for the type, if tests/zoo.py has one.)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import harness

sys.path.insert(0, str(harness.ROOT))  # tests.zoo, from any working directory
SIDE = 4  # image side, in patches

HIDDEN_KEYS = {
    "hidden_size", "d_model", "embed_dim", "n_embd", "hidden_dim", "dim", "word_embed_proj_dim",
    "projection_dim", "out_hidden_size", "text_hidden_size", "vision_hidden_size", "encoder_hidden_size",
    "mm_hidden_size", "projector_hidden_size", "output_channels", "vision_output_dim", "projection_size",
}  # fmt: skip
INTERMEDIATE_KEYS = {
    "intermediate_size", "ffn_dim", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim", "mlp_dim", "n_inner",
    "moe_intermediate_size", "shared_expert_intermediate_size", "projector_intermediate_size",
}  # fmt: skip
LAYER_KEYS = {
    "num_hidden_layers", "num_layers", "n_layer", "depth", "encoder_layers", "decoder_layers",
    "num_decoder_layers", "layers", "resampler_depth", "num_global_layers",
}  # fmt: skip
HEAD_KEYS = {
    "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads", "decoder_attention_heads",
    "attention_heads", "resampler_n_heads",
}  # fmt: skip
SMALL_KEYS = {
    "head_dim": 8, "resampler_head_dim": 8, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "kv_lora_rank": 16, "q_lora_rank": 16, "num_experts": 4, "n_routed_experts": 4, "num_local_experts": 4,
    "num_experts_per_tok": 2, "n_shared_experts": 1, "first_k_dense_replace": 0,
}  # fmt: skip
TOKEN_COUNT_KEYS = {"mm_tokens_per_image", "image_seq_length", "num_image_tokens", "image_seq_len"}
INDEX_LIST_KEYS = {
    "intermediate_layers_indices", "cross_attention_layers", "deepstack_visual_indexes", "fullatt_block_indexes",
    "global_attn_indexes", "vision_feature_layers",
}  # fmt: skip


def shrink(data: dict[str, Any], top: bool = True, scale: float = 1.0) -> dict[str, Any]:
    """A config's dict (and its sub-configs') with every size made tiny: hidden 32, 2 layers, 4 heads."""
    out: dict[str, Any] = {}
    layers = 2
    for key, value in data.items():
        if isinstance(value, dict) and ("model_type" in value or key.endswith("_config")):
            out[key] = shrink(value, top=False, scale=scale)
        elif isinstance(value, bool) or value is None:
            out[key] = value
        elif key in HIDDEN_KEYS and isinstance(value, int) and value > 32:
            out[key] = 32
        elif key in HIDDEN_KEYS and isinstance(value, list) and all(isinstance(v, int) for v in value):
            out[key] = [16 * 2 ** min(i, 1) for i in range(len(value))]
        elif key in INTERMEDIATE_KEYS and isinstance(value, int) and value > 64:
            out[key] = 64
        elif key in LAYER_KEYS and isinstance(value, int) and value > layers:
            out[key] = 1 if key == "num_global_layers" else layers
        elif key in HEAD_KEYS and isinstance(value, int) and value > 4:
            out[key] = 4
        elif key in HEAD_KEYS and isinstance(value, list):
            out[key] = [2 * 2 ** min(i, 1) for i in range(len(value))]
        elif key == "num_key_value_heads" and isinstance(value, int):
            out[key] = min(value, 2)
        elif key in SMALL_KEYS and isinstance(value, int):
            out[key] = min(value, SMALL_KEYS[key])
        else:
            out[key] = value
    for key in INDEX_LIST_KEYS & out.keys():  # layer indices must exist in the shrunk stack
        if isinstance(out[key], list):
            out[key] = sorted({min(abs(int(i)), layers - 1) for i in out[key] if isinstance(i, int)})[:layers]
    for key in TOKEN_COUNT_KEYS & out.keys():  # image tokens of a SIDE x SIDE patch grid
        if isinstance(out[key], int) and out[key] > SIDE * SIDE:
            out[key] = max(1, round(SIDE * SIDE * scale))
    if isinstance(out.get("layer_types"), list):
        out["layer_types"] = out["layer_types"][:layers]
    if isinstance(out.get("depths"), list):
        out["depths"] = [1] * len(out["depths"])
    patch = out.get("patch_size")
    if isinstance(out.get("image_size"), int) and isinstance(patch, int) and out["image_size"] > SIDE * patch:
        out["image_size"] = SIDE * patch
    elif isinstance(out.get("image_size"), list) and isinstance(patch, list) and len(patch) == 2:
        out["image_size"] = [SIDE * patch[0], SIDE * patch[1]]
    if "tie_word_embeddings" in out or top:
        out["tie_word_embeddings"] = False
    return out


TOKEN = re.compile(r"""["'](<[|｜]?[A-Za-z_][\w./:▁-]{0,40}[|｜]?>|\[[A-Z_]{2,20}\]|\|[A-Z_]{2,20}\|)["']""")
TOKEN_ATTRIBUTE = re.compile(r"tokenizer\.(\w+_token)\b")


def harvest(processor_class: Any) -> tuple[list[str], dict[str, str]]:
    """Token-like strings the processor's module names, and the tokenizer attributes it reads."""
    import inspect

    source = inspect.getsource(sys.modules[processor_class.__module__])
    tokens = list(dict.fromkeys(TOKEN.findall(source)))
    defaults = {
        name: p.default
        for name, p in inspect.signature(processor_class.__init__).parameters.items()
        if isinstance(p.default, str)
    }
    named = {}
    for attribute in dict.fromkeys(TOKEN_ATTRIBUTE.findall(source)):
        if re.match(r"(add_|(bos|eos|pad|unk|sep|cls|mask)_token$)", attribute):
            continue
        named[attribute] = defaults.get(attribute) or f"<{attribute}>"
    tokens += [t for t in named.values() if t not in tokens]
    return tokens[:300], named


def fitted_sizes(images: Any, side: int, scale: float = 1.0) -> dict[str, Any]:
    """Settings that make the image processor resize to ``side`` pixels (a pixel budget: side x side)."""
    out: dict[str, Any] = {}
    for key in ("size", "crop_size", "max_image_size"):
        size = getattr(images, key, None)
        if size is None or isinstance(size, (int, float)):
            continue
        items = size.items() if isinstance(size, dict) else vars(size).items()
        size = {k: v for k, v in items if v is not None}
        pixels = (size.get("longest_edge") or 0) > 16384 or "max_pixels" in size
        out[key] = {
            name: (side * side if pixels or name in ("min_pixels", "max_pixels") else side)
            if isinstance(value, int)
            else value
            for name, value in size.items()
        }
    for key in ("min_pixels", "max_pixels"):
        if isinstance(getattr(images, key, None), int):
            out[key] = side * side
    if hasattr(images, "image_seq_length"):
        out["image_seq_length"] = max(1, round(SIDE * SIDE * scale))
    return out


def fit_rope_sections(config: Any) -> None:
    """Multimodal rotary sections (3-D positions) must add up to half the shrunk head: set them wherever
    the config's module knows ``mrope_section``, present in the config or a default in the model."""
    import inspect

    from transformers import PreTrainedConfig

    for node in [config, *[v for v in vars(config).values() if isinstance(v, PreTrainedConfig)]]:
        rope = getattr(node, "rope_parameters", None)
        if not isinstance(rope, dict) or "mrope_section" not in inspect.getsource(
            sys.modules[type(node).__module__]
        ):
            continue
        heads = getattr(node, "num_attention_heads", None) or 4
        head_dim = getattr(node, "head_dim", None) or node.hidden_size // heads
        half = head_dim // 2
        rope["mrope_section"] = [half - 2 * (half // 4), half // 4, half // 4]


def retarget(config: Any, processor: Any, tok: Any) -> None:
    """Point the config's token ids at the tiny tokenizer's (a new token for one it lacks), then size its
    vocabularies to the tokenizer."""
    from tokenizers import AddedToken
    from transformers import PreTrainedConfig

    def nodes(node: Any, name: str) -> list[tuple[Any, str]]:
        found = [(node, name)]
        for key, value in vars(node).items():
            if isinstance(value, PreTrainedConfig):
                found += nodes(value, key)
        return found

    def token_id(stem: str, value: Any) -> Any:
        for holder in (tok, processor):  # the tokenizer's first: Gemma 3's processor names its boi token
            found = getattr(holder, f"{stem}_token_id", None)
            if isinstance(found, int):
                return found
            text = getattr(holder, f"{stem}_token", None)
            if isinstance(text, str) and text in tok.get_vocab():
                return tok.convert_tokens_to_ids(text)
        if stem in ("bos", "eos", "pad", "decoder_start", "sep", "unk"):
            return getattr(tok, f"{stem}_token_id", None) if stem != "decoder_start" else tok.eos_token_id
        if isinstance(value, int) and value >= len(tok):  # a token the tokenizer lacks: add one
            token = f"<|{stem}|>"
            tok.add_tokens([AddedToken(token, normalized=False, special=True)], special_tokens=True)
            return tok.convert_tokens_to_ids(token)
        return value

    for node, _ in nodes(config, ""):
        for key, value in list(vars(node).items()):
            if re.fullmatch(r"(\w+)_token_(id|index)", key) and not isinstance(value, list):
                setattr(node, key, token_id(key.rsplit("_token_", 1)[0], value))
    for node, name in nodes(config, ""):
        if isinstance(getattr(node, "vocab_size", None), int) and not re.search("vision|vq|audio", name):
            node.vocab_size = len(tok)


def config_settings(processor_class: Any, config: Any, scale: float = 1.0) -> dict[str, Any]:
    """The processor's settings the config also holds (LLaVA's patch_size, BLIP-2's num_query_tokens, ...);
    ``num_additional_image_tokens`` from the vision tower's output length against its patch grid."""
    import inspect

    from transformers import PreTrainedConfig

    skip = {"self", "image_processor", "tokenizer", "video_processor", "chat_template", "kwargs"}
    params = [n for n in inspect.signature(processor_class.__init__).parameters if n not in skip]
    sources = [config, *[v for v in vars(config).values() if isinstance(v, PreTrainedConfig)]]
    out: dict[str, Any] = {}
    for name in params:
        for source in sources:
            value = getattr(source, name, None)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                out[name] = value
                break
    for name in TOKEN_COUNT_KEYS & set(params) - out.keys():
        out[name] = max(1, round(SIDE * SIDE * scale))
    if "num_additional_image_tokens" in params:
        out["num_additional_image_tokens"] = extra_vision_tokens(config)
    return out


def extra_vision_tokens(config: Any) -> int:
    """Tokens the vision tower outputs beyond its patch grid (CLIP's class token: 1)."""
    import torch
    from transformers import AutoModel

    vision = config.vision_config
    side, patch = vision.image_size, vision.patch_size
    with torch.no_grad():
        tower = AutoModel.from_config(vision).eval()
        out = tower(pixel_values=torch.zeros(1, 3, side, side)).last_hidden_state
    return int(out.shape[1] - (side // patch) ** 2)


GENERIC_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ IMAGE }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def needs_placeholders(processor: Any, image: Any) -> bool:
    """Whether the processor refuses plain text beside an image (it wants image tokens in the text)."""
    try:
        processor(images=[image], text=["hello"], return_tensors="pt")
    except Exception:
        return True
    return False


def placeholder(processor: Any) -> str:
    """The image's place in a prompt: the processor's image token, inside its vision start and end."""
    token = getattr(processor, "image_token", None)
    token = token if isinstance(token, str) else "<image>"
    start = getattr(processor, "vision_start_token", None)
    end = getattr(processor, "vision_end_token", None)
    return f"{start if isinstance(start, str) else ''}{token}{end if isinstance(end, str) else ''}"


def smoke(model: Any, processor: Any, image: Any) -> None:
    """One greedy token through transformers alone: a tiny build transformers cannot run is no test of
    mmcli."""
    import torch

    if getattr(processor, "chat_template", None):
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hello"}]}]
        text = processor.apply_chat_template(turn, add_generation_prompt=True)
    else:
        text = "hello"
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)


MISMATCH = re.compile(r"tokens: (\d+), features: (\d+)")


def build_generic(model_type: str, out: Path) -> dict[str, Any]:
    """Build ``model_type``'s tiny checkpoint into ``out``; returns what was built.

    When transformers itself says the processor's image tokens and the model's image features differ
    ("tokens: A, features: B"), the image token counts (config and processor) are scaled by B / A once and
    the build tried again: pixel shuffles and pooling change the count in ways no generic rule knows.
    """
    try:
        return build_once(model_type, out, 1.0)
    except RuntimeError as exc:
        found = MISMATCH.search(str(exc))
        if not found or int(found.group(1)) == 0:
            raise
        return build_once(model_type, out, int(found.group(2)) / int(found.group(1)))


def processor_classes(model_type: str) -> tuple[str, str]:
    """The names of the processor class and the image processor class transformers maps the type to."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    from mmcli.testing import vlm as testing_vlm

    processor_name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if not processor_name:
        raise LookupError("transformers maps no processor class to it")
    classes = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    if not classes:
        raise LookupError("transformers maps no image processor to it")
    if "pil" not in classes and not testing_vlm.has_torchvision():
        raise LookupError(f"its image processor ({classes['torchvision']}) needs torchvision")
    return processor_name, classes.get("pil") or classes["torchvision"]


def tiny_processor(processor_name: str, image_class_name: str, config: Any, scale: float) -> tuple[Any, Any]:
    """The processor, its image processor fitted to a SIDE x SIDE patch grid, and its byte-level tokenizer."""
    import transformers

    from mmcli.testing import recipe
    from mmcli.testing.vocab import byte_tokenizer

    vision = getattr(config, "vision_config", None)
    patch = getattr(vision, "patch_size", None) or getattr(config, "patch_size", None) or 8
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    image_class = getattr(transformers, image_class_name)
    images = image_class(**fitted_sizes(image_class(), SIDE * int(patch), scale))
    processor_class = getattr(transformers, processor_name)
    tokens, named = harvest(processor_class)
    tokens = [t for t in ["<s>", "</s>", "<image>", *tokens] if t != "<|endoftext|>"]
    tok = byte_tokenizer(list(dict.fromkeys(tokens)), eos="</s>", named=named, bos="<s>")
    kwargs: dict[str, Any] = {}
    for name in processor_class.get_attributes():
        if "tokenizer" in name:
            kwargs[name] = tok
        elif name == "image_processor":
            kwargs[name] = images
        elif "video" not in name:
            raise LookupError(f"its processor also needs a {name}")
    video = any("video" in name for name in processor_class.get_attributes())
    if video:
        processor_class = recipe.without_video(processor_class)
    kwargs |= config_settings(processor_class, config, scale)
    with recipe.num2words_stand_in():
        processor = processor_class(**kwargs)
    if video:
        processor.video_processor = SimpleNamespace(num_frames=8, fps=1)  # what chat templates read of it
    return processor, tok


def build_once(model_type: str, out: Path, scale: float) -> dict[str, Any]:
    import torch
    import transformers
    from PIL import Image
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from mmcli.testing import recipe

    model_class = getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type])
    processor_name, image_class_name = processor_classes(model_type)
    config = model_class.config_class.from_dict(shrink(model_class.config_class().to_dict(), scale=scale))
    processor, tok = tiny_processor(processor_name, image_class_name, config, scale)
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    if not getattr(processor, "chat_template", None) and needs_placeholders(processor, image):
        processor.chat_template = GENERIC_TEMPLATE.replace("{{ IMAGE }}", placeholder(processor))
    retarget(config, processor, tok)
    fit_rope_sections(config)
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():  # zero-initialised projectors would keep the image from the text
        for name, param in model.named_parameters():
            if param.dim() == 2 and not param.any() and "embed" not in name:
                param.normal_(0.0, 0.02)
    recipe.speak_by_anatomy(model, tok)
    try:
        smoke(model, processor, image)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise RuntimeError(
            f"transformers cannot run the tiny build: {type(exc).__name__}: {text[0] if text else ''}"
        ) from exc
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return {"model": type(model).__name__, "processor": processor_name, "vocab": len(tok)}
