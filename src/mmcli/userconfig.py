"""The user config file: defaults for the common options and a default model per task.

It lives at ``mmcli.paths.config_file()`` ($MMCLI_CONFIG, else ~/.config/mmcli/config.toml)::

    [defaults]
    device = "cuda"
    dtype = "fp16"
    batch_size = 32
    format = "jsonl"

    [models]
    classify = "clip-vit-l14"

Options given on the command line win; an option left at its default takes the file's value. Every key
is checked when the file is read, so a typo is an error naming the file and the key, never ignored.
This module is light (no torch): commands read it before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcli import paths
from mmcli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASKS = ("classify", "caption", "vqa", "embed", "compare")
DTYPES = ("auto", "fp32", "fp16", "bf16")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "an integer"
    return None if value >= 1 else "an integer >= 1"


def _non_negative_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "an integer"
    return None if value >= 0 else "an integer >= 0"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty string"


def _device(value: Any) -> str | None:
    if not isinstance(value, str) or not _DEVICE.match(value.strip().lower()):
        return "one of auto, cpu, cuda, cuda:N, mps"
    return None


def _dtype(value: Any) -> str | None:
    if not isinstance(value, str) or value.strip().lower() not in DTYPES:
        return f"one of {', '.join(DTYPES)}"
    return None


def _format(value: Any) -> str | None:
    from mmcli.sinks.output import FORMATS

    if not isinstance(value, str) or value.strip().lower() not in FORMATS:
        return f"one of {', '.join(FORMATS)}"
    return None


# [defaults] key -> the check its value must pass (the same rules the command line applies).
DEFAULT_KEYS: dict[str, Callable[[Any], str | None]] = {
    "device": _device,
    "dtype": _dtype,
    "batch_size": _positive_int,
    "format": _format,
    "workers": _non_negative_int,  # 0: decode in the main thread (as --workers 0)
    "cache_dir": _string,
    "no_cache": _boolean,
    "max_errors": _positive_int,
    "quiet": _boolean,
    "offline": _boolean,
    "server": _boolean,  # false: never use a running mmcli serve (as --no-server)
}


@dataclass(frozen=True)
class UserConfig:
    """The file's values, checked. ``exists`` is False when there is no file (all empty then)."""

    path: Path
    exists: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)


def load(path: Path | None = None) -> UserConfig:
    """Read and check the config file. No file at the usual place is an empty config; a file that
    $MMCLI_CONFIG names must exist. Raises UsageError naming the file (and the line or key)."""
    explicit = path is not None or bool(os.environ.get("MMCLI_CONFIG"))
    path = path if path is not None else paths.config_file()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise UsageError(
                f"config file {path} does not exist", "MMCLI_CONFIG names it; unset it or create the file"
            ) from None
        return UserConfig(path)
    except OSError as exc:
        raise UsageError(f"config file {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"config file {path}: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: invalid TOML: {exc}") from exc
    return UserConfig(path, True, *_check(path, data))


def _check(path: Path, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    sections = ("defaults", "models")
    for name, value in data.items():
        if name not in sections:
            raise UsageError(
                f"config file {path}: unknown {'section' if isinstance(value, dict) else 'key'} {name!r}",
                "the file has two sections, [defaults] and [models]",
            )
        if not isinstance(value, dict):
            raise UsageError(f"config file {path}: {name} must be a [{name}] table")
    defaults: dict[str, Any] = {}
    for key, value in data.get("defaults", {}).items():
        check = DEFAULT_KEYS.get(key)
        if check is None:
            raise UsageError(
                f"config file {path}: unknown key {key!r} in [defaults]",
                f"known keys: {', '.join(DEFAULT_KEYS)}",
            )
        problem = check(value)
        if problem:
            raise UsageError(f"config file {path}: [defaults] {key} must be {problem}, not {value!r}")
        defaults[key] = value.strip().lower() if key in ("device", "dtype", "format") else value
    if "cache_dir" in defaults:
        defaults["cache_dir"] = str(Path(defaults["cache_dir"]).expanduser())
    models: dict[str, str] = {}
    for task, value in data.get("models", {}).items():
        if task not in TASKS:
            raise UsageError(
                f"config file {path}: unknown key {task!r} in [models]", f"tasks: {', '.join(TASKS)}"
            )
        problem = _string(value)
        if problem:
            raise UsageError(f"config file {path}: [models] {task} must be {problem}, not {value!r}")
        models[task] = _model_name(path, value.strip())
    return defaults, models


def _model_name(path: Path, name: str) -> str:
    """An alias or hub id as written; a path starting with ~, ./ or ../ is made absolute (relative to
    the config file's directory, so the file means the same thing wherever mmcli runs)."""
    if name.startswith("~"):
        return str(Path(name).expanduser())
    if name.startswith(("./", "../")):
        return str((path.parent / name).resolve())
    return name


def default_model(task: str) -> str | None:
    """The [models] entry for ``task``, or None."""
    return load().models.get(task)


def apply_defaults(values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """Fill ``values`` (option name -> value) from [defaults] for every option not in ``given``."""
    from mmcli.sinks.output import EXTENSIONS

    config = load()
    for key, value in config.defaults.items():
        if key == "format" and Path(str(values.get("output") or "")).suffix.lower() in EXTENSIONS:
            continue  # -o out.csv: the file's extension says the format, as without a config
        if key == "server":
            key, value = "no_server", not value
        if key in values and key not in given:
            values[key] = value
    return values
