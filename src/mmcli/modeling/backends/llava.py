"""LLaVA-1.5, LLaVA-NeXT and other chat-template vision-language models (AutoModelForImageTextToText).

A prompt becomes a user turn ``[image, text]`` rendered by the processor's chat template with the
generation prompt (``chat = false`` in the config: the ``prompt_format`` string instead). Each image is
preprocessed on its own by the full processor with the bare image token as text, which yields its
pixel tensors and the expanded image-token span (a number of tokens that varies per image for
LLaVA-NeXT); that span is spliced where the template put the image token, exactly as the processor
would have expanded it.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmcli.errors import UsageError
from mmcli.modeling.backends.base import Batch, LoadOptions
from mmcli.modeling.backends.vlm import GenerativeBackend, collate_padded
from mmcli.modeling.runtime import Runtime
from mmcli.modeling.spec import ModelSpec

TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})
DEFAULT_FORMAT = "USER: {image}\n{prompt} ASSISTANT:"


class LlavaBackend(GenerativeBackend):
    def __init__(self, spec: ModelSpec, runtime: Runtime, options: LoadOptions | None = None):
        super().__init__(spec, runtime, options)
        self.image_token: str = self.processor.image_token
        self.image_token_id: int = self.tokenizer.convert_tokens_to_ids(self.image_token)
        self.chat = bool(self.settings.get("chat", True))
        self.prompt_format = str(self.settings.get("prompt_format", DEFAULT_FORMAT))

    def preprocess(self, images: list[Image.Image]) -> Batch:
        return self.collate([self._one(image) for image in images])

    def _one(self, image: Image.Image) -> Batch:
        out = self.processor(
            images=[image], text=[self.image_token], add_special_tokens=False, return_tensors="pt"
        )
        batch: Batch = {k: v for k, v in out.items() if k not in TEXT_KEYS and hasattr(v, "dim")}
        batch["image_tokens"] = out["input_ids"]
        return batch

    def collate(self, batches: list[Batch]) -> Batch:
        return collate_padded(batches)

    def render(self, prompt: str | None, raw: bool = False) -> str:
        text = self.prompt_text(prompt, raw)
        if not self.chat:
            return self.prompt_format.format(image=self.image_token, prompt=text)
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        rendered: str = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return rendered

    def sequence(self, batch: Batch, index: int, text_ids: list[int]) -> list[int]:
        where = [k for k, token in enumerate(text_ids) if token == self.image_token_id]
        if len(where) != 1:
            raise UsageError(
                f"{self.spec.name}: the prompt holds {len(where)} image tokens ({self.image_token}), not 1",
                "check the model's chat template, or its prompt_format in configs/models.toml",
            )
        span = [token for token in batch["image_tokens"][index].tolist() if token >= 0]
        return text_ids[: where[0]] + span + text_ids[where[0] + 1 :]
