"""What the generative families (BLIP-2, LLaVA, chat VLMs) share.

Loading (``--device-map``, 4/8-bit quantisation), prompts from ``configs/models.toml``, batched generation
with padding and attention masks, and label scoring from a prefix computed once per image.

A subclass says how a prompt becomes text (``render``), how the image enters the token sequence
(``sequence``) and, when the model is not a plain decoder-only VLM, how a prefix is run and continued
(``prefix_state``, ``label_logits``).

Label scores are the mean log-probability of the label's tokens, after the prompt, without an EOS: an
EOS would reward labels the model would stop after, which says more about answer length than content.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from mmcli.errors import DeviceError, UsageError
from mmcli.modeling.backends.base import Backend, Batch, GenerateOptions, LoadOptions
from mmcli.modeling.runtime import Runtime
from mmcli.modeling.spec import ModelSpec, family_entry, model_type_entry

LABEL_CHUNK = 32  # at most this many labels scored together from one image's prefix
CACHE_BUDGET = 1 << 30  # bytes of expanded KV cache one chunk of labels may take
QUANTIZE_KINDS = ("4bit", "8bit")


@dataclass
class Prefix:
    """One image + prompt, run once: the model's cache (or encoder states) and its attention mask."""

    state: Any
    mask: torch.Tensor
    last_logits: torch.Tensor | None = None  # decoder-only: the prediction of the first label token


class ConfiguredPrompts:
    """Prompts from ``configs/models.toml`` (``settings_for``), shared by the generative backends."""

    settings: dict[str, Any]

    def prompt_text(self, prompt: str | None, raw: bool = False) -> str:
        """The caption prompt, or ``prompt`` through the question template (from the config), or
        ``prompt`` as given when ``raw``."""
        if prompt is None:
            return str(self.settings.get("caption_prompt", ""))
        if raw:
            return prompt
        return str(self.settings.get("question_template", "{}")).format(prompt)

    def default_prompt(self, task: str) -> str | None:
        """``caption`` or ``classify``: the family's configured prompt (None: the image alone)."""
        return self.settings.get(f"{task}_prompt") or None


class GenerativeBackend(ConfiguredPrompts, Backend):
    capabilities: ClassVar[frozenset[str]] = frozenset({"generate", "score_text"})

    def __init__(self, spec: ModelSpec, runtime: Runtime, options: LoadOptions | None = None):
        super().__init__(spec, runtime, options)
        placement = model_placement(self.options, runtime)  # fails before anything downloads
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor: Any = self.load(AutoProcessor)
        self.tokenizer: Any = self.processor.tokenizer
        if placement:
            self.model: Any = self.load(AutoModelForImageTextToText, **self._weights_kwargs(), **placement)
            self.model.eval()
            self.device: torch.device = self.model.device
        else:
            self.model = self.load_model(AutoModelForImageTextToText)
            self.device = runtime.device
        config = self.model.config
        self.settings: dict[str, Any] = settings_for(spec, config.model_type)
        self.decoder_only = not config.is_encoder_decoder
        self.tokenizer.padding_side = "left" if self.decoder_only else "right"
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else self.tokenizer.eos_token_id)

    def _weights_kwargs(self) -> dict[str, Any]:
        return {
            "dtype": self.runtime.dtype,
            "use_safetensors": None if self.options.allow_pickle else True,
        }

    # -- what a family defines ------------------------------------------------------------------------
    def render(self, prompt: str | None, raw: bool = False) -> str:
        """The text the tokenizer sees for ``prompt`` (None: the caption prompt; ``raw``: no question
        template)."""
        raise NotImplementedError

    def sequence(self, batch: Batch, index: int, text_ids: list[int]) -> list[int]:
        """Token ids of image ``index`` followed or surrounded by its prompt's ``text_ids``."""
        raise NotImplementedError

    # -- generation -----------------------------------------------------------------------------------
    def generate(self, batch: Batch, prompts: list[str | None], options: GenerateOptions) -> list[str]:
        count = batch_size(batch)
        if len(prompts) != count:
            raise UsageError(f"{len(prompts)} prompts for {count} images")
        rendered = [self.render(p, options.raw_prompts) for p in prompts]
        rows = [self.sequence(batch, i, self.text_ids(text)) for i, text in enumerate(rendered)]
        inputs = self.model_inputs(batch, rows, 0, count)
        return generate_text(self, inputs, options)

    # -- label scoring --------------------------------------------------------------------------------
    def score_labels(self, batch: Batch, prompt: str, labels: list[str]) -> torch.Tensor:
        text = self.render(prompt or None)
        prompt_ids = self.text_ids(text)
        targets = self.label_ids(text, prompt_ids, labels)
        scores = torch.empty(batch_size(batch), len(labels))
        with torch.inference_mode():
            for i in range(scores.shape[0]):
                row = self.sequence(batch, i, prompt_ids)
                prefix = self.prefix_state(self.to_device(self.model_inputs(batch, [row], i, i + 1)))
                step = labels_per_chunk(prefix.state)
                for start in range(0, len(labels), step):
                    chunk = targets[start : start + step]
                    scores[i, start : start + len(chunk)] = self._mean_logprob(prefix, chunk)
        return scores

    def _mean_logprob(self, prefix: Prefix, targets: list[list[int]]) -> torch.Tensor:
        ids, mask = pad(targets, self.pad_id, "right")
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.label_logits(prefix, ids, mask).float()  # with --device-map: on the last GPU
        ids, weights = ids.to(logits.device), mask.to(logits.device, logits.dtype)
        logp = logits.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return ((logp * weights).sum(1) / weights.sum(1)).cpu()

    def label_ids(self, text: str, prompt_ids: list[int], labels: list[str]) -> list[list[int]]:
        """Each label's tokens as the answer after ``text`` (the decoder's own tokens for seq2seq).

        Decoder-only: ``text + " " + label`` is tokenized whole and the prompt's tokens must be its exact
        prefix (sentencepiece and BPE may merge across the join otherwise); if they are not, the label
        is tokenized on its own.
        """
        if any(not label.strip() for label in labels):
            raise UsageError("a label is empty")
        if not self.decoder_only:
            return [self.plain_ids(label) for label in labels]
        sep = "" if not text or text[-1].isspace() else " "
        out = []
        for label in labels:
            full = self.text_ids(text + sep + label)
            exact = full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids)
            out.append(full[len(prompt_ids) :] if exact else self.plain_ids(sep + label))
        return out

    def plain_ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix_state(self, inputs: Batch) -> Prefix:
        """Run image + prompt once, keeping the KV cache (decoder-only VLMs taking input_ids)."""
        out = self.model(**inputs, use_cache=True)
        return Prefix(out.past_key_values, inputs["attention_mask"], out.logits[:, -1])

    def label_logits(self, prefix: Prefix, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(C, T, V): logits[:, j] predicts ids[:, j], from the prefix's cache expanded over C labels."""
        count = ids.shape[0]
        cache = copy.deepcopy(prefix.state)
        cache.batch_repeat_interleave(count)
        full_mask = torch.cat([prefix.mask.expand(count, -1), mask], dim=1)
        model = self.continue_model()
        out = model(input_ids=ids, attention_mask=full_mask, **{cache_keyword(model): cache})
        assert prefix.last_logits is not None
        first = prefix.last_logits.unsqueeze(1).expand(count, 1, -1)
        return torch.cat([first, out.logits[:, :-1]], dim=1)

    def continue_model(self) -> Any:
        """The module that continues a cached prefix from text tokens alone."""
        return self.model

    # -- shared helpers -------------------------------------------------------------------------------
    def text_ids(self, text: str) -> list[int]:
        """Token ids of ``text``; BOS added unless the text (say a chat template's output) has one."""
        bos = self.tokenizer.bos_token
        special = not (bos and text.startswith(bos))
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def model_inputs(self, batch: Batch, rows: list[list[int]], start: int, stop: int) -> Batch:
        ids, mask = pad(rows, self.pad_id, self.tokenizer.padding_side)
        inputs = {k: v[start:stop] for k, v in batch.items() if k != "image_tokens"}
        return inputs | {"input_ids": ids, "attention_mask": mask}

    def to_device(self, inputs: Batch) -> Batch:
        dtype = self.runtime.dtype
        return {
            k: v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in inputs.items()
        }


# -- module helpers -----------------------------------------------------------------------------------
def generate_text(backend: Any, inputs: dict[str, Any], options: GenerateOptions) -> list[str]:
    """``model.generate`` on model inputs (moved to the device), only the new tokens decoded and stripped:
    the last step of this module's families (backends/generic.py decodes as the pipeline does)."""
    with torch.inference_mode(), seeded(options.seed, backend.device):
        out = backend.model.generate(**backend.to_device(inputs), **generate_kwargs(options, backend.pad_id))
    new = out[:, inputs["input_ids"].shape[1] :] if backend.decoder_only else out
    texts = backend.tokenizer.batch_decode(new.cpu(), skip_special_tokens=True)
    return [text.strip() for text in texts]


def generate_kwargs(options: GenerateOptions, pad_id: int) -> dict[str, Any]:
    """``model.generate`` keyword arguments for mmcli's decoding options (shared by the generative families)."""
    kwargs: dict[str, Any] = {
        "max_new_tokens": options.max_new_tokens,
        "num_beams": options.num_beams,
        "do_sample": options.do_sample,
        "num_return_sequences": 1,
        "pad_token_id": pad_id,
    }
    if options.do_sample:
        kwargs |= {"temperature": options.temperature, "top_p": options.top_p}
    return kwargs


def settings_for(spec: ModelSpec, model_type: str | None, plain: bool = False) -> dict[str, Any]:
    """Prompts and switches: the family's, then (``plain``: a prompt that reaches the processor as the
    model's own text, no chat template) the family's [plain] table, then the model type's, then the
    alias's own (last wins)."""
    family = dict(family_entry(spec.family))
    plain_table = family.pop("plain", {})
    if plain:
        family |= plain_table
    return family | model_type_entry(spec.model_type or model_type) | spec.options


def model_placement(options: LoadOptions, runtime: Runtime) -> dict[str, Any]:
    """from_pretrained kwargs for --device-map and --quantize; empty: load, then move to the device."""
    extra: dict[str, Any] = {}
    if options.quantize:
        extra["quantization_config"] = quantization_config(options.quantize, runtime)
        extra["device_map"] = {"": runtime.device.index or 0}  # bitsandbytes weights cannot move later
    if options.device_map:
        extra["device_map"] = options.device_map
    return extra


def quantization_config(kind: str, runtime: Runtime) -> Any:
    if kind not in QUANTIZE_KINDS:
        raise UsageError(f"--quantize {kind!r} is not one of {', '.join(QUANTIZE_KINDS)}")
    if runtime.device.type != "cuda":
        raise DeviceError(
            f"--quantize {kind} needs a CUDA device (bitsandbytes), not {runtime.device}",
            "run with --device cuda, or drop --quantize",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"--quantize {kind} needs the bitsandbytes package", "pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=runtime.dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Sampling reproducible for a seed, without touching the caller's random state."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def cache_keyword(model: Any) -> str:
    """The forward keyword of a KV cache: ``cache`` (transformers >= 5.24), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def labels_per_chunk(state: Any) -> int:
    """Labels per chunk: LABEL_CHUNK, fewer when copies of a long prefix's KV cache would not fit.

    (LLaVA-1.5-7B in fp16 keeps ~0.5 MB per token: 300 MB for a 600-token prefix, 3 labels per GiB.)
    """
    layers = getattr(state, "layers", [])
    tensors = [getattr(layer, name, None) for layer in layers for name in ("keys", "values")]
    size = sum(t.nelement() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return max(1, min(LABEL_CHUNK, CACHE_BUDGET // max(size, 1)))


def batch_size(batch: Batch) -> int:
    return int(batch["pixel_values"].shape[0])


def pad(rows: Sequence[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) of token rows padded to one width on ``side``."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[r, span] = torch.tensor(row, dtype=torch.long)
        mask[r, span] = 1
    return ids, mask


def collate_padded(batches: list[Batch]) -> Batch:
    """Concatenate per-image batches, padding every dimension after the first to the largest.

    Patch tensors pad with zeros (the model crops them by ``image_sizes``); ``image_tokens`` with -1.
    """
    out: Batch = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        shape = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        fill = -1 if key == "image_tokens" else 0
        out[key] = torch.cat([_pad_to(p, shape, fill) for p in parts])
    return out


def _pad_to(tensor: torch.Tensor, shape: list[int], fill: int) -> torch.Tensor:
    if list(tensor.shape[1:]) == shape:
        return tensor
    padded = tensor.new_full((tensor.shape[0], *shape), fill)
    padded[(slice(None), *(slice(0, s) for s in tensor.shape[1:]))] = tensor
    return padded
