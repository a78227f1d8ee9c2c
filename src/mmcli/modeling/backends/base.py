"""The Backend interface every model family implements, and the loading options they share."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from mmcli.errors import CapabilityError, ModelLoadError, explain_load_error
from mmcli.modeling.runtime import Runtime
from mmcli.modeling.spec import ModelSpec
from mmcli.modeling.tasks import GenerateOptions

Batch = dict[str, torch.Tensor]
__all__ = ["Backend", "Batch", "GenerateOptions", "LoadOptions"]


@dataclass(frozen=True)
class LoadOptions:
    allow_pickle: bool = False
    trust_remote_code: bool = False
    offline: bool = False
    device_map: str | None = None  # "auto": accelerate spreads the model over GPUs and CPU
    quantize: str | None = None  # "4bit" | "8bit" through bitsandbytes (CUDA only)

    @classmethod
    def of(cls, options: Any) -> LoadOptions:
        """The loading options of anything that carries them by these names (CommonOptions, a server's
        ModelKey)."""
        return cls(
            allow_pickle=options.allow_pickle,
            trust_remote_code=options.trust_remote_code,
            offline=options.offline,
            device_map=options.device_map,
            quantize=options.quantize,
        )


class Backend(ABC):
    """preprocess (CPU, thread-safe) -> forward (device, inference mode) -> results on the CPU."""

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: ModelSpec, runtime: Runtime, options: LoadOptions | None = None):
        self.spec = spec
        self.runtime = runtime
        self.options = options or LoadOptions()

    # -- loading helpers shared by the families -------------------------------------------------------
    def from_pretrained_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "revision": self.spec.revision,
            "trust_remote_code": self.options.trust_remote_code,
        }
        if self.options.offline:
            kwargs["local_files_only"] = True
        return kwargs

    def load(self, loader: Any, **extra: Any) -> Any:
        """Call ``loader.from_pretrained`` on the checkpoint, turning failures into one-line errors.

        A model whose checkpoint lacks some of its weights is refused (``check_weights``): transformers
        would fill the gaps with random numbers and only warn.
        """
        quiet_transformers()
        weights = is_model_loader(loader)
        kwargs = self.from_pretrained_kwargs() | extra | ({"output_loading_info": True} if weights else {})
        try:
            loaded = loader.from_pretrained(self.spec.checkpoint, **kwargs)
        except Exception as exc:
            raise explain_load_error(exc, self.spec.name) from exc
        if not weights:
            return loaded
        model, info = loaded
        check_weights(model, info, self.spec.name)
        return model

    def load_model(self, loader: Any, **extra: Any) -> Any:
        model = self.load(
            loader,
            dtype=self.runtime.dtype,
            use_safetensors=None if self.options.allow_pickle else True,
            **extra,
        )
        model.to(self.runtime.device)
        model.eval()
        return model

    # -- the interface ----------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> Batch:
        """Images -> model inputs on the CPU. Runs in worker threads: no device work here."""

    def encode_images(self, batch: Batch) -> torch.Tensor:
        raise CapabilityError(f"{self.spec.name} cannot embed images")

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise CapabilityError(f"{self.spec.name} cannot embed texts")

    def collate(self, batches: list[Batch]) -> Batch:
        """Join per-image preprocessed batches into one (override when shapes vary per image)."""
        return collate(batches)

    def default_prompt(self, task: str) -> str | None:
        """The family's configured prompt for ``task`` ("caption", "classify"); None: none."""
        return None

    def generate(self, batch: Batch, prompts: list[str | None], options: GenerateOptions) -> list[str]:
        """One text per image: the answer to its prompt (None: the family's plain caption prompt).

        Batched with left padding; only new tokens are decoded, special tokens and surrounding
        whitespace stripped.
        """
        raise CapabilityError(f"{self.spec.name} cannot generate text")

    def score_labels(self, batch: Batch, prompt: str, labels: list[str]) -> torch.Tensor:
        """(N, L) length-normalised log-likelihood of each label as the answer to ``prompt``."""
        raise CapabilityError(f"{self.spec.name} cannot score labels")


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers on mmcli's stderr."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()


def collate(batches: list[Batch]) -> Batch:
    """Concatenate per-image preprocessed batches along the first dimension."""
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def is_model_loader(loader: Any) -> bool:
    """A model class or an ``AutoModel...`` class (not a processor or tokenizer): its load reports weights."""
    from transformers import PreTrainedModel

    if not isinstance(loader, type):
        return False
    return issubclass(loader, PreTrainedModel) or getattr(loader, "_model_mapping", None) is not None


def check_weights(model: Any, info: dict[str, Any], name: str) -> None:
    """Refuse a model with weights missing from its checkpoint: transformers fills them with random numbers.

    ``info`` is ``from_pretrained(..., output_loading_info=True)``'s report, from which transformers has
    already removed tied weights, non-persistent buffers and the class's ``_keys_to_ignore_on_load_*``.
    Integer buffers (position and token-type ids, BatchNorm's batch count) are tables the model builds
    itself, so a checkpoint may lack them; float buffers (BatchNorm's running statistics) it may not.
    Checkpoint weights the model does not use are refused too when the checkpoint claims the model's own
    class; from another class's checkpoint (a detection or segmentation head around a CLIP) they are the
    parts the base model has no use for, and every weight it needs is there.
    """
    built = {key for key, buffer in model.named_buffers() if not buffer.is_floating_point()}
    missing = sorted(set(info.get("missing_keys") or ()) - built)
    unexpected = sorted(info.get("unexpected_keys") or ())
    cls = type(model).__name__
    held = (getattr(model.config, "architectures", None) or [None])[0]
    guess = f" (it holds a {held}?)" if held and held != cls else ""
    if missing:
        raise ModelLoadError(
            f"{name}: {len(missing)} weights of {cls} are missing from the checkpoint{guess}; "
            "mmcli will not run a half-initialised model",
            f"missing: {_some(missing)}",
        )
    if unexpected and not guess:
        raise ModelLoadError(
            f"{name}: {len(unexpected)} weights in the checkpoint are not used by {cls}; "
            "mmcli will not run a model that does not match its checkpoint",
            f"unused: {_some(unexpected)}",
        )


def _some(keys: list[str], shown: int = 3) -> str:
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
