"""BLIP-2: a Q-Former's query tokens, then the prompt, into OPT (decoder-only) or Flan-T5 (seq2seq).

Captions come from the image alone (or the configured ``caption_prompt``); questions go through the
configured ``question_template`` ("Question: {} Answer:"). The query tokens come first, as Blip2Processor
puts them; decoder-only batches pad on the left, T5 batches on the right (T5's relative positions count
padding in the middle).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from mmcli.modeling.backends.base import Batch, LoadOptions
from mmcli.modeling.backends.vlm import GenerativeBackend, Prefix
from mmcli.modeling.runtime import Runtime
from mmcli.modeling.spec import ModelSpec


class Blip2Backend(GenerativeBackend):
    def __init__(self, spec: ModelSpec, runtime: Runtime, options: LoadOptions | None = None):
        super().__init__(spec, runtime, options)
        config = self.model.config
        self.image_token_id: int = config.image_token_id
        self.query_span: list[int] = [self.image_token_id] * config.num_query_tokens
        self.language_model: Any = self.model.language_model

    def preprocess(self, images: list[Image.Image]) -> Batch:
        out = self.processor.image_processor(images=images, return_tensors="pt")
        return {"pixel_values": out["pixel_values"]}

    def render(self, prompt: str | None, raw: bool = False) -> str:
        return self.prompt_text(prompt, raw)

    def sequence(self, batch: Batch, index: int, text_ids: list[int]) -> list[int]:
        return self.query_span + text_ids

    def continue_model(self) -> Any:
        return self.language_model

    def _embeddings(self, inputs: Batch) -> torch.Tensor:
        """Prompt embeddings with the projected query outputs in the image-token slots."""
        features = self.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        embeds = self.model.get_input_embeddings()(inputs["input_ids"])
        slots = (inputs["input_ids"] == self.image_token_id).unsqueeze(-1).to(embeds.device)
        return embeds.masked_scatter(slots, features.to(embeds.device, embeds.dtype))

    def prefix_state(self, inputs: Batch) -> Prefix:
        embeds, mask = self._embeddings(inputs), inputs["attention_mask"]
        if self.decoder_only:
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=True)
            return Prefix(out.past_key_values, mask, out.logits[:, -1])
        encoded = self.language_model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        return Prefix(encoded.last_hidden_state, mask)

    def label_logits(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.decoder_only:
            return super().label_logits(prefix, ids, mask)
        count = ids.shape[0]
        start = self.language_model.config.decoder_start_token_id
        starts = torch.full((count, 1), start, dtype=ids.dtype, device=ids.device)
        out = self.language_model(
            encoder_outputs=(prefix.state.expand(count, -1, -1),),
            attention_mask=prefix.mask.expand(count, -1),
            decoder_input_ids=torch.cat([starts, ids[:, :-1]], dim=1),
            use_cache=False,
        )
        logits: torch.Tensor = out.logits
        return logits
