"""Resolve a model name (alias | hub id | local directory) to a ModelSpec, and create its backend lazily.

Everything model-specific is data in ``configs/models.toml``; nothing here branches on a model's name. A
checkpoint whose model type has no line there runs on what transformers knows about it (``family_of``).
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mmcli.errors import CapabilityError, ModelLoadError, UnknownModelError, UsageError, explain_load_error
from mmcli.modeling.spec import ModelSpec, configs_dir, family_entry, model_type_entry, models_table
from mmcli.modeling.spec import load_config as load_config  # registry.load_config, as before

if TYPE_CHECKING:
    from mmcli.modeling.backends.base import Backend, LoadOptions
    from mmcli.modeling.runtime import Runtime


def aliases() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = models_table().get("models", {})
    return table


def default_model(task: str) -> str:
    """The model a task uses without --model: the user config's [models] entry, else configs/models.toml's."""
    from mmcli import userconfig

    name: str = userconfig.default_model(task) or models_table().get("defaults", {}).get(task, "")
    if not name:
        raise UsageError(f"no default model for {task!r}; pass --model")
    return name


def family_of(config: dict[str, Any], where: str) -> str:
    """The family that runs a checkpoint, from its ``config.json``.

    configs/models.toml's [model_types] first (families with their own fast path: BLIP-2, LLaVA); else what
    transformers knows: a model it maps to image-text-to-text runs on the generic ``vlm`` backend, one whose
    model class has both ``get_image_features`` and ``get_text_features`` on the contrastive ``clip`` one.
    The checkpoint's ``architectures`` decide before its model type (a BLIP checkpoint may be a captioner or
    a retrieval model). An unknown model type whose ``auto_map`` names a generative class runs its own code.
    """
    model_type = config.get("model_type")
    entry = model_type_entry(model_type)
    if "family" in entry:
        family: str = entry["family"]
        return family
    found = _family_from_transformers(config)
    if found:
        return found
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict) and auto_map:
        if any(name in auto_map for name in REMOTE_GENERATIVE):
            return "vlm"
        raise UsageError(
            f"{where}: the model type {model_type!r} runs only on its own code ({', '.join(sorted(auto_map))}), "
            "which mmcli cannot drive",
            "mmcli runs remote code that loads as AutoModelForImageTextToText or AutoModelForCausalLM",
        )
    raise UsageError(
        f"{where}: mmcli does not know the model type {model_type!r}: transformers maps it neither to "
        "image-text-to-text nor to a model with image and text features",
        "supported model types: those the installed transformers runs as image-text-to-text or as contrastive "
        f"image-text models; with their own backend: {', '.join(sorted(_configured()))}",
    )


REMOTE_GENERATIVE = ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM")


def _configured() -> list[str]:
    table: dict[str, Any] = models_table().get("model_types", {})
    return [name for name, entry in table.items() if "family" in entry]


def _family_from_transformers(config: dict[str, Any]) -> str | None:
    """``vlm`` or ``clip`` from transformers' auto mappings (imported here only: a fallback that loads torch)."""
    usable_torchvision()
    import transformers
    from transformers.models.auto import modeling_auto

    generative = dict(modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    generative.update(getattr(modeling_auto, "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES", {}))
    classes = {name for value in generative.values() for name in _names(value)}

    def contrastive(name: str) -> bool:
        cls = getattr(transformers, name, None)
        return hasattr(cls, "get_image_features") and hasattr(cls, "get_text_features")

    architectures = config.get("architectures")
    for arch in architectures if isinstance(architectures, list) else []:
        if arch in classes:
            return "vlm"
        if isinstance(arch, str) and contrastive(arch):
            return "clip"
    model_type = config.get("model_type")
    if model_type in generative:
        return "vlm"
    base = modeling_auto.MODEL_MAPPING_NAMES.get(model_type or "")
    if base is not None and any(contrastive(name) for name in _names(base)):
        return "clip"
    return None


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [name for name in value if isinstance(name, str)]


def usable_torchvision() -> None:
    """Make transformers see no torchvision when it is installed but does not import (a build for another
    torch): transformers would otherwise try it and fail on every model. Call before transformers loads."""
    import importlib.util

    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        importlib.import_module("torchvision")
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]  # find_spec now says: not installed
        if "transformers" in sys.modules:
            from transformers.utils import import_utils

            for check in ("is_torchvision_available", "is_torchvision_v2_available"):
                getattr(getattr(import_utils, check, None), "cache_clear", lambda: None)()


def hub_offline(force: bool = False) -> bool:
    """Decide once whether the hub is used. Returns True when only the local cache will be read.

    ``force`` is --offline. When the hub's host cannot be reached at all, switch to the cache at once
    instead of letting each file request retry for half a minute.
    """
    from huggingface_hub import constants

    if force:
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
    if constants.HF_HUB_OFFLINE:
        return True
    if not _hub_reachable(constants.ENDPOINT):
        constants.HF_HUB_OFFLINE = True
        return True
    return False


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let huggingface_hub go through it
    url = urlsplit(endpoint)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout):
            return True
    except OSError:
        return False


def _read_hub_config(repo_id: str, revision: str | None) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception as exc:
        raise explain_load_error(exc, repo_id) from exc
    return read_config_json(Path(path))


def read_config_json(path: Path) -> dict[str, Any]:
    """A checkpoint's ``config.json``: a JSON object in UTF-8, else a one-line load error naming the file."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ModelLoadError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object ({{...}}) of settings")
    model_type = data.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ModelLoadError(f"{path}: model_type is not a string: {json.dumps(model_type)}")
    return data


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def local_checkpoint(name: str) -> Path | None:
    """``name`` as a saved model's directory; None when no such path exists (an alias or a hub id, then).
    A file, or a directory without config.json, is a UsageError: it is never looked up on the hub."""
    path = Path(name).expanduser()
    if not path.exists():
        return None
    if not path.is_dir():
        raise UsageError(
            f"{name} is a file, not a model",
            "--model takes an alias (mmcli models), a hub id (org/name) or a directory saved with save_pretrained",
        )
    if not (path / "config.json").is_file():
        raise UsageError(f"{name} is a directory but holds no config.json (not a saved model)")
    return path


def resolve(name: str, revision: str | None = None) -> ModelSpec:
    """Turn ``--model NAME`` into a ModelSpec. Raises UnknownModelError listing what is valid."""
    table = aliases()
    if name in table:
        entry = dict(table[name])
        checkpoint = str(entry.pop("checkpoint"))
        local = Path(checkpoint)
        bundled = configs_dir().parent / checkpoint  # models/shapes-clip: beside configs/, from any directory
        if not local.is_absolute() and (bundled.is_dir() or not _looks_like_hub_id(checkpoint)):
            checkpoint = str(bundled.resolve())
        return ModelSpec(
            name=name,
            family=str(entry.pop("family")),
            checkpoint=checkpoint,
            revision=revision or entry.pop("revision", None),
            dtype=str(entry.pop("dtype", "auto")),
            template=entry.pop("template", None),
            model_type=entry.pop("model_type", None),
            options=entry,
        )
    path = local_checkpoint(name)
    if path is not None:
        config = read_config_json(path / "config.json")
        model_type = config.get("model_type")
        return ModelSpec(
            name=name,
            family=family_of(config, name),
            checkpoint=str(path),
            revision=None,
            model_type=model_type,
        )
    if _looks_like_hub_id(name):
        hub_offline()
        config = _read_hub_config(name, revision)
        model_type = config.get("model_type")
        return ModelSpec(
            name=name,
            family=family_of(config, name),
            checkpoint=name,
            revision=revision,
            model_type=model_type,
        )
    raise UnknownModelError(
        f"unknown model {name!r}",
        f"aliases: {', '.join(sorted(table))}; a hub id (org/name) or a local directory works too",
    )


def require(spec: ModelSpec, needed: set[str], task: str) -> None:
    """Fail before any weights load when the model cannot do ``task``."""
    missing = needed - spec.capabilities
    if missing:
        able = [a for a, e in aliases().items() if needed <= set(family_entry(e["family"])["capabilities"])]
        raise CapabilityError(
            f"{spec.name} ({spec.family}) cannot {task}: it lacks {', '.join(sorted(missing))}",
            f"models that can: {', '.join(sorted(able)) or 'none'}",
        )


def create_backend(spec: ModelSpec, runtime: Runtime, options: LoadOptions) -> Backend:
    """Import the family's backend module (torch, transformers) and load the weights."""
    target = family_entry(spec.family)["backend"]
    usable_torchvision()
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(spec, runtime, options)
    return backend
