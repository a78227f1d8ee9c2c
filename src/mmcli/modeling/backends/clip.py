"""Contrastive image-text models: every family whose model offers ``get_image_features`` and
``get_text_features`` (CLIP, SigLIP, SigLIP2, Chinese-CLIP, ALIGN, AltCLIP, BLIP, MetaCLIP 2, ...).

What a family needs is read from the checkpoint, not from a table: the image processor's outputs (SigLIP2's
NaFlex patches come with a mask and their spatial shapes), the inputs each feature method accepts, the logit
scale (``logit_scale``, exponentiated, or ``1 / temperature``), the bias and the scoring that goes with it (a
model with a ``logit_bias`` is scored SigLIP-style, each label through a sigmoid; otherwise a softmax over
labels), and the text settings (the processor's own text defaults, the tokenizer's and the text tower's
context length). ``configs/models.toml`` [model_types.*] ``scoring`` / ``text_padding`` /
``text_max_length`` override them where given.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from mmcli.errors import ModelLoadError, UsageError
from mmcli.modeling.backends.base import Backend, Batch, LoadOptions, collate
from mmcli.modeling.backends.vlm import collate_padded
from mmcli.modeling.runtime import Runtime
from mmcli.modeling.spec import ModelSpec, model_type_entry

TEXT_CHUNK = 256
SETTINGS = ("scoring", "text_padding", "text_max_length")
NO_LIMIT = 1_000_000  # a tokenizer's model_max_length above this means "not set"


class ClipBackend(Backend):
    capabilities: ClassVar[frozenset[str]] = frozenset({"encode_image", "encode_text"})

    def __init__(self, spec: ModelSpec, runtime: Runtime, options: LoadOptions | None = None):
        super().__init__(spec, runtime, options)
        if self.options.quantize or self.options.device_map:
            raise UsageError(
                "--quantize and --device-map are for the generative models (BLIP-2, LLaVA)",
                "a contrastive model fits on one device; use --dtype fp16 to halve its memory",
            )
        self.processor: Any = self.load(AutoProcessor)
        self.model: Any = self.load_model(AutoModel)
        self.image_inputs = accepted_inputs(self.model, "get_image_features")
        self.text_inputs = accepted_inputs(self.model, "get_text_features")
        self.logit_scale, bias = logit_scale_and_bias(self.model, spec.name)
        self.logit_bias = 0.0 if bias is None else bias
        settings = model_settings(spec, self.model.config.model_type)
        self.scoring: str = settings.get("scoring") or ("softmax" if bias is None else "sigmoid")
        self.text_kwargs = text_settings(settings, self.processor, self.model, siglip_style=bias is not None)

    def preprocess(self, images: list[Image.Image]) -> Batch:
        """Every tensor the image processor returns (SigLIP2: patches, their mask and spatial shapes)."""
        out = self.processor.image_processor(images=images, return_tensors="pt")
        return {key: value for key, value in out.items() if isinstance(value, torch.Tensor)}

    def input_size(self) -> int:
        """The side of the square the vision tower sees (views.py resizes views and tiles to it): the
        processor's crop, else its resize target, else the tower's configured image size."""
        processor = self.processor.image_processor
        sizes = [getattr(processor, "crop_size", None)] if getattr(processor, "do_center_crop", False) else []
        sizes.append(getattr(processor, "size", None))
        for size in sizes:
            for key in ("height", "shortest_edge"):
                value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
                if isinstance(value, int) and value > 0:
                    return value
        vision = getattr(self.model.config, "vision_config", self.model.config)
        return int(getattr(vision, "image_size", 224) or 224)

    def collate(self, batches: list[Batch]) -> Batch:
        """Masked inputs of different lengths pad with zeros; the rest must match to concatenate."""
        if any("mask" in key for key in batches[0]):
            return collate_padded(batches)
        return collate(batches)

    @torch.inference_mode()
    def encode_images(self, batch: Batch) -> torch.Tensor:
        inputs = {key: self._to_device(value) for key, value in pick(batch, self.image_inputs).items()}
        features = self._embedding(self.model.get_image_features(**inputs))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), TEXT_CHUNK):
            tokens = self.processor.tokenizer(
                texts[start : start + TEXT_CHUNK], return_tensors="pt", **self.text_kwargs
            )
            inputs = {
                key: value.to(self.runtime.device) for key, value in pick(tokens, self.text_inputs).items()
            }
            features = self._embedding(self.model.get_text_features(**inputs))
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(chunks)

    def _embedding(self, output: Any) -> torch.Tensor:
        """transformers 5 returns a model output whose pooler_output is the projected embedding; one
        vector per input, or the model is not one mmcli can score (FLAVA: one per token)."""
        features: torch.Tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
        if features is None or features.dim() != 2:
            raise ModelLoadError(
                f"{self.spec.name}: {type(self.model).__name__} gives no single embedding per image or text "
                f"(shape {None if features is None else tuple(features.shape)}); mmcli cannot score with it"
            )
        return features

    def _to_device(self, value: torch.Tensor) -> torch.Tensor:
        """Floating inputs (pixels) in the runtime dtype; masks and shapes keep theirs."""
        dtype = self.runtime.dtype if value.is_floating_point() else None
        return value.to(self.runtime.device, dtype)


def accepted_inputs(model: Any, method: str) -> frozenset[str] | None:
    """The named inputs ``model.<method>`` takes; None when it names none (``**kwargs`` only)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    params = inspect.signature(getattr(model, method)).parameters.values()
    names = frozenset(p.name for p in params if p.kind not in kinds)
    return names or None


def pick(inputs: Any, names: frozenset[str] | None) -> dict[str, torch.Tensor]:
    """The tensors of ``inputs`` the model accepts (BLIP takes no token_type_ids; SigLIP2 takes its mask)."""
    return {key: value for key, value in inputs.items() if names is None or key in names}


def logit_scale_and_bias(model: Any, name: str) -> tuple[float, float | None]:
    """The multiplier of cosine similarities in the model's own logits, and its bias (None: no bias).

    ``logit_scale`` is a log (CLIP: exp, clamped where the model clamps it, AIMv2); ALIGN and TIPS divide
    by a ``temperature`` instead.
    """
    scale = getattr(model, "logit_scale", None)
    temperature = getattr(model, "temperature", None)
    if isinstance(scale, torch.Tensor):
        value = scale.detach().float()
        ceiling = getattr(model, "max_log_logit_scale", None)
        if ceiling is not None:
            value = value.clamp(0.0, float(ceiling))
        multiplier = float(value.exp().item())
    elif isinstance(temperature, torch.Tensor):
        multiplier = 1.0 / float(temperature.detach().float().item())
    else:
        raise ModelLoadError(
            f"{name}: {type(model).__name__} has neither a logit scale nor a temperature; it is not a "
            "contrastive image-text model",
        )
    bias = getattr(model, "logit_bias", None)
    return multiplier, float(bias.detach().float().item()) if isinstance(bias, torch.Tensor) else None


def model_settings(spec: ModelSpec, model_type: str | None) -> dict[str, Any]:
    """configs/models.toml's overrides: the model type's, then the alias's own fields."""
    settings = dict(model_type_entry(model_type))
    settings.update({key: spec.options[key] for key in SETTINGS if key in spec.options})
    return settings


def text_settings(settings: dict[str, Any], processor: Any, model: Any, siglip_style: bool) -> dict[str, Any]:
    """Tokenizer keywords: the config's override, else what the processor declares for text (SigLIP2,
    ALIGN: pad to 64), else a SigLIP-style model (one with a logit bias: its text tower pools the last
    position, trained on texts padded to full length) pads to its context length, any other to the longest
    text."""
    declared = getattr(processor, "text_kwargs", None)
    declared = declared if isinstance(declared, dict) else {}
    padding = settings.get("text_padding", declared.get("padding", "max_length" if siglip_style else True))
    max_length = (
        settings.get("text_max_length") or declared.get("max_length") or context_length(processor, model)
    )
    return {"padding": padding, "truncation": True, "max_length": max_length}


def context_length(processor: Any, model: Any) -> int | None:
    """The shorter of the tokenizer's ``model_max_length`` and the text tower's position embeddings."""
    limits = [getattr(processor.tokenizer, "model_max_length", None)]
    text_config = getattr(model.config, "text_config", None)
    limits.append(getattr(text_config, "max_position_embeddings", None))
    known = [int(v) for v in limits if isinstance(v, int | float) and 0 < v < NO_LIMIT]
    return min(known) if known else None
