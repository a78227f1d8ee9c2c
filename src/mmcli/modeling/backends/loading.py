"""Loading what the generic image-text-to-text backend runs: the processor (without its video part when
that part cannot load) and the model class (transformers' own, or a checkpoint's remote code).

transformers builds the processors of video-capable models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL,
LLaVA-OneVision, SmolVLM, ...) with a video processor, and every video processor needs torchvision. mmcli
feeds images only, so when ``AutoProcessor`` fails the processor is built again from its other parts (the
image processor, the tokenizer, ...) with a stand-in in the video slot that carries the saved video settings
and refuses videos. Installing torchvision is never the answer mmcli gives: from the package index it
replaces the CPU build of torch with another.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from mmcli.errors import ModelLoadError, explain_load_error

REMOTE_CLASSES = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")


class NoVideo(dict[str, Any]):
    """Stands in for a video processor that cannot load: its saved settings, readable as attributes (a
    processor reads some while handling images), and no videos. A dict, so the processor still prints."""

    model_input_names: ClassVar[list[str]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelLoadError("this processor's video part did not load (it needs torchvision): images only")


def load_processor(backend: Any) -> Any:
    """``AutoProcessor`` on the checkpoint; when that fails, the processor rebuilt without its video part."""
    from transformers import AutoProcessor

    from mmcli.modeling.backends.base import quiet_transformers

    quiet_transformers()
    kwargs = backend.from_pretrained_kwargs()
    checkpoint = backend.spec.checkpoint
    try:
        return AutoProcessor.from_pretrained(checkpoint, **kwargs)
    except Exception as exc:
        cls = processor_class(checkpoint, kwargs)
        if cls is None or not video_attributes(cls):
            raise explain_load_error(exc, backend.spec.name) from exc
        try:
            return without_video(cls, checkpoint, kwargs)
        except Exception:
            raise explain_load_error(exc, backend.spec.name) from exc


SAVED_PROCESSOR = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer_config.json",
)


def processor_class(checkpoint: str, kwargs: dict[str, Any]) -> Any:
    """The processor class the checkpoint names (as AutoProcessor reads it), else the one transformers maps
    its model type to."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    for filename in SAVED_PROCESSOR:
        name = saved_json(checkpoint, filename, kwargs).get("processor_class")
        if isinstance(name, str) and isinstance(getattr(transformers, name, None), type):
            return getattr(transformers, name)
    try:
        config = AutoConfig.from_pretrained(checkpoint, **kwargs)
    except Exception:
        return None
    return PROCESSOR_MAPPING.get(type(config), None)


def saved_json(checkpoint: str, filename: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One JSON file of the checkpoint (local or in the hub cache), or {} when it has none."""
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in ("revision", "local_files_only") if k in kwargs}
    try:
        path = cached_file(checkpoint, filename, **hub, _raise_exceptions_for_missing_entries=False)
        data = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def video_attributes(cls: Any) -> list[str]:
    return [name for name in cls.get_attributes() if "video" in name]


def without_video(cls: Any, checkpoint: str, kwargs: dict[str, Any]) -> Any:
    """``cls`` built as ``from_pretrained`` builds it, each video part replaced by a :class:`NoVideo`."""
    attributes = cls.get_attributes()
    kept = [name for name in attributes if "video" not in name]
    loader: Any = type(cls.__name__, (cls,), {"get_attributes": classmethod(lambda _: list(kept))})
    processor_dict, instance_kwargs = cls.get_processor_dict(checkpoint, **kwargs)
    parts = dict(
        zip(kept, loader._get_arguments_from_pretrained(checkpoint, processor_dict, **kwargs), strict=True)
    )
    settings = video_settings(checkpoint, processor_dict, kwargs)
    for name in attributes:
        parts.setdefault(name, NoVideo(settings))

    def check_argument_for_proper_class(self: Any, name: str, argument: Any) -> Any:
        if isinstance(argument, NoVideo):
            return NoVideo
        return cls.check_argument_for_proper_class(self, name, argument)

    built: Any = type(
        cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class}
    )
    with video_words_stand_in(cls):
        return built.from_args_and_dict(
            [parts[name] for name in attributes], processor_dict, **instance_kwargs
        )


def video_settings(checkpoint: str, processor_dict: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The saved video processor settings: in ``processor_config.json`` (transformers 5) or in
    ``video_preprocessor_config.json`` (the hub's older layout)."""
    saved = processor_dict.get("video_processor")
    if isinstance(saved, dict):
        return saved
    return saved_json(checkpoint, "video_preprocessor_config.json", kwargs)


@contextmanager
def video_words_stand_in(cls: Any) -> Iterator[None]:
    """SmolVLM's processor refuses to build without the ``num2words`` package, which it uses only to word
    the frame counts of videos: without a video part, stand in for it while the processor is built."""
    module: Any = sys.modules.get(cls.__module__)
    missing = module is not None and getattr(module, "num2words", False) is None
    if missing:
        module.num2words = _no_num2words
    try:
        yield
    finally:
        if missing:
            module.num2words = None


def _no_num2words(number: Any, **kwargs: Any) -> str:
    raise ModelLoadError("videos need the num2words package; mmcli feeds this model images only")


def model_loader(config: Any, name: str) -> Any:
    """The auto class that loads ``config``'s model for generation: transformers' image-text-to-text one, or
    the class a remote-code checkpoint's ``auto_map`` names (image-text-to-text, else causal LM)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return transformers.AutoModelForImageTextToText
    auto_map = getattr(config, "auto_map", None) or {}
    for loader in REMOTE_CLASSES:
        if loader in auto_map and hasattr(transformers, loader):
            return getattr(transformers, loader)
    raise ModelLoadError(
        f"{name} ({config.model_type}) needs its own code that mmcli cannot drive: it loads as neither "
        "AutoModelForImageTextToText nor AutoModelForCausalLM",
        "run it with the code its authors publish",
    )


def cannot_drive(name: str, what: str) -> ModelLoadError:
    """A checkpoint whose own code loaded but does not follow transformers' processor interfaces."""
    return ModelLoadError(
        f"{name} needs its own code that mmcli cannot drive: {what}",
        "mmcli runs models whose processor takes images and text together (transformers' interface)",
    )
