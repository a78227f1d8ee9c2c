"""Any image-text-to-text checkpoint whose processor has a chat template (Idefics3 / SmolVLM, Qwen2-VL, ...).

Nothing here knows how a family lays out its image: the checkpoint's own processor turns images and
rendered prompts into model inputs, in one call per batch, exactly as ``pipeline("image-text-to-text")``
does. So flattened patches with ``image_grid_thw`` (Qwen2-VL), image tiles with ``pixel_attention_mask``
(Idefics3), a single image row (LLaVA) or per-image token spans of any length all work alike.

``preprocess`` only decodes: a batch carries the images themselves (``{"images": [PIL images]}``) and
``collate`` joins those lists. A prompt becomes a user turn ``[image, text]`` rendered by the chat template
with the generation prompt (``chat = false`` in the config: the ``prompt_format`` string instead).

Label scores are the mean log-probability of the label's tokens after the prompt (no EOS), from one
forward per image over the prompt + each label (right-padded), the image repeated over the labels (at
most ``LABEL_CHUNK`` labels per forward; only the logits the labels need are computed when the model
takes ``logits_to_keep``).

Trade-offs against the family-specific backends: the image processor runs in the forward thread, not in
the loader's worker threads, and label scoring runs the prompt once per label rather than reusing a
cached prefix.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any, ClassVar, cast

import torch
from PIL import Image

from mmcli.backends.base import Backend, Batch, GenerateOptions, LoadOptions
from mmcli.backends.vlm import LABEL_CHUNK, generate_text, model_placement, settings_for
from mmcli.errors import MmcliError, UsageError
from mmcli.registry import ModelSpec
from mmcli.runtime import Runtime

DEFAULT_FORMAT = "USER: {image}\n{prompt} ASSISTANT:"


class GenericVlmBackend(Backend):
    capabilities: ClassVar[frozenset[str]] = frozenset({"generate", "score_text"})

    def __init__(self, spec: ModelSpec, runtime: Runtime, options: LoadOptions | None = None):
        super().__init__(spec, runtime, options)
        placement = model_placement(self.options, runtime)  # fails before anything downloads
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor: Any = self.load(AutoProcessor)
        self.tokenizer: Any = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise UsageError(
                f"{spec.name}: AutoProcessor loaded only a {type(self.processor).__name__}, not a processor of "
                "images and text",
                "transformers builds the processors of video-capable models (Qwen2-VL, SmolVLM, ...) only with "
                "torchvision installed: pip install torchvision"
                if importlib.util.find_spec("torchvision") is None
                else "the checkpoint's processor files may be missing or incomplete",
            )
        if placement:
            self.model: Any = self.load(
                AutoModelForImageTextToText,
                dtype=runtime.dtype,
                use_safetensors=None if self.options.allow_pickle else True,
                **placement,
            )
            self.model.eval()
            self.device: torch.device = self.model.device
        else:
            self.model = self.load_model(AutoModelForImageTextToText)
            self.device = runtime.device
        config = self.model.config
        self.settings: dict[str, Any] = settings_for(spec, config.model_type)
        self.decoder_only = not getattr(config, "is_encoder_decoder", False)
        self.chat = bool(self.settings.get("chat", True))
        self.prompt_format = str(self.settings.get("prompt_format", DEFAULT_FORMAT))
        if self.chat and not getattr(self.processor, "chat_template", None):
            raise UsageError(
                f"{spec.name}: its processor has no chat template",
                "set chat = false and a prompt_format for it in configs/models.toml",
            )
        self.tokenizer.padding_side = "left" if self.decoder_only else "right"
        self.keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else self.tokenizer.eos_token_id)

    # -- images ---------------------------------------------------------------------------------------
    def preprocess(self, images: list[Image.Image]) -> Batch:
        """The decoded RGB images themselves: the processor runs on the whole batch in ``generate``."""
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        for image in rgb:
            image.load()
        return cast(Batch, {"images": rgb})

    def collate(self, batches: list[Batch]) -> Batch:
        return cast(Batch, {"images": [image for b in batches for image in self.images(b)]})

    @staticmethod
    def images(batch: Batch) -> list[Image.Image]:
        return list(cast(dict[str, Any], batch)["images"])

    # -- prompts ----------------------------------------------------------------------------------------
    def prompt_text(self, prompt: str | None, raw: bool = False) -> str:
        """The caption prompt, or ``prompt`` through the question template, or ``prompt`` as given."""
        if prompt is None:
            return str(self.settings.get("caption_prompt", ""))
        if raw:
            return prompt
        return str(self.settings.get("question_template", "{}")).format(prompt)

    def default_prompt(self, task: str) -> str | None:
        return self.settings.get(f"{task}_prompt") or None

    def render(self, prompt: str | None, raw: bool = False) -> str:
        """The text the processor sees: one user turn holding the image and the prompt."""
        text = self.prompt_text(prompt, raw)
        if not self.chat:
            image_token = getattr(self.processor, "image_token", "<image>")
            return self.prompt_format.format(image=image_token, prompt=text)
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        rendered: str = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return rendered

    def inputs(self, images: list[Image.Image], texts: list[str], side: str) -> dict[str, Any]:
        """One processor call: image i goes with text i; rows padded on ``side``."""
        bos = self.tokenizer.bos_token
        special = not (bos and texts[0].startswith(bos))
        out = self.processor(
            images=[[image] for image in images],
            text=texts,
            padding=True,
            padding_side=side,
            add_special_tokens=special,
            return_tensors="pt",
        )
        return dict(out)

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        dtype = self.runtime.dtype
        moved: dict[str, Any] = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device, dtype) if value.is_floating_point() else value.to(self.device)
            moved[key] = value
        return moved

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, batch: Batch, prompts: list[str | None], options: GenerateOptions) -> list[str]:
        images = self.images(batch)
        if len(prompts) != len(images):
            raise UsageError(f"{len(prompts)} prompts for {len(images)} images")
        rendered = [self.render(p, options.raw_prompts) for p in prompts]
        inputs = self.inputs(images, rendered, self.tokenizer.padding_side)
        return generate_text(self, inputs, options)

    # -- label scoring --------------------------------------------------------------------------------
    def score_labels(self, batch: Batch, prompt: str, labels: list[str]) -> torch.Tensor:
        if not self.decoder_only:
            raise UsageError(f"{self.spec.name}: label scoring needs a decoder-only language model")
        if any(not label.strip() for label in labels):
            raise UsageError("a label is empty")
        text = self.render(prompt or None)
        sep = "" if not text or text[-1].isspace() else " "
        texts = [text + sep + label for label in labels]
        targets = self.label_ids(text, texts)
        images = self.images(batch)
        scores = torch.empty(len(images), len(labels))
        with torch.inference_mode():
            for i, image in enumerate(images):
                for start in range(0, len(labels), LABEL_CHUNK):
                    stop = min(start + LABEL_CHUNK, len(labels))
                    chunk = targets[start:stop]
                    scores[i, start:stop] = self._mean_logprob(image, texts[start:stop], chunk)
        return scores

    def label_ids(self, text: str, texts: list[str]) -> list[list[int]]:
        """Each label's tokens: what ``text + sep + label`` adds after the prompt's own tokens.

        The prompt's tokens should be an exact prefix of the whole; where the tokenizer merges across
        the join, the label's tokens start where the two first differ.
        """
        prompt_ids = self.text_ids(text)
        out = []
        for whole in texts:
            full = self.text_ids(whole)
            same = 0
            while same < min(len(full), len(prompt_ids)) and full[same] == prompt_ids[same]:
                same += 1
            out.append(full[same:])
        return out

    def text_ids(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        special = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _mean_logprob(self, image: Image.Image, texts: list[str], targets: list[list[int]]) -> torch.Tensor:
        inputs = self.inputs([image] * len(texts), texts, "right")
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        lengths = mask.sum(1).tolist()
        for row, target in enumerate(targets):
            end = int(lengths[row])
            if ids[row, end - len(target) : end].tolist() != target:
                raise MmcliError(
                    f"{self.spec.name}: the processor tokenized a label differently from the tokenizer",
                    "report this model to mmcli's maintainers",
                )
        width = ids.shape[1]
        keep = max(width - int(end) + len(target) + 1 for end, target in zip(lengths, targets, strict=True))
        extra = {"logits_to_keep": keep} if self.keeps_logits else {}
        logits = self.model(**self.to_device(inputs), use_cache=False, **extra).logits
        offset = width - logits.shape[1]  # logits[:, j] predicts the token after position offset + j
        out = torch.empty(len(targets))
        for row, target in enumerate(targets):
            end = int(lengths[row])
            steps = logits[row, end - len(target) - 1 - offset : end - 1 - offset].float().log_softmax(-1)
            picked = steps.gather(-1, torch.tensor(target, device=steps.device).unsqueeze(-1))
            out[row] = picked.mean().cpu()
        return out
