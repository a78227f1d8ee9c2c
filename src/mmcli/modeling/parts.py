"""A model's parts, read from its module tree: which submodules are the encoder, the projector, the LLM,
the heads (``anatomy`` builds the card from them). By submodule names, never by model name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

GENERATIVE_PARTS = (
    "modality_encoder",
    "input_projector",
    "llm",
    "output_projector",
    "generator",
)
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
