"""Resolve a model name (alias | hub id | local directory) to a ModelSpec, and create its backend lazily.

Everything model-specific is data in ``configs/models.toml``; nothing here branches on a model's name.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mmcli.errors import CapabilityError, ModelLoadError, UnknownModelError, UsageError, explain_load_error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from mmcli.backends.base import Backend, LoadOptions
    from mmcli.runtime import Runtime


def configs_dir() -> Path:
    """``configs/`` of a source checkout, or the copy packed into the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent.parent / "configs"):
        if (candidate / "models.toml").is_file():
            return candidate
    raise UsageError(f"mmcli's configs/ directory is missing (looked beside {here})")


@cache
def load_config(name: str) -> dict[str, Any]:
    with open(configs_dir() / name, "rb") as f:
        return tomllib.load(f)


def models_table() -> dict[str, Any]:
    return load_config("models.toml")


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of mmcli knows about a model before any weights load."""

    name: str  # what the user asked for
    family: str
    checkpoint: str  # hub id or local directory
    revision: str | None = None
    dtype: str = "auto"
    template: str | None = None
    model_type: str | None = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_local(self) -> bool:
        return Path(self.checkpoint).is_dir()

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(family_entry(self.family).get("capabilities", []))

    @property
    def label(self) -> str:
        """The model as named in records: the checkpoint, with its revision when one was pinned."""
        if self.revision and self.revision != "main":
            return f"{self.checkpoint}@{self.revision}"
        return self.checkpoint


def family_entry(family: str) -> dict[str, Any]:
    families = models_table().get("families", {})
    if family not in families:
        raise UsageError(f"unknown model family {family!r}; known: {', '.join(sorted(families))}")
    entry: dict[str, Any] = families[family]
    return entry


def model_type_entry(model_type: str | None) -> dict[str, Any]:
    """Scoring and tokenizer settings for a checkpoint's ``config.json`` model_type."""
    entry: dict[str, Any] = models_table().get("model_types", {}).get(model_type or "", {})
    return entry


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


def _family_of_model_type(model_type: str | None, where: str) -> str:
    entry = model_type_entry(model_type)
    if "family" not in entry:
        known = ", ".join(sorted(models_table().get("model_types", {})))
        raise UsageError(
            f"{where}: mmcli does not know the model type {model_type!r}",
            f"supported model types: {known}",
        )
    family: str = entry["family"]
    return family


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
    path = Path(name).expanduser()
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UsageError(f"{name} is a directory but holds no config.json (not a saved model)")
        config = read_config_json(config_file)
        model_type = config.get("model_type")
        return ModelSpec(
            name=name,
            family=_family_of_model_type(model_type, name),
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
            family=_family_of_model_type(model_type, name),
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
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(spec, runtime, options)
    return backend
