"""Any image-text-to-text checkpoint transformers knows, or whose own code follows its interfaces.

Nothing here knows how a family lays out its image: the checkpoint's own processor turns images and
prompts into model inputs, in one call per batch, exactly as ``pipeline("image-text-to-text")`` does. So
flattened patches with ``image_grid_thw`` (Qwen2-VL), image tiles with ``pixel_attention_mask``
(Idefics3), a Q-Former's query tokens (InstructBLIP), a prefix the model attends to both ways (PaliGemma)
or an encoder-decoder (Florence-2) all work alike.

How a prompt reaches the processor is read from the processor: with a chat template, a user turn
``[image, text]`` rendered with the generation prompt; without one (InstructBLIP, PaliGemma, Florence-2,
Kosmos-2, IDEFICS, BLIP, GIT, ...) the text itself beside the image, as the pipeline passes it, the
processor placing the image tokens (IDEFICS: the image before the text). Prompts for those come from the
family's [plain] table in configs/models.toml and the model type's own lines (PaliGemma's "caption en").
``prompt_format`` in the config (with ``{image}``) still overrides both.

``preprocess`` only decodes: a batch carries the images themselves (``{"images": [PIL images]}``) and
``collate`` joins those lists. Answers and label scores come from the model's ``generate``
(backends/generation.py). Trade-offs against the family-specific backends: the image processor runs in
the forward thread, not in the loader's worker threads, and label scoring runs the prompt once per label
rather than reusing a cached prefix.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, cast

import torch
from PIL import Image

from mmcli.errors import ModelLoadError, UsageError, first_sentence
from mmcli.modeling.backends.base import Backend, Batch, GenerateOptions, LoadOptions
from mmcli.modeling.backends.generation import (
    decode_answers,
    forced_mean_logprob,
    label_tokens,
    prompt_context,
)
from mmcli.modeling.backends.loading import cannot_drive, load_processor, model_loader
from mmcli.modeling.backends.vlm import (
    LABEL_CHUNK,
    ConfiguredPrompts,
    generate_kwargs,
    model_placement,
    seeded,
    settings_for,
)
from mmcli.modeling.runtime import Runtime
from mmcli.modeling.spec import ModelSpec


def encoder_decoder(config: Any) -> bool:
    """The model's, or its language model's (InstructBLIP with Flan-T5 says so only there)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(config, "is_encoder_decoder", False) or getattr(text, "is_encoder_decoder", False))


def accepted_inputs(model: Any) -> frozenset[str]:
    """What ``generate`` passes on to a decoder-only model: named inputs of its ``generate`` (BLIP's and
    InstructBLIP's take the image inputs themselves), ``prepare_inputs_for_generation`` and ``forward``."""
    names: set[str] = set()
    for method in (model.generate, model.prepare_inputs_for_generation, model.forward):
        names |= set(inspect.signature(method).parameters)
    return frozenset(names)


class GenericVlmBackend(ConfiguredPrompts, Backend):
    capabilities: ClassVar[frozenset[str]] = frozenset({"generate", "score_text"})

    def __init__(self, spec: ModelSpec, runtime: Runtime, options: LoadOptions | None = None):
        super().__init__(spec, runtime, options)
        placement = model_placement(self.options, runtime)  # fails before anything downloads
        from transformers import AutoConfig

        config = self.load(AutoConfig)
        loader = model_loader(config, spec.name)
        self.remote = not type(config).__module__.startswith("transformers.")  # the checkpoint's own code
        self.processor: Any = self._processor()
        self.tokenizer: Any = self._tokenizer()
        self.model: Any = self._model(loader, placement)
        self._prompt_settings(config.model_type)
        self.decoder_only = not encoder_decoder(self.model.config)
        self.tokenizer.padding_side = "left" if self.decoder_only else "right"
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else self.tokenizer.eos_token_id)
        self.accepted = accepted_inputs(self.model) if self.decoder_only else None
        if self.model.generation_config.pad_token_id is None:  # set here: some generate()s pass their own
            self.model.generation_config.pad_token_id = self.pad_id

    def _processor(self) -> Any:
        try:
            return load_processor(self)
        except ModelLoadError as exc:
            if not self.remote or exc.__cause__ is None:
                raise
            why = first_sentence(str(exc.__cause__))
            raise cannot_drive(self.spec.name, f"its processor does not load ({why})") from exc

    def _model(self, loader: Any, placement: dict[str, Any]) -> Any:
        if not placement:
            self.device: torch.device = self.runtime.device
            return self.load_model(loader)
        model = self.load(
            loader,
            dtype=self.runtime.dtype,
            use_safetensors=None if self.options.allow_pickle else True,
            **placement,
        )
        model.eval()
        self.device = model.device
        return model

    def _tokenizer(self) -> Any:
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None and hasattr(self.processor, "image_processor"):
            return tokenizer
        what = (
            f"AutoProcessor loaded only a {type(self.processor).__name__}, not a processor of images and text"
        )
        if self.remote:
            raise cannot_drive(self.spec.name, what)
        raise UsageError(
            f"{self.spec.name}: {what}", "the checkpoint's processor files may be missing or incomplete"
        )

    def _prompt_settings(self, model_type: str) -> None:
        """Chat template, ``prompt_format`` or the model's own text (``plain``), and the prompts that go with it."""
        base = settings_for(self.spec, model_type)
        has_template = bool(getattr(self.processor, "chat_template", None))
        self.chat = bool(base.get("chat", has_template))
        if self.chat and not has_template:
            raise UsageError(
                f"{self.spec.name}: its processor has no chat template",
                "set chat = false for it in configs/models.toml (and a prompt_format, or none: the text as is)",
            )
        format_ = base.get("prompt_format")
        self.prompt_format: str | None = None if self.chat or format_ is None else str(format_)
        self.plain = not self.chat and self.prompt_format is None
        self.settings: dict[str, Any] = settings_for(self.spec, model_type, plain=self.plain)

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
    def render(self, prompt: str | None, raw: bool = False) -> str:
        """The text the processor sees (see the module docstring)."""
        text = self.prompt_text(prompt, raw)
        if self.prompt_format is not None:
            image_token = getattr(self.processor, "image_token", "<image>")
            return self.prompt_format.format(image=image_token, prompt=text)
        if self.plain:
            return text
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        rendered: str = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return rendered

    def inputs(self, images: list[Image.Image], texts: list[str], side: str) -> dict[str, Any]:
        """One processor call: image i goes with text i; rows padded on ``side``."""
        if self.plain:  # as the pipeline passes them: the processor adds image and special tokens
            out = self.processor(
                images=images, text=texts, padding=True, padding_side=side, return_tensors="pt"
            )
            return self.checked(dict(out), len(images))
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
        return self.checked(dict(out), len(images))

    def checked(self, inputs: dict[str, Any], images: int) -> dict[str, Any]:
        """One row per image; an empty prompt whose tokenizer adds no start token leaves no text at all, and
        the model's own ``generate`` starts from its start token (as with images alone)."""
        ids = inputs.get("input_ids")
        if not isinstance(ids, torch.Tensor):
            return inputs
        if ids.shape[0] != images:
            raise UsageError(
                f"{self.spec.name}: its processor makes {ids.shape[0]} prompts for {images} images "
                "(a policy classifier?); mmcli runs one prompt per image"
            )
        if ids.shape[1] == 0:
            return {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        return inputs

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The inputs the model takes (GIT's processor adds token_type_ids it does not), on its device."""
        dtype = self.runtime.dtype
        moved: dict[str, Any] = {}
        for key, value in inputs.items():
            if self.accepted is not None and key not in self.accepted:
                continue
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
        with torch.inference_mode(), seeded(options.seed, self.device):
            kwargs = generate_kwargs(options, self.pad_id)
            del kwargs["pad_token_id"]  # in the generation config
            out = self.model.generate(**self.to_device(inputs), **kwargs)
        return decode_answers(self.processor, self.tokenizer, out, self.prompt_ids(inputs))

    def prompt_ids(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """The tokens an answer follows: the input's (decoder-only), the decoder prompt's, or none."""
        found = inputs.get("input_ids" if self.decoder_only else "decoder_input_ids")
        return found if isinstance(found, torch.Tensor) else None

    # -- label scoring --------------------------------------------------------------------------------
    def score_labels(self, batch: Batch, prompt: str, labels: list[str]) -> torch.Tensor:
        """(N, L) mean log-probability of each label as the answer ``generate`` would write to ``prompt``.

        One image at a time, at most ``LABEL_CHUNK`` labels per ``generate``, each label a row of the same
        image and prompt (no padding: scores do not depend on the batch size).
        """
        if any(not label.strip() for label in labels):
            raise UsageError("a label is empty")
        text = self.render(prompt or None)
        images = self.images(batch)
        scores = torch.empty(len(images), len(labels))
        targets: list[list[int]] = []
        with torch.inference_mode():
            for i, image in enumerate(images):
                for start in range(0, len(labels), LABEL_CHUNK):
                    stop = min(start + LABEL_CHUNK, len(labels))
                    inputs = self.inputs(
                        [image] * (stop - start), [text] * (stop - start), self.tokenizer.padding_side
                    )
                    targets = targets or self.label_targets(inputs, labels)
                    prefix = self.answer_prefix(inputs)
                    chunk = targets[start:stop]
                    scores[i, start:stop] = forced_mean_logprob(
                        self.model, self.to_device(inputs), prefix, chunk
                    )
        return scores

    def label_targets(self, inputs: dict[str, Any], labels: list[str]) -> list[list[int]]:
        """Each label's tokens after the end of the prompt (nothing, at an encoder-decoder's decoder start)."""
        ids = self.prompt_ids(inputs)
        mask = inputs.get("attention_mask" if self.decoder_only else "decoder_attention_mask")
        row_mask = (
            mask[0]
            if isinstance(mask, torch.Tensor) and ids is not None and mask.shape == ids.shape
            else None
        )
        context = prompt_context(self.tokenizer, None if ids is None else ids[0], row_mask)
        return [label_tokens(self.tokenizer, context, label) for label in labels]

    def answer_prefix(self, inputs: dict[str, Any]) -> list[int]:
        """Tokens generation writes before an answer: an encoder-decoder's forced BOS (BART, Florence-2)."""
        if self.decoder_only or self.prompt_ids(inputs) is not None:
            return []
        forced = getattr(self.model.generation_config, "forced_bos_token_id", None)
        return [] if forced is None else [int(forced)]
