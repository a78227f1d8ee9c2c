"""Contrastive image-text models: CLIP, SigLIP and their relatives (one backend, scoring from config)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

from mmcli.backends.base import Backend, Batch, LoadOptions
from mmcli.errors import UsageError
from mmcli.registry import ModelSpec, model_type_entry
from mmcli.runtime import Runtime

TEXT_CHUNK = 256


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
        settings = model_type_entry(self.model.config.model_type)
        self.scoring: str = settings.get("scoring", "softmax")
        self.text_padding: str | bool = settings.get("text_padding", True)
        self.text_max_length: int | None = settings.get("text_max_length")
        self.logit_scale = float(self.model.logit_scale.detach().float().exp().item())
        bias = getattr(self.model, "logit_bias", None)
        self.logit_bias = float(bias.detach().float().item()) if bias is not None else 0.0

    def preprocess(self, images: list[Image.Image]) -> Batch:
        out = self.processor.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"]}

    @torch.inference_mode()
    def encode_images(self, batch: Batch) -> torch.Tensor:
        pixels = batch["pixel_values"].to(self.runtime.device, self.runtime.dtype)
        features = _embedding(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        chunks = []
        tokenizer = self.processor.tokenizer
        max_length = self.text_max_length or _max_positions(self.model) or tokenizer.model_max_length
        for start in range(0, len(texts), TEXT_CHUNK):
            tokens = tokenizer(
                texts[start : start + TEXT_CHUNK],
                padding=self.text_padding,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            tokens = {k: v.to(self.runtime.device) for k, v in tokens.items()}
            features = _embedding(self.model.get_text_features(**tokens))
            chunks.append(torch.nn.functional.normalize(features.float(), dim=-1).cpu())
        return torch.cat(chunks)


def _embedding(output: Any) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding."""
    if isinstance(output, torch.Tensor):
        return output
    pooled: torch.Tensor = output.pooler_output
    return pooled


def _max_positions(model: Any) -> int | None:
    text_config = getattr(model.config, "text_config", None)
    value = getattr(text_config, "max_position_embeddings", None)
    return int(value) if value else None
