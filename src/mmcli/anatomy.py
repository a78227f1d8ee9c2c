"""The anatomy of a multimodal model: which submodules are its parts, and how many parameters each holds.

A generative model has five parts (the MM-LLM layout): a modality encoder, an input projector that turns
its features into the language model's inputs (linear, MLP, Q-Former, perceiver resampler, cross-attention),
the LLM backbone, an output projector (the LM head, hidden states -> vocabulary) and a modality generator
(none for models that only write text). A contrastive model has a vision encoder, a text encoder and the
projections into the shared embedding space.

Parts are decided from the module tree by submodule names, never by model name: the model is built from
its config on the ``meta`` device (no weights, no memory) and each parameter goes to the part of the longest
module path that holds it. Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GENERATIVE_PARTS = ("modality_encoder", "input_projector", "llm", "output_projector", "generator")
CONTRASTIVE_PARTS = ("vision_encoder", "text_encoder", "projections")
TITLES = {
    "modality_encoder": "modality encoder",
    "input_projector": "input projector",
    "llm": "LLM backbone",
    "output_projector": "output projector",
    "generator": "generator",
    "vision_encoder": "vision encoder",
    "text_encoder": "text encoder",
    "projections": "projections",
    "other": "other",
}

# Name patterns, tried in this order on each submodule's own name (the last component of its path).
_GENERATOR = re.compile(
    r"^(vq_?model|vqvae|vae|gen_vision_model|image_decoder|image_generator|generation_(?!config).*)$"
)
_PROJECTOR = re.compile(
    r"(projector|projection|qformer|query_tokens|perceiver|resampler|connector|merger|aligner|adapter"
    r"|cross_attn|image_newline|^mlp1$|latent_query)"
)
# Inside a vision tower only these names start a projector (Qwen-VL's merger); an attention layer's
# "projection" there is the tower's own.
_PROJECTOR_IN_ENCODER = re.compile(
    r"(projector|qformer|perceiver|resampler|connector|merger|aligner|adapter)"
)
_ENCODER = re.compile(r"(vision|visual|image_encoder|^vit$|^davit$|^high_res)")
_CROSS = re.compile(r"(cross_?attn|crossattention|cross_attention)")
_LLM = re.compile(r"^(language_model|text_model|text_decoder|llm|decoder_model|lm|transformer)$")
_LLM_LEFTOVER = re.compile(r"^(embed_tokens|layers|norm|rotary_emb|embed_positions|wte|wpe|h|ln_f)$")
_TEXT = re.compile(r"^(text_model|text_encoder|language_model|bert|roberta)$")
_PROJECTIONS = re.compile(r"(projection|_proj$|logit_scale|logit_bias|temperature)")


@dataclass
class Part:
    name: str
    modules: list[str] = field(default_factory=list)
    parameters: int = 0
    kind: str = ""

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)


@dataclass
class Card:
    """What ``mmcli models --info`` prints."""

    name: str
    checkpoint: str
    model_type: str
    architecture: str
    kind: str  # generative | contrastive
    parts: list[Part]
    total_parameters: int
    image_tokens: int | None
    image_tokens_source: str
    image_size: list[int] | None
    context_length: int | None
    dtype: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["parts"] = {p.name: {k: v for k, v in asdict(p).items() if k != "name"} for p in self.parts}
        return data


# -- the module tree ------------------------------------------------------------------------------------
def _role(name: str, generative: bool, inherited: str | None) -> str | None:
    """The part a submodule (or a bare parameter) named ``name`` starts inside a subtree of part
    ``inherited`` (None: no part yet), or None: it stays with its ancestor, or look deeper."""
    if not generative:
        if inherited is not None:
            return None
        if _PROJECTIONS.search(name):
            return "projections"
        if _TEXT.match(name):
            return "text_encoder"
        if _ENCODER.search(name):
            return "vision_encoder"
        return None
    if inherited == "modality_encoder":  # a projector inside the tower (Qwen-VL's merger)
        return "input_projector" if _PROJECTOR_IN_ENCODER.search(name) else None
    if inherited == "llm":  # cross-attention to the image inside the language model (Mllama, BLIP)
        return "input_projector" if _CROSS.search(name) else None
    if inherited is not None:
        return None
    if _GENERATOR.match(name):
        return "generator"
    if _PROJECTOR.search(name):
        return "input_projector"
    if _ENCODER.search(name):
        return "modality_encoder"
    if _LLM.match(name):
        return "llm"
    return None


def module_parts(model: Any, generative: bool | None = None) -> dict[str, list[str]]:
    """Part name -> module (or parameter) paths that start it; each parameter belongs to the longest path
    that is a prefix of its name. Unclaimed parameters are the LLM's when they look like a decoder's
    (``embed_tokens``, ``layers``, ``norm`` of a model without a ``language_model``), else ``other``."""
    if generative is None:
        generative = is_generative(model)
    found: dict[str, str] = {}  # path -> part
    head = _output_head(model) if generative else None
    if head:
        found[head] = "output_projector"

    def walk(module: Any, prefix: str, inherited: str | None) -> None:
        for child_name, child in module.named_children():
            path = f"{prefix}{child_name}"
            if path in found:
                continue
            role = _role(child_name, generative, inherited)
            if role is not None:
                found[path] = role
            walk(child, path + ".", role or inherited)
        for param_name, _ in module.named_parameters(recurse=False):
            role = _role(param_name, generative, inherited)
            if role is not None:
                found[f"{prefix}{param_name}"] = role

    walk(model, "", None)
    if generative and "llm" not in found.values():
        for path, _ in model.named_parameters():
            parts = path.split(".")
            for depth in range(len(parts)):
                if _LLM_LEFTOVER.match(parts[depth]) and _owner(path, found) is None:
                    found[".".join(parts[: depth + 1])] = "llm"
                    break
    names = GENERATIVE_PARTS if generative else CONTRASTIVE_PARTS
    out: dict[str, list[str]] = {name: [] for name in names}
    for path, part in sorted(found.items()):
        out.setdefault(part, []).append(path)
    return out


def part_of(name: str, parts: dict[str, list[str]]) -> str | None:
    """The part a parameter named ``name`` belongs to (``module_parts``' longest-prefix rule)."""
    found = {path: part for part, paths in parts.items() for path in paths}
    owner = _owner(name, found)
    return None if owner is None else found[owner]


def _owner(name: str, found: dict[str, str]) -> str | None:
    """The longest path in ``found`` that is ``name`` or a prefix of it at a dot."""
    best = None
    for path in found:
        if (name == path or name.startswith(path + ".")) and (best is None or len(path) > len(best)):
            best = path
    return best


def _output_head(model: Any) -> str | None:
    """The path of the LM head: the model's output embeddings, else the first submodel's that has one
    (BLIP's captioning head sits in its text decoder)."""
    modules = dict(model.named_modules())
    for owner in modules.values():
        getter = getattr(owner, "get_output_embeddings", None)
        if getter is None:
            continue
        try:
            head = getter()
        except (AttributeError, NotImplementedError):
            continue
        if head is not None:
            for name, module in modules.items():
                if module is head:
                    return name
    return None


def is_generative(model: Any) -> bool:
    try:
        return bool(model.can_generate())
    except AttributeError:
        return False


def count_parameters(model: Any, parts: dict[str, list[str]]) -> tuple[dict[str, int], int]:
    """Parameters per part (each shared tensor once, where it first appears) and those of no part."""
    found = {path: part for part, paths in parts.items() for path in paths}
    counts = dict.fromkeys(parts, 0)
    other = 0
    for name, param in model.named_parameters():
        owner = _owner(name, found)
        if owner is None:
            other += param.numel()
        else:
            counts[found[owner]] += param.numel()
    return counts, other


def projector_kind(model: Any, paths: Iterable[str]) -> str:
    """linear | MLP | Q-Former | perceiver resampler | attention pooling, with "+ gated cross-attention"
    when the language model attends to the image, from module names and types."""
    paths = list(paths)
    if not paths:
        return ""
    cross = [p for p in paths if _CROSS.search(p)]
    rest = [p for p in paths if p not in cross]
    names = " ".join(rest).lower()
    modules = [m for p in rest for m in _submodules(model, p)]
    classes = " ".join(type(m).__name__ for m in modules).lower()
    if not rest:
        kind = ""
    elif "qformer" in names or "qformer" in classes:
        kind = "Q-Former"
    elif "perceiver" in names or "resampler" in names or "perceiver" in classes:
        kind = "perceiver resampler"
    elif "attention" in classes or "latent_query" in names:
        kind = "attention pooling (latent queries)"
    else:
        maps = sum(1 for m in modules if type(m).__name__ == "Linear")
        maps += sum(  # weight matrices held directly (Gemma 3's mm_input_projection_weight)
            1
            for m in modules
            if type(m).__name__ not in ("Linear", "Embedding") and "Norm" not in type(m).__name__
            for p in m.parameters(recurse=False)
            if p.dim() == 2
        )
        kind = "linear" if maps == 1 else f"MLP ({maps} linear layers)" if maps else "parameters only"
        if any("Pool" in type(m).__name__ for m in modules):
            kind += " + pooling"
    if cross:
        layers = "gated cross-attention" if any("gate" in p for p in cross) else "cross-attention"
        kind = f"{kind} + {layers} in the LLM" if kind else f"{layers} layers"
    return kind


def _submodules(model: Any, path: str) -> list[Any]:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return []  # a bare parameter
    return list(module.modules())


# -- config facts -----------------------------------------------------------------------------------------
def context_length(config: Any) -> int | None:
    for source in (getattr(config, "text_config", None), config):
        if source is None:
            continue
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"):
            value = getattr(source, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def config_dtype(config: Any) -> str:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is None:
        return "float32 (not set)"
    return str(dtype).replace("torch.", "")


def _sub(config: Any, *names: str) -> Any:
    for name in names:
        sub = getattr(config, name, None)
        if sub is not None:
            return sub
    return None


def image_tokens_from_config(config: Any) -> tuple[int | None, str]:
    """Image tokens per image the model config implies, when it says (query tokens, latents, pooled tokens,
    a fixed sequence length), else the vision tower's patch grid."""
    for key in ("num_query_tokens", "mm_tokens_per_image", "image_seq_length", "latent_query_num"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value, f"config {key}"
    text = _sub(config, "text_config")
    value = getattr(text, "num_image_tokens", None)
    if isinstance(value, int) and value > 0:
        return value, "config text_config.num_image_tokens"
    perceiver = _sub(config, "perceiver_config")
    latents = getattr(perceiver, "resampler_n_latents", None)
    if isinstance(latents, int) and (
        getattr(perceiver, "use_resampler", True) or "idefics2" in config.model_type
    ):
        return latents, "config perceiver_config.resampler_n_latents"
    vision = _sub(config, "vision_config")
    size, patch = _pair(getattr(vision, "image_size", None)), _pair(getattr(vision, "patch_size", None))
    if size and patch:
        tokens = (size[0] // patch[0]) * (size[1] // patch[1])
        merge = getattr(vision, "spatial_merge_size", None) or getattr(config, "scale_factor", None)
        if isinstance(merge, int) and merge > 1:
            tokens //= merge * merge
        return tokens, "vision patch grid"
    return None, "unknown"


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


PROCESSOR_TOKEN_COUNTS = ("num_image_tokens", "image_seq_length", "image_seq_len", "num_query_tokens")


def image_tokens_from_processor(processor: Any, config: Any = None) -> tuple[int | None, list[int] | None]:
    """Image tokens the processor puts in the text for one image at its default size: counted in its own
    output (the prompt from its chat template, else none or its image token), else transformers' own
    formula (``_get_num_multimodal_tokens``, as vLLM asks), else the fixed count the processor holds."""
    images = getattr(processor, "image_processor", processor)
    size = default_image_size(images)
    if size is not None and images is not processor:
        counted = _count_image_tokens(processor, size, _config_image_token(config))
        if counted:
            return counted, size
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if size is not None and counter is not None:
        try:
            data = counter(image_sizes=[tuple(size)])
            tokens = data.get("num_image_tokens") if hasattr(data, "get") else data.num_image_tokens
        except Exception:  # a processor that cannot say: its settings, then the config, answer
            tokens = None
        if tokens:
            return int(tokens[0]), size
    for key in PROCESSOR_TOKEN_COUNTS:
        value = getattr(processor, key, None)
        if isinstance(value, int) and value > 0:
            return value, size
    return None, size


def _config_image_token(config: Any) -> int | None:
    """The token id the model replaces with image features, when its config names one."""
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _count_image_tokens(processor: Any, size: list[int], token_id: int | None) -> int | None:
    from PIL import Image

    token = getattr(processor, "image_token", None)
    if token_id is None:
        token_id = getattr(processor, "image_token_id", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if token_id is None and token is not None and tokenizer is not None:
        token_id = tokenizer.convert_tokens_to_ids(str(token))
    if not isinstance(token_id, int):
        return None
    image = Image.new("RGB", (size[1], size[0]), (127, 127, 127))
    prompts: list[str] = []
    if getattr(processor, "chat_template", None):
        try:
            turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
            prompts.append(processor.apply_chat_template(turn, add_generation_prompt=True))
        except Exception:
            pass
    prompts += ["", str(token)] if token is not None else [""]
    for prompt in prompts:
        try:
            ids = processor(images=[image], text=[prompt], return_tensors="np")["input_ids"]
        except Exception:
            continue
        count = int((ids == token_id).sum())
        if count:
            return count
    return None


REFERENCE_SIDE = 448  # the image side that dynamic-resolution processors (a pixel budget) are asked about


def default_image_size(image_processor: Any) -> list[int] | None:
    """(height, width) an image processor resizes to, when its settings say: its crop when it crops, else
    its size; a pixel budget (Qwen-VL's min/max pixels) is asked about a 448 x 448 image."""
    keys = ("crop_size", "size") if getattr(image_processor, "do_center_crop", True) else ("size",)
    for key in keys:
        size = getattr(image_processor, key, None)
        if size is None:
            continue
        items = size.items() if isinstance(size, dict) else vars(size).items()
        sides = {k: int(v) for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool) and v}
        if "height" in sides and "width" in sides:
            return [sides["height"], sides["width"]]
        if "max_pixels" in sides or sides.get("longest_edge", 0) > 16384:
            return [REFERENCE_SIDE, REFERENCE_SIDE]
        for edge in ("shortest_edge", "longest_edge"):
            if edge in sides:
                return [sides[edge], sides[edge]]
    return None


# -- building the card ------------------------------------------------------------------------------------
def model_class(config: Any) -> Any:
    """The checkpoint's own class (config.json ``architectures``), else transformers' auto mappings."""
    import transformers
    from transformers.models.auto import modeling_auto

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for mapping in ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_MAPPING_NAMES"):
        name = getattr(modeling_auto, mapping, {}).get(config.model_type)
        if name and hasattr(transformers, name):
            return getattr(transformers, name)
    raise LookupError(f"transformers has no model class for model type {config.model_type!r}")


def meta_model(config: Any) -> Any:
    """The model built on the ``meta`` device: its module tree and parameter shapes, no memory."""
    import torch

    cls = model_class(config)
    try:
        with torch.device("meta"):
            return cls._from_config(config)
    except Exception:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            return cls._from_config(config)


def card(name: str, checkpoint: str, config: Any, model: Any, processor: Any = None) -> Card:
    generative = is_generative(model)
    parts = module_parts(model, generative)
    counts, other = count_parameters(model, parts)
    result = []
    for part, paths in parts.items():
        kind = ""
        if part in ("input_projector", "projections"):
            kind = projector_kind(model, paths) if part == "input_projector" else "linear"
        elif part in ("modality_encoder", "vision_encoder"):
            kind = _sub_type(config, "vision_config", paths, model)
        elif part in ("llm", "text_encoder"):
            kind = _sub_type(config, "text_config", paths, model)
        elif part == "output_projector" and paths:
            kind = _head_kind(model, paths[0])
        elif part == "generator" and not paths:
            kind = "none: text only, decoded from the LM head"
        result.append(Part(part, paths, counts[part], kind))
    if other:
        result.append(Part("other", [], other, "parameters of no part"))
    tokens, source = image_tokens_from_config(config)
    size = None
    if processor is not None:
        from_processor, size = image_tokens_from_processor(processor, config)
        if from_processor is not None:
            tokens, source = from_processor, "processor"
    notes = []
    if generative and _cross_attention_in_llm(model, parts["llm"]):
        notes.append("the LLM attends to image features through cross-attention layers")
    return Card(
        name=name,
        checkpoint=checkpoint,
        model_type=str(config.model_type),
        architecture=type(model).__name__,
        kind="generative" if generative else "contrastive",
        parts=result,
        total_parameters=sum(p.numel() for p in model.parameters()),
        image_tokens=tokens,
        image_tokens_source=source,
        image_size=size,
        context_length=context_length(config),
        dtype=config_dtype(config),
        notes=notes,
    )


def _sub_type(config: Any, key: str, paths: list[str], model: Any) -> str:
    """The module's class and its sub-config's model type: "LlamaModel (llama)"; several modules: the
    class that holds them ("layers of IdeficsModel")."""
    sub = getattr(config, key, None)
    model_type = getattr(sub, "model_type", None)
    modules = [p for p in paths if _is_module(model, p)]
    if len(modules) == 1:
        text = type(model.get_submodule(modules[0])).__name__
    elif modules:
        parent = modules[0].rpartition(".")[0]
        text = f"layers of {type(model.get_submodule(parent)).__name__}" if parent else type(model).__name__
    else:
        text = ""
    return f"{text} ({model_type})" if model_type and text else text or (model_type or "")


def _is_module(model: Any, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _head_kind(model: Any, path: str) -> str:
    head = model.get_submodule(path)
    out = getattr(head, "out_features", None)
    tied = False
    with contextlib.suppress(AttributeError, NotImplementedError):
        tied = head.weight is model.get_input_embeddings().weight
    text = f"linear -> {out} tokens" if out else type(head).__name__
    return text + (", tied to the input embeddings" if tied else "")


def _cross_attention_in_llm(model: Any, llm_paths: list[str]) -> bool:
    return any(
        "cross_attn" in name
        for name, _ in model.named_modules()
        if any(name.startswith(p) for p in llm_paths)
    )


# -- text -------------------------------------------------------------------------------------------------
def human(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def compact(paths: list[str]) -> list[str]:
    """Module paths for reading: one per layer pattern (``layers.N.cross_attn*``), not one per layer."""
    patterns = list(dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".N", p) for p in paths))
    out: list[str] = []
    for pattern in patterns:
        stem = next((o.rstrip("*") for o in out if pattern.startswith(o.rstrip("*"))), None)
        if stem is not None:
            out[out.index(stem) if stem in out else out.index(stem + "*")] = stem + "*"
        else:
            out.append(pattern)
    return out


def render(card: Card) -> str:
    head = f"{card.name}: {card.architecture} ({card.model_type}, {card.kind})"
    if card.checkpoint != card.name:
        head += f"\n  checkpoint {card.checkpoint}"
    rows = [
        (
            p.title,
            ", ".join(compact(p.modules)) or "-",
            p.kind,
            human(p.parameters) if p.modules or p.parameters else "-",
        )
        for p in card.parts
    ]
    widths = [max(len(r[i]) for r in [("part", "modules", "kind", "parameters"), *rows]) for i in range(4)]
    lines = [head, ""]
    for row in [("part", "modules", "kind", "parameters"), *rows]:
        lines.append(
            "  "
            + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3]))
            + "  "
            + row[3].rjust(widths[3])
        )
    lines.append("")
    lines.append(f"  total parameters      {human(card.total_parameters)} ({card.total_parameters:,})")
    if card.image_tokens is not None:
        at = f" at {card.image_size[0]}x{card.image_size[1]}" if card.image_size else ""
        lines.append(f"  image tokens / image  {card.image_tokens}{at} (from the {card.image_tokens_source})")
    else:
        lines.append("  image tokens / image  unknown")
    lines.append(f"  context length        {card.context_length or 'not fixed (or not in the config)'}")
    lines.append(f"  dtype                 {card.dtype}")
    lines += [f"  note: {n}" for n in card.notes]
    return "\n".join(lines) + "\n"


def to_json(card: Card) -> str:
    return json.dumps(card.to_dict(), ensure_ascii=False)


def load_processor(directory: Path) -> Any:
    """The checkpoint's processor (without its video part when that needs torchvision, as the generic
    backend loads it), else its image processor, else None: the config alone still gives a card."""
    from transformers import AutoImageProcessor, AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(directory))
    except Exception:
        pass
    try:
        from mmcli.backends import loading

        cls = loading.processor_class(str(directory), {})
        if cls is not None and loading.video_attributes(cls):
            return loading.without_video(cls, str(directory), {})
    except Exception:
        pass
    try:
        return AutoImageProcessor.from_pretrained(str(directory))
    except Exception:
        return None
