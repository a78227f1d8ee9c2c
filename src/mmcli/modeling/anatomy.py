"""The anatomy of a multimodal model: which submodules are its parts, and how many parameters each holds.

A generative model has five parts (the MM-LLM layout): a modality encoder, an input projector that turns
its features into the language model's inputs (linear, MLP, Q-Former, perceiver resampler, cross-attention),
the LLM backbone, an output projector (the LM head, hidden states -> vocabulary) and a modality generator
(none for models that only write text). A contrastive model has a vision encoder, a text encoder and the
projections into the shared embedding space.

Parts are decided from the module tree by submodule names, never by model name: the model is built from
its config on the ``meta`` device (no weights, no memory) and each parameter goes to the part of the longest
module path that holds it. Nothing here imports torch or transformers at import time. The parts are found in ``parts``, the config's
facts in ``config_facts``; this module builds and renders the card.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmcli.modeling.config_facts import (
    config_dtype,
    context_length,
    image_tokens_from_config,
    image_tokens_from_processor,
)
from mmcli.modeling.parts import (
    TITLES,
    count_parameters,
    is_generative,
    projector_kind,
)
from mmcli.modeling.parts import module_parts as module_parts
from mmcli.modeling.parts import part_of as part_of


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


# -- building the card ------------------------------------------------------------------------------------
def model_class(config: Any) -> Any:
    """The checkpoint's own class (config.json ``architectures``), else transformers' auto mappings."""
    import transformers
    from transformers.models.auto import modeling_auto

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    for mapping in (
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
        "MODEL_MAPPING_NAMES",
    ):
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
        from mmcli.modeling.backends import loading

        cls = loading.processor_class(str(directory), {})
        if cls is not None and loading.video_attributes(cls):
            return loading.without_video(cls, str(directory), {})
    except Exception:
        pass
    try:
        return AutoImageProcessor.from_pretrained(str(directory))
    except Exception:
        return None
