"""What mmcli knows about a model before any weights load: ``ModelSpec``, and the configs/ tables it reads.

The lowest module of ``mmcli.modeling``: the registry resolves names to specs, the backends and the scoring
code read them, and none of them needs the others to do so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from mmcli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def configs_dir() -> Path:
    """``configs/`` of a source checkout, or the copy packed into the wheel."""
    here = Path(__file__).resolve().parent.parent  # the mmcli package
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
